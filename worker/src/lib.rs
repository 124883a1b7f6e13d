//! Flotilla's worker shard: pulls asynchronous calls from the JetStream shard streams through one
//! dispatch consumer per shard, starts each at once or moves it to the shard's wait stream while
//! its function has no room (one consumer per waiting function), calls the functions over pooled
//! HTTP, delivers callbacks and reports, and settles each message only when its outcome and
//! callback are settled. Failed calls wait for their retry in JetStream (one retry consumer per
//! shard), never in a function's slot.
//!
//! Entry point: [`run`], with the admin listener and the shutdown future injected so tests can
//! bind port 0 and stop a worker on demand.

mod adaptive;
mod admin;
mod budget;
mod call;
mod callback;
mod config;
mod dead;
mod discovery;
mod dispatch;
mod error;
mod functions;
mod http1;
mod keys;
pub mod metrics;
mod outcome;
mod pull;
mod report;
mod retry;
mod shared;
mod signing;
mod start;
mod status;

use std::future::Future;
use std::sync::Arc;

use flotilla_runtime::Telemetry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use budget::default_max_in_flight;
pub use config::{Config, ValidConfig};
pub use error::WorkerError;
pub use http1::RequestError;
pub use outcome::{Attempt, CallError, Exhausted, Outcome};
pub use signing::{SecretError, SecretsFileError};

pub(crate) use shared::{Readiness, Shared};

/// Runs a worker until `shutdown` resolves, then drains: stops pulling at once, hands back
/// messages not started, lets in-flight calls and their callbacks finish within `--grace`, hands
/// back the rest, and returns. It returns early only on problems an operator must fix (bad
/// configuration, a shard count that disagrees with NATS: [`WorkerError::is_config`], exit 64;
/// a start-up step that fails for another lasting reason: exit 1). NATS being unreachable or not
/// ready, at start or later, is waited out.
pub async fn run(
    config: Config,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    serve(config.check()?, admin_listener, shutdown).await
}

/// [`run`] for a configuration already checked (and its policy file read) by [`Config::check`]:
/// connects, agrees on the topology, starts every shard's tasks, and drains once `shutdown`
/// resolves.
pub async fn serve(
    config: ValidConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let parts = config.into_parts();
    parts.function_tls.log();
    // This worker's own recorder: another server in the process keeps its series apart.
    let telemetry = Telemetry::new(parts.config.common.max_function_series);
    // Every series described (and the configured functions' at 0) before the first scrape, even
    // while NATS is away.
    let configured = parts.policies.configured().map(|(f, _)| f);
    let metrics = metrics::WorkerMetrics::new(telemetry.clone(), configured);
    let ready = Arc::new(Readiness::default());
    // Stopped on every return path below, when it is dropped.
    let admin = admin::AdminServer::start(admin_listener, ready.clone(), &telemetry);
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });
    let client = start::connect(&parts.config, &ready).await?;
    let Some(found) = start::find_streams(&parts.config, &client, &stop).await? else {
        return Ok(());
    };
    let worker = start::Started::start(parts, found, client, ready, stop.clone(), metrics).await;
    stop.cancelled().await;
    worker.drain().await;
    admin.stop().await;
    tracing::info!("worker drained");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::start::until_ready;
    use flotilla_queue::TopologyError;

    #[tokio::test(start_paused = true)]
    async fn start_up_steps_wait_out_nats_and_stop_at_what_waiting_cannot_fix() {
        let stop = CancellationToken::new();
        let away = || TopologyError::JetStream("no responders available for request".into());
        let mut tries = 0;
        let opened = until_ready(&stop, "a step", TopologyError::is_retryable, || {
            tries += 1;
            let attempt = tries;
            async move {
                if attempt < 3 {
                    Err(away())
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(opened.unwrap(), Some(3), "NATS away twice, then back");

        let refused = until_ready(
            &stop,
            "a step",
            TopologyError::is_retryable,
            || async move {
                Err::<(), _>(TopologyError::Mismatch {
                    stored: 4,
                    configured: 8,
                })
            },
        )
        .await;
        let e = WorkerError::Topology(refused.unwrap_err());
        assert!(e.is_config(), "{e}");

        stop.cancel();
        let stopped = until_ready(
            &stop,
            "a step",
            TopologyError::is_retryable,
            || async move { Err::<(), _>(away()) },
        )
        .await;
        assert!(matches!(stopped, Ok(None)));
    }

    #[test]
    fn only_configuration_errors_exit_64() {
        let start = WorkerError::Start {
            what: "opening the call status streams",
            source: "invalid stream name".into(),
        };
        assert!(!start.is_config(), "{start}");
        assert!(WorkerError::Config("--shard 9 does not exist".into()).is_config());
    }
}
