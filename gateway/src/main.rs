//! The `flotilla-gateway` binary: parse and check the configuration, start logging, bind the
//! listener and hand everything to `flotilla_gateway::serve`. Bad configuration (an unknown flag
//! or an unparsable value included) is one line on stderr and exit 64; SIGTERM or SIGINT drains
//! and exits 0.

use flotilla_gateway::{Config, GatewayError, serve};
use flotilla_runtime::{exit_status, shutdown_signal, start_server};

#[tokio::main]
async fn main() {
    let (config, listener) = match start_server::<Config>().await {
        Ok(started) => started,
        Err(code) => std::process::exit(code),
    };
    let stopped = serve(config, listener, shutdown_signal()).await;
    std::process::exit(exit_status(
        stopped,
        GatewayError::is_config,
        "gateway failed",
    ));
}
