//! `flotilla-worker`: parses flags, starts logging, binds the admin listener and runs the worker
//! until SIGTERM or SIGINT, then exits 0 after the drain (64 on bad configuration).

use clap::Parser;
use flotilla_queue::ops;
use flotilla_worker::Config;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        ops::exit_config(e);
    }
    config.log.init();
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => ops::exit_config(format!("--listen {}: {e}", config.listen)),
    };
    match flotilla_worker::run(config, listener, ops::shutdown_signal()).await {
        Ok(()) => std::process::exit(0),
        Err(e) if e.is_config() => ops::exit_config(e),
        Err(error) => {
            tracing::error!(%error, "worker failed");
            std::process::exit(1);
        }
    }
}
