//! A worker's start and its drain: the NATS connection, the topology and streams it needs
//! (waited for while NATS is away), the shared state and every shard's tasks, then the drain that
//! hands back what could not finish. Invariant: a stop while NATS is away leaves nothing running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use flotilla_queue::{Backoff, Jitter, Topology, TopologyError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::callback::{self, CallbackSettings, Callbacks};
use crate::config::{Config, Parts};
use crate::metrics::WorkerMetrics;
use crate::shared::{Calls, Life, Nats, Readiness, Results, Settings, Shared};
use crate::{WorkerError, budget, discovery, http1, report, retry, status};

/// Connects to NATS. The client keeps trying in the background while no server answers; only a
/// client that cannot be made at all (the flags) is an error.
pub(crate) async fn connect(
    config: &Config,
    ready: &Readiness,
) -> Result<async_nats::Client, WorkerError> {
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
        Err(e) => return Err(WorkerError::Nats(e)),
    };
    ready.connected(&client);
    Ok(client)
}

/// What the worker found in NATS before it starts: the agreed topology, the shards it serves,
/// and the stores it reads.
pub(crate) struct Found {
    shards: Vec<u32>,
    shard_count: u32,
    bodies: jetstream::object_store::ObjectStore,
    status_store: Option<flotilla_queue::status::Store>,
}

/// Agrees on the topology, creates the streams and opens the stores, waiting while NATS is away.
/// `None` when the worker was told to stop meanwhile.
pub(crate) async fn find_streams(
    config: &Config,
    client: &async_nats::Client,
    stop: &CancellationToken,
) -> Result<Option<Found>, WorkerError> {
    let js = jetstream::new(client.clone());
    let settings = config.common.nats.stream_settings();
    let retryable = TopologyError::is_retryable;
    let Some(topology) = until_ready(stop, "agreeing on the topology", retryable, || {
        Topology::agree(&js, config.common.nats.shards, &settings)
    })
    .await?
    else {
        return Ok(None);
    };
    let shards = config.served_shards(topology.shards)?;
    let created = until_ready(stop, "creating the streams", retryable, || {
        topology.ensure_streams(&js, &settings)
    })
    .await?;
    if created.is_none() {
        return Ok(None);
    }
    let Some(bodies) = until_ready(
        stop,
        "opening the object store of large bodies",
        retryable,
        || Topology::ensure_bodies(&js, &settings),
    )
    .await?
    else {
        return Ok(None);
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
    Ok(Some(Found {
        shards,
        shard_count: topology.shards,
        bodies,
        status_store,
    }))
}

/// A started worker: its shared state, and the tasks that outlive its calls (reports, status
/// follower, batch counts), which stop last.
pub(crate) struct Started {
    shared: Arc<Shared>,
    aux: TaskTracker,
    aux_closed: CancellationToken,
    client: async_nats::Client,
    grace: Duration,
}

impl Started {
    /// Builds the shared state and starts every served shard's supervisors.
    pub(crate) async fn start(
        parts: Parts,
        found: Found,
        client: async_nats::Client,
        ready: Arc<Readiness>,
        stop: CancellationToken,
        metrics: WorkerMetrics,
    ) -> Self {
        let config = &parts.config;
        let (grace, retention) = (config.grace, config.common.nats.status_retention);
        ready.expect_shards(found.shards.len());
        tracing::info!(shards = ?found.shards, total = found.shard_count, max_in_flight = config.max_in_flight(), "worker starting");
        let aux = TaskTracker::new();
        let aux_closed = CancellationToken::new();
        let stores = (found.bodies, found.status_store);
        let shared = shared(
            (parts, metrics),
            stores,
            &client,
            ready.clone(),
            stop,
            (&aux, &aux_closed),
        );
        let shared = Arc::new(shared.await);
        aux.spawn(batches(shared.clone(), retention, aux_closed.clone()));
        for &shard in &found.shards {
            shared
                .life
                .tracker
                .spawn(discovery::supervise(shared.clone(), shard));
            shared
                .life
                .tracker
                .spawn(retry::supervise(shared.clone(), shard));
        }
        ready.started();
        Self {
            grace,
            shared,
            aux,
            aux_closed,
            client,
        }
    }

    /// Stops pulling at once, lets calls in flight and their callbacks finish within the grace
    /// period, hands back the rest, then stops the tasks that outlive the calls and flushes.
    pub(crate) async fn drain(self) {
        let Self {
            shared,
            aux,
            aux_closed,
            client,
            grace,
        } = self;
        shared.life.ready.stopping();
        tracing::info!(
            ?grace,
            "draining: pulling stopped, finishing calls in flight"
        );
        let grace_over = Instant::now() + grace;
        shared.life.tracker.close();
        if tokio::time::timeout_at(grace_over, shared.life.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; handing back the calls still running");
            shared.life.hard.cancel();
        }
        // Handing back, the last reports and the final flush need NATS. Whatever NATS does, the
        // worker exits shortly after its grace period; a call it could not hand back returns to
        // another replica after ack_wait.
        let give_up = Instant::now().max(grace_over) + AFTER_GRACE;
        let finished = async {
            shared.life.tracker.wait().await;
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
    }
}

/// The state every task shares, with the report queue and the status follower started on `aux`
/// (reports outlive the calls; callbacks are delivered by the calls themselves).
async fn shared(
    (parts, metrics): (Parts, WorkerMetrics),
    (bodies, status_store): (
        jetstream::object_store::ObjectStore,
        Option<flotilla_queue::status::Store>,
    ),
    client: &async_nats::Client,
    ready: Arc<Readiness>,
    stop: CancellationToken,
    (aux, aux_closed): (&TaskTracker, &CancellationToken),
) -> Shared {
    let Parts {
        config,
        policies,
        signers,
        callback_targets,
        function_tls,
    } = parts;
    let js = jetstream::new(client.clone());
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
        aux,
        aux_closed.clone(),
    );
    let retention = config.common.nats.status_retention;
    let status = status_store.map(|store| {
        Arc::new(status::CallStatus::new(
            store,
            retention,
            metrics.status_write_failures.clone(),
            metrics.status_ends_waiting.clone(),
        ))
    });
    if let Some(status) = &status {
        aux.spawn(status.clone().follow(js.clone(), aux_closed.clone()));
        status.caught_up(CANCELS_CATCH_UP).await;
    }
    Shared {
        nats: Nats {
            client: client.clone(),
            js: js.clone(),
            bodies,
        },
        calls: Calls {
            policies,
            signers,
            // As many idle connections per function host as calls may be in flight: below that,
            // a replica busy with one host closes and reopens a connection per call.
            http: http1::Client::new(
                http1::Settings {
                    max_idle_per_host: config.max_in_flight(),
                    ..http1::Settings::default()
                },
                function_tls.config(),
            ),
            budget: Arc::new(budget::Budget::new(config.max_in_flight())),
        },
        results: Results {
            callbacks,
            reports,
            status,
            tally: flotilla_queue::batch::Tally::new(js),
        },
        settings: Settings {
            ack_wait: config.ack_wait,
            progress_every: config.ack_wait / 3,
            consumer_idle: config.consumer_idle,
            discovery_interval: config.discovery_interval,
            retry_max_waiting: config.retry_max_waiting,
            max_deliveries: config.max_deliveries,
        },
        life: Life {
            stop,
            hard: CancellationToken::new(),
            tracker: TaskTracker::new(),
            ready,
        },
        metrics,
    }
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
                let _ = shared.results.tally.write().await;
                return;
            }
        }
        if let Err(error) = shared.results.tally.write().await {
            tracing::debug!(%error, "batch counts not written; trying again");
            continue;
        }
        let ended = match shared.results.tally.done(forget_after).await {
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
                .and_then(|f| {
                    shared
                        .calls
                        .signers
                        .for_policy(shared.calls.policies.get(&f))
                });
            let job = callback::BatchCallback {
                url,
                batch_id: meta.batch_id.clone(),
                body: serde_json::to_vec(&progress).unwrap_or_default().into(),
                signer,
            };
            let shared = shared.clone();
            // Its own task: a slow receiver must not hold up the counts.
            tokio::spawn(async move { shared.results.callbacks.deliver_batch(job).await });
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
pub(crate) async fn until_ready<T, E, F, Fut>(
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
