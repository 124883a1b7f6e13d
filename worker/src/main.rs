//! `flotilla-worker`: parses flags, starts logging, binds the admin listener and runs the worker
//! until SIGTERM or SIGINT, then exits 0 after the drain. Bad configuration (an unknown flag or an
//! unparsable value included) is one line on stderr and exit 64.

use flotilla_runtime::{config_failure, parse_args, shutdown_signal};
use flotilla_worker::Config;

#[tokio::main]
async fn main() {
    let config = match parse_args::<Config>() {
        Ok(c) => c,
        Err(code) => std::process::exit(code),
    };
    let config = match config.check() {
        Ok(c) => c,
        Err(e) => std::process::exit(config_failure(e)),
    };
    if let Err(e) = config.config().common.log.init() {
        std::process::exit(config_failure(e));
    }
    // Every call in flight holds a socket: take all the descriptors the operator allows.
    match flotilla_runtime::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(open_files = limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
    let listen = config.config().listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => std::process::exit(config_failure(format!("--listen {listen}: {e}"))),
    };
    match flotilla_worker::serve(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::exit(0),
        Err(e) if e.is_config() => std::process::exit(config_failure(e)),
        Err(error) => {
            tracing::error!(%error, "worker failed");
            std::process::exit(1);
        }
    }
}
