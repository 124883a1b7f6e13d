//! The `flotilla-gateway` binary: parse and check the configuration, start logging, bind the
//! listener and hand everything to `flotilla_gateway::run`. Bad configuration exits 64.

use clap::Parser;
use flotilla_gateway::{Config, run};
use flotilla_queue::ops::{exit_config, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Err(message) = config.validate() {
        exit_config(message);
    }
    config.log.init();
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => exit_config(format!("--listen {}: {e}", config.listen)),
    };
    match run(config, listener, shutdown_signal()).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_config() => exit_config(e),
        Err(e) => Err(e.into()),
    }
}
