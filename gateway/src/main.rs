//! The `flotilla-gateway` binary: parse and check the configuration, start logging, bind the
//! listener and hand everything to `flotilla_gateway::serve`. Bad configuration (an unknown flag
//! or an unparsable value included) is one line on stderr and exit 64; SIGTERM or SIGINT drains
//! and exits 0.

use flotilla_gateway::{Config, serve};
use flotilla_runtime::{config_failure, parse_args, shutdown_signal};

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
    let listen = config.config().listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => std::process::exit(config_failure(format!("--listen {listen}: {e}"))),
    };
    match serve(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::exit(0),
        Err(e) if e.is_config() => std::process::exit(config_failure(e)),
        Err(error) => {
            tracing::error!(%error, "gateway failed");
            std::process::exit(1);
        }
    }
}
