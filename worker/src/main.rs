//! `flotilla-worker`: parses flags, starts logging, binds the admin listener and runs the worker
//! until SIGTERM or SIGINT, then exits 0 after the drain. Bad configuration (an unknown flag or an
//! unparsable value included) is one line on stderr and exit 64.

use flotilla_runtime::{exit_status, shutdown_signal, start_server};
use flotilla_worker::{Config, WorkerError};

#[tokio::main]
async fn main() {
    let (config, listener) = match start_server::<Config>().await {
        Ok(started) => started,
        Err(code) => std::process::exit(code),
    };
    // Every call in flight holds a socket: take all the descriptors the operator allows.
    match flotilla_runtime::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(open_files = limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
    let stopped = flotilla_worker::serve(config, listener, shutdown_signal()).await;
    std::process::exit(exit_status(
        stopped,
        WorkerError::is_config,
        "worker failed",
    ));
}
