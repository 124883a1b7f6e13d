//! The `flotilla-gateway` binary: parse and check the configuration, start logging, bind the
//! listener and hand everything to `flotilla_gateway::run`. Bad configuration (an unparsable
//! flag included) is one line on stderr and exit 64; SIGTERM or SIGINT drains and exits 0.

use clap::Parser;
use clap::error::ErrorKind;
use flotilla_gateway::{Config, run};
use flotilla_runtime::{config_failure, shutdown_signal};

#[tokio::main]
async fn main() {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            std::process::exit(config_failure(line.trim_start_matches("error: ")))
        }
    };
    if let Err(message) = config.validate() {
        std::process::exit(config_failure(message));
    }
    if let Err(e) = config.log.init() {
        std::process::exit(config_failure(e));
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => std::process::exit(config_failure(format!("--listen {}: {e}", config.listen))),
    };
    match run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::exit(0),
        Err(e) if e.is_config() => std::process::exit(config_failure(e)),
        Err(error) => {
            tracing::error!(%error, "gateway failed");
            std::process::exit(1);
        }
    }
}
