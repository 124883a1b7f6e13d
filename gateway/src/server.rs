//! `run`: connects NATS, agrees the topology in the background, serves HTTP/1.1 until the
//! shutdown future resolves, then drains. One shutdown shape: a cancellation token tells every
//! task to stop, a task tracker says when they have, and the grace period bounds the wait.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::ContextBuilder;
use flotilla_queue::{Backoff, Jitter, Topology, TopologyError};
use flotilla_runtime::{PoolSettings, function_client, metrics_handle};
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::callback_guard::CallbackGuard;
use crate::config::{Config, ValidConfig};
use crate::error::GatewayError;
use crate::hot::HotFunctions;
use crate::metrics::Metrics;
use crate::routes;
use crate::state::{Admission, CallStatus, Functions, Nats, State};

/// How often idle histogram data is folded in, so memory stays flat between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// Waits between tries of agreeing the topology while NATS is unreachable or not ready: 100 ms
/// doubling up to 2 s, so a gateway started just before NATS takes calls soon after it comes up.
/// No jitter: each try is a few cheap requests, so even a fleet that starts at once does not
/// crowd NATS.
const AGREE_BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(2),
    Jitter::None,
);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish within `--shutdown-grace`, and returns. Returns early with
/// `GatewayError::Config` when the configuration is invalid, or `GatewayError::Topology` when the
/// shard count disagrees with the one stored in NATS.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    serve(config.check()?, listener, shutdown).await
}

/// `run` for a configuration already checked (the binary checks before it binds the listener):
/// the policy and password files are not read again.
pub async fn serve(
    config: ValidConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let crate::config::Parts {
        config,
        policies,
        auth,
        callback_targets,
        function_tls,
    } = config.into_parts();
    function_tls.log();
    // Before any metric handle is made, or the handles are no-ops.
    let prometheus = metrics_handle();
    flotilla_runtime::limit_function_series(config.common.max_function_series);

    let problems = flotilla_runtime::NatsProblems::default();
    let client = match config
        .common
        .nats
        .connect("flotilla-gateway", &problems)
        .await
    {
        Ok(client) => client,
        Err(flotilla_runtime::NatsConnectError::Connect(e)) => return Err(GatewayError::Nats(e)),
        Err(e) => return Err(GatewayError::Config(e.into())),
    };
    let js = ContextBuilder::new()
        .timeout(config.publish_timeout)
        // A call abandoned by its client still holds an ack slot until this passes.
        .ack_timeout(config.publish_timeout)
        .max_ack_inflight(config.max_publish_inflight)
        // Beyond the cap JetStream is not keeping up: shed load with 503 + Retry-After at once
        // instead of queueing without bound inside the gateway.
        .backpressure_on_inflight(false)
        .build(client.clone());
    let metrics = Metrics::new(prometheus, policies.configured().map(|(f, _)| f));
    let state = Arc::new(State::new(
        Nats {
            client: client.clone(),
            js: js.clone(),
            problems,
        },
        Functions {
            policies,
            known_only: config.known_functions_only,
            http: function_client(PoolSettings::default(), &function_tls),
            sync_timeout: config.sync_timeout,
            hot: HotFunctions::default(),
        },
        Admission {
            max_body_bytes: config.max_body_bytes,
            max_delay: config.max_delay,
            callback_guard: CallbackGuard::new(callback_targets),
            retry_after: HeaderValue::from(config.retry_after_seconds),
        },
        Auth::basic(auth),
        CallStatus::new(config.common.nats.call_status, js),
        metrics,
    ));

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<TopologyError>(1);
    tracker.spawn(agree_topology(
        state.clone(),
        config.clone(),
        token.clone(),
        fatal_tx,
    ));
    tracker.spawn(metrics_upkeep(state.clone(), token.clone()));
    {
        let (state, token) = (state.clone(), token.clone());
        tracker.spawn(async move { state.limits.follow(state.nats.client.clone(), token).await });
    }

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);

    let accept = |accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>| {
        let (builder, state, token) = (&builder, &state, &token);
        let tracker = &tracker;
        async move {
            match accepted {
                Ok((stream, _)) => {
                    tracker.spawn(serve_connection(
                        stream,
                        builder.clone(),
                        state.clone(),
                        token.clone(),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            Some(error) = fatal_rx.recv() => {
                tracing::error!(%error, "topology disagrees with this gateway's configuration");
                break Err(GatewayError::Topology(error));
            }
            accepted = listener.accept() => accept(accepted).await,
        }
    };
    // Readiness fails at once; requests are still served until load balancers have seen it.
    state.stop_being_ready();
    if outcome.is_ok() && !config.drain_delay.is_zero() {
        tracing::info!(drain_delay = ?config.drain_delay, "shutting down: not ready, still serving for the drain delay");
        let delay = tokio::time::sleep(config.drain_delay);
        tokio::pin!(delay);
        loop {
            tokio::select! {
                () = &mut delay => break,
                accepted = listener.accept() => accept(accepted).await,
            }
        }
    }
    drop(listener);
    token.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?config.shutdown_grace,
            remaining = tracker.len(),
            "shutdown grace period over; abandoning unfinished requests"
        );
    } else {
        tracing::info!("gateway stopped");
    }
    outcome
}

async fn serve_connection(
    stream: TcpStream,
    builder: http1::Builder,
    state: Arc<State>,
    token: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| routes::handle(state.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = token.cancelled() => {
            // Finish the request in flight, then close instead of keeping the connection alive.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        // Clients that vanish or stall past the header-read timeout end up here.
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Agrees the shard count and makes sure the streams exist, retrying while NATS is unreachable.
/// A mismatch or a corrupt topology is reported through `fatal` and ends `run`.
async fn agree_topology(
    state: Arc<State>,
    config: Config,
    token: CancellationToken,
    fatal: mpsc::Sender<TopologyError>,
) {
    let settings = config.common.nats.stream_settings();
    let mut delays = AGREE_BACKOFF.delays();
    let topology = loop {
        if state.nats.connected() {
            let attempt = async {
                let topology =
                    Topology::agree(&state.nats.js, config.common.nats.shards, &settings).await?;
                let drifts = topology.ensure_streams(&state.nats.js, &settings).await?;
                // In the attempt, so NATS failing here is retried like the rest.
                let bodies = Topology::ensure_bodies(&state.nats.js, &settings).await?;
                Ok::<_, TopologyError>((topology, drifts, bodies))
            };
            let result = tokio::select! {
                r = attempt => r,
                () = token.cancelled() => return,
            };
            match result {
                Ok((topology, drifts, bodies)) => {
                    state.topology_problem(None);
                    // Logged by `ensure_streams`; kept for `/system/info`.
                    let _ = state
                        .streams
                        .warnings
                        .set(drifts.iter().map(ToString::to_string).collect());
                    tracing::info!(
                        shards = topology.shards,
                        "topology agreed; accepting asynchronous calls"
                    );
                    state.metrics.shards(topology.shards);
                    let _ = state.streams.bodies.set(bodies);
                    // Handles only, no request: this fails only on a bug.
                    match flotilla_queue::status::Store::new(state.nats.js.clone()).await {
                        Ok(store) => {
                            state.status.opened(store);
                        }
                        Err(error) => tracing::error!(%error, "call status streams not opened"),
                    }
                    let _ = state.streams.topology.set((topology, topology.shard_map()));
                    break topology;
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "topology not agreed yet; retrying");
                    state.topology_problem(Some(error.to_string()));
                }
                Err(error) => {
                    let _ = fatal.send(error).await;
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delays.next_delay()) => {}
            () = token.cancelled() => return,
        }
    };
    // Streams can vanish after the agreement (deleted by an operator, or lost when a NATS with
    // memory storage restarts); re-create them when a publish finds none and JetStream confirms
    // it, at most once a second.
    loop {
        tokio::select! {
            () = state.streams.missing.notified() => {}
            () = token.cancelled() => return,
        }
        let recreate = async {
            match topology.missing_streams(&state.nats.js).await {
                Ok(missing) if missing.is_empty() => {
                    tracing::debug!(
                        "a publish found no stream, yet every stream is there (a stream leader was being elected)"
                    );
                }
                Ok(missing) => match topology.ensure_streams(&state.nats.js, &settings).await {
                    Ok(_) => tracing::warn!(?missing, "shard streams were missing; re-created"),
                    Err(error) => {
                        tracing::warn!(%error, ?missing, "shard streams missing and not re-created yet")
                    }
                },
                // JetStream does not answer: nothing tells that a stream is gone.
                Err(error) => {
                    tracing::debug!(%error, "streams not checked; JetStream did not answer")
                }
            }
        };
        tokio::select! {
            () = recreate => {}
            () = token.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = token.cancelled() => return,
        }
    }
}

async fn metrics_upkeep(state: Arc<State>, token: CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    let mut tally = tokio::time::interval(TALLY_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.metrics.upkeep();
                state.metrics.nats_connected(state.nats.connected());
            }
            _ = tally.tick() => {
                if let Err(error) = state.status.tally.write().await {
                    tracing::debug!(%error, "batch counts not written; trying again");
                }
            }
            () = token.cancelled() => {
                let _ = state.status.tally.write().await;
                return;
            }
        }
    }
}

/// How often batch counts are written.
const TALLY_EVERY: Duration = Duration::from_secs(1);
