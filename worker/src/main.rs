//! `flotilla-worker`: parses flags, starts logging, binds the admin listener and runs the worker
//! until SIGTERM or SIGINT, then exits 0 after the drain (64 on bad configuration).

use clap::Parser;
use flotilla_runtime::{config_failure, shutdown_signal};
use flotilla_worker::Config;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        std::process::exit(config_failure(e));
    }
    if let Err(e) = config.log.init() {
        std::process::exit(config_failure(e));
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => std::process::exit(config_failure(format!("--listen {}: {e}", config.listen))),
    };
    match flotilla_worker::run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::exit(0),
        Err(e) if e.is_config() => std::process::exit(config_failure(e)),
        Err(error) => {
            tracing::error!(%error, "worker failed");
            std::process::exit(1);
        }
    }
}
