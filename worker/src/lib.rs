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
pub mod metrics;
mod outcome;
mod pull;
mod report;
mod retry;
mod shared;
mod signing;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use flotilla_queue::{Backoff, Jitter, Topology, TopologyError};
use flotilla_runtime::metrics_handle;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use budget::default_max_in_flight;
pub use config::{Config, ValidConfig};
pub use error::WorkerError;
pub use http1::RequestError;
pub use outcome::{Attempt, CallError, Exhausted, Outcome};
pub use signing::{SecretError, SecretsFileError};

pub(crate) use shared::{Readiness, Shared};

use crate::callback::{CallbackSettings, Callbacks};
use crate::metrics::WorkerMetrics;

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

/// [`run`] for a configuration already checked (and its policy file read) by [`Config::check`].
pub async fn serve(
    config: ValidConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let config::Parts {
        config,
        policies,
        signers,
        callback_targets,
        function_tls,
    } = config.into_parts();
    function_tls.log();
    let prometheus = metrics_handle();
    flotilla_runtime::limit_function_series(config.common.max_function_series);
    let metrics = WorkerMetrics::new(policies.configured().map(|(f, _)| f));
    let ready = Arc::new(Readiness::default());

    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        ready.clone(),
        prometheus,
        admin_stop.clone(),
    ));
    // Every return path below stops the admin server.
    let _admin_guard = admin_stop.clone().drop_guard();

    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });

    let client = match config
        .common
        .nats
        .connect("flotilla-worker", &ready.nats_problems)
        .await
    {
        Ok(client) => client,
        Err(flotilla_runtime::NatsConnectError::Connect(source)) => {
            return Err(WorkerError::Connect {
                url: flotilla_runtime::redacted_urls(&config.common.nats.nats_url),
                source,
            });
        }
        Err(e) => return Err(WorkerError::Config(e.to_string())),
    };
    ready.connected(&client);
    let js = jetstream::new(client.clone());
    let settings = config.common.nats.stream_settings();
    let Some(topology) = until_ready(
        &stop,
        "agreeing on the topology",
        TopologyError::is_retryable,
        || Topology::agree(&js, config.common.nats.shards, &settings),
    )
    .await
    .map_err(WorkerError::Topology)?
    else {
        return Ok(());
    };
    let shards = config.served_shards(topology.shards)?;
    if until_ready(
        &stop,
        "creating the streams",
        TopologyError::is_retryable,
        || topology.ensure_streams(&js, &settings),
    )
    .await
    .map_err(WorkerError::Topology)?
    .is_none()
    {
        return Ok(());
    }
    // Opened before any task starts, so that a stop while NATS is away leaves nothing running.
    let Some(bodies) = until_ready(
        &stop,
        "opening the object store of large bodies",
        TopologyError::is_retryable,
        || Topology::ensure_bodies(&js, &settings),
    )
    .await
    .map_err(WorkerError::Topology)?
    else {
        return Ok(());
    };
    // Handles only (no request is sent), so this fails only on a bug: nothing to wait for.
    let status_store = if config.common.nats.call_status {
        let store = flotilla_queue::status::Store::new(js.clone())
            .await
            .map_err(|e| WorkerError::Start {
                what: "opening the call status streams",
                source: Box::new(e),
            })?;
        Some(store)
    } else {
        None
    };
    ready.expect_shards(shards.len());
    tracing::info!(shards = ?shards, total = topology.shards, max_in_flight = config.max_in_flight(), "worker starting");

    // Report tasks outlive the calls; callbacks are delivered by the calls themselves.
    let aux = TaskTracker::new();
    let aux_closed = CancellationToken::new();
    let hard = CancellationToken::new();
    let callbacks = Callbacks::new(
        CallbackSettings {
            capacity: config.callback_queue,
            concurrency: config.callback_concurrency,
            attempts: config.callback_attempts,
            timeout: config.callback_timeout,
        },
        callback_targets,
        metrics.clone(),
    );
    let reports = report::start(
        config.report_queue,
        client.clone(),
        metrics.reports_dropped.clone(),
        &aux,
        aux_closed.clone(),
    );
    let status = status_store.map(|store| {
        Arc::new(status::CallStatus::new(
            store,
            config.common.nats.status_retention,
        ))
    });
    if let Some(status) = &status {
        aux.spawn(status.clone().follow(js.clone(), aux_closed.clone()));
        status.caught_up(CANCELS_CATCH_UP).await;
    }
    let js_for_tally = js.clone();
    let shared = Arc::new(Shared {
        client: client.clone(),
        js,
        policies,
        signers,
        // As many idle connections per function host as calls may be in flight: below that, a
        // replica busy with one host closes and reopens a connection per call.
        http: http1::Client::new(
            http1::Settings {
                max_idle_per_host: config.max_in_flight(),
                ..http1::Settings::default()
            },
            function_tls.config(),
        ),
        budget: Arc::new(budget::Budget::new(config.max_in_flight())),
        callbacks,
        reports,
        ack_wait: config.ack_wait,
        progress_every: config.ack_wait / 3,
        consumer_idle: config.consumer_idle,
        discovery_interval: config.discovery_interval,
        retry_max_waiting: config.retry_max_waiting,
        max_deliveries: config.max_deliveries,
        stop: stop.clone(),
        hard: hard.clone(),
        tracker: TaskTracker::new(),
        metrics,
        ready: ready.clone(),
        status,
        tally: flotilla_queue::batch::Tally::new(js_for_tally),
        bodies,
    });
    aux.spawn(batches(
        shared.clone(),
        config.common.nats.status_retention,
        aux_closed.clone(),
    ));
    for &shard in &shards {
        shared
            .tracker
            .spawn(discovery::supervise(shared.clone(), shard));
        shared
            .tracker
            .spawn(retry::supervise(shared.clone(), shard));
    }
    ready.started();

    stop.cancelled().await;
    ready.stopping();
    tracing::info!(grace = ?config.grace, "draining: pulling stopped, finishing calls in flight");
    let grace_over = Instant::now() + config.grace;
    shared.tracker.close();
    if tokio::time::timeout_at(grace_over, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; handing back the calls still running");
        hard.cancel();
    }
    // Handing back, the last reports and the final flush need NATS. Whatever NATS does, the
    // worker exits shortly after its grace period; a call it could not hand back returns to
    // another replica after ack_wait.
    let give_up = Instant::now().max(grace_over) + AFTER_GRACE;
    let finished = async {
        shared.tracker.wait().await;
        aux_closed.cancel();
        aux.close();
        aux.wait().await;
        // Acks and naks are buffered publishes: make sure they reached NATS.
        client.flush().await
    };
    match tokio::time::timeout_at(give_up, finished).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "final flush to NATS failed"),
        Err(_) => tracing::warn!(
            "NATS did not take the last hand-backs, reports or acks in time; calls not handed back return after ack_wait"
        ),
    }
    drop(shared);
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("worker drained");
    Ok(())
}

/// Writes this replica's batch counts every second, and sends the callback of each batch it saw
/// end first. A last write when the worker stops.
async fn batches(shared: Arc<Shared>, forget_after: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => {
                let _ = shared.tally.write().await;
                return;
            }
        }
        if let Err(error) = shared.tally.write().await {
            tracing::debug!(%error, "batch counts not written; trying again");
            continue;
        }
        let ended = match shared.tally.done(forget_after).await {
            Ok(ended) => ended,
            Err(error) => {
                tracing::debug!(%error, "batch ends not read; trying again");
                continue;
            }
        };
        for (meta, progress) in ended {
            tracing::info!(batch_id = %meta.batch_id, function = %meta.function, total = progress.total, "batch ended");
            let Some(url) = meta.callback_url.clone() else {
                continue;
            };
            let signer = flotilla_queue::FunctionName::parse(&meta.function)
                .ok()
                .and_then(|f| shared.signers.for_policy(shared.policies.get(&f)));
            let job = callback::BatchCallback {
                url,
                batch_id: meta.batch_id.clone(),
                body: serde_json::to_vec(&progress).unwrap_or_default().into(),
                signer,
            };
            let shared = shared.clone();
            // Its own task: a slow receiver must not hold up the counts.
            tokio::spawn(async move { shared.callbacks.deliver_batch(job).await });
        }
    }
}

/// How long a worker stopping goes on after its grace period to hand calls back, publish its
/// last reports and flush its acks to NATS, before it exits regardless.
const AFTER_GRACE: Duration = Duration::from_millis(1500);

/// How long a starting worker waits to have heard the cancels already stored before it pulls.
const CANCELS_CATCH_UP: Duration = Duration::from_secs(5);

/// Waits between tries of a start-up step (agreeing the topology, creating the streams, opening
/// the object store) while NATS is not ready: 250 ms doubling up to 5 s. No jitter: each try is a
/// few cheap requests, so even a fleet that starts at once does not crowd NATS.
const AGREE_BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(250),
    Duration::from_secs(5),
    Jitter::None,
);

/// Retries the start-up step `step` while its error `may_pass` (NATS unreachable or not ready),
/// until it succeeds (`Some`), the worker is told to stop (`None`), or it fails for a reason
/// waiting cannot fix (`Err`, which the caller classifies).
async fn until_ready<T, E, F, Fut>(
    stop: &CancellationToken,
    what: &str,
    may_pass: impl Fn(&E) -> bool,
    mut step: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = AGREE_BACKOFF.delays();
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            r = step() => r,
        };
        let delay = delays.next_delay();
        match result {
            Ok(t) => return Ok(Some(t)),
            Err(e) if may_pass(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what}: NATS not ready");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
