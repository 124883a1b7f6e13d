//! `run` and `serve`: build the shared state, start the background tasks, accept connections
//! until the shutdown future resolves or the topology disagrees, then drain. One shutdown shape:
//! a cancellation token tells every task and connection to stop, a task tracker says when they
//! have, and `--shutdown-grace` bounds the wait.
//! Invariant: during `--drain-delay` the gateway still accepts, but `/readyz` fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::ContextBuilder;
use flotilla_queue::TopologyError;
use flotilla_runtime::{
    NatsConnectError, NatsProblems, PoolSettings, Telemetry, accept_until, function_client,
    http1_server,
};
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::callback_guard::CallbackGuard;
use crate::config::{Config, Parts, ValidConfig};
use crate::error::GatewayError;
use crate::hot::HotFunctions;
use crate::metrics::Metrics;
use crate::routes;
use crate::state::{Admission, CallStatus, Functions, Nats, State};

/// How often idle histogram data is folded in, so memory stays flat between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// How often batch counts are written.
const TALLY_EVERY: Duration = Duration::from_secs(1);

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
    let addr = listener.local_addr()?;
    let (config, state) = build_state(config.into_parts()).await?;
    let (tasks, fatal) = Tasks::start(&state, &config);
    tracing::info!(%addr, "gateway listening");
    let connections = Connections {
        http: http1_server(config.header_read_timeout),
        state: &state,
        tasks: &tasks,
    };
    let outcome = accept_until(&listener, until_stopped(shutdown, fatal), |stream, _| {
        connections.serve(stream);
    })
    .await;
    // Readiness fails at once; requests are still served until load balancers have seen it.
    state.stop_being_ready();
    if outcome.is_ok() && !config.drain_delay.is_zero() {
        tracing::info!(drain_delay = ?config.drain_delay, "shutting down: not ready, still serving for the drain delay");
        let delay = tokio::time::sleep(config.drain_delay);
        accept_until(&listener, delay, |stream, _| connections.serve(stream)).await;
    }
    drop(listener);
    tasks.drain(config.shutdown_grace).await;
    outcome
}

/// The shared state, from the checked configuration: the metrics recorder, the NATS client (which
/// connects in the background) and every group of `State`.
async fn build_state(parts: Parts) -> Result<(Config, Arc<State>), GatewayError> {
    let Parts {
        config,
        policies,
        auth,
        callback_targets,
        function_tls,
    } = parts;
    function_tls.log();
    // This gateway's own recorder: another server in the process keeps its series apart.
    let telemetry = Telemetry::new(config.common.max_function_series);
    let metrics = Metrics::new(telemetry.clone(), policies.configured().map(|(f, _)| f));
    let nats = connect(&config).await?;
    let status = CallStatus::new(config.common.nats.call_status, nats.js.clone());
    let functions = Functions {
        policies,
        known_only: config.known_functions_only,
        http: function_client(PoolSettings::default(), &function_tls),
        sync_timeout: config.sync_timeout,
        hot: HotFunctions::new(telemetry),
    };
    let admission = Admission {
        max_body_bytes: config.max_body_bytes,
        max_delay: config.max_delay,
        callback_guard: CallbackGuard::new(callback_targets),
        retry_after: HeaderValue::from(config.retry_after_seconds),
    };
    let auth = Auth::basic(auth);
    let state = State::new(nats, functions, admission, auth, status, metrics);
    Ok((config, Arc::new(state)))
}

/// The NATS client and its one JetStream context. The client returns at once and connects in the
/// background, so an unreachable NATS is waited out, never an error here.
async fn connect(config: &Config) -> Result<Nats, GatewayError> {
    let problems = NatsProblems::default();
    let client = config
        .common
        .nats
        .connect("flotilla-gateway", &problems)
        .await
        .map_err(|e| match e {
            NatsConnectError::Connect(source) => GatewayError::Connect {
                url: flotilla_runtime::redacted_urls(&config.common.nats.nats_url),
                source,
            },
            e => GatewayError::Config(e.into()),
        })?;
    let js = ContextBuilder::new()
        .timeout(config.publish_timeout)
        // A call abandoned by its client still holds an ack slot until this passes.
        .ack_timeout(config.publish_timeout)
        .max_ack_inflight(config.max_publish_inflight)
        // Beyond the cap JetStream is not keeping up: shed load with 503 + Retry-After at once
        // instead of queueing without bound inside the gateway.
        .backpressure_on_inflight(false)
        .build(client.clone());
    Ok(Nats {
        client,
        js,
        problems,
    })
}

/// Resolves with `Ok` when `shutdown` does, or with the error of a topology that disagrees with
/// this gateway's configuration.
async fn until_stopped(
    shutdown: impl Future<Output = ()>,
    mut fatal: mpsc::Receiver<TopologyError>,
) -> Result<(), GatewayError> {
    tokio::select! {
        () = shutdown => Ok(()),
        Some(error) = fatal.recv() => {
            tracing::error!(%error, "topology disagrees with this gateway's configuration");
            Err(GatewayError::Topology(error))
        }
    }
}

/// Every background task and connection: one token tells them to stop, one tracker says when
/// they have.
struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Starts the topology task, the metrics upkeep and the follower of the workers' limits.
    /// The receiver hears of a topology that disagrees with the configuration.
    fn start(state: &Arc<State>, config: &Config) -> (Self, mpsc::Receiver<TopologyError>) {
        let tasks = Self {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let (fatal_tx, fatal_rx) = mpsc::channel(1);
        tasks.tracker.spawn(crate::topology::run(
            state.clone(),
            config.common.nats.shards,
            config.common.nats.stream_settings(),
            tasks.token.clone(),
            fatal_tx,
        ));
        tasks
            .tracker
            .spawn(metrics_upkeep(state.clone(), tasks.token.clone()));
        let (state, token) = (state.clone(), tasks.token.clone());
        tasks
            .tracker
            .spawn(async move { state.limits.follow(state.nats.client.clone(), token).await });
        (tasks, fatal_rx)
    }

    /// Tells every task and connection to stop and waits for them, at most `grace`.
    async fn drain(self, grace: Duration) {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                remaining = self.tracker.len(),
                "shutdown grace period over; abandoning unfinished requests"
            );
        } else {
            tracing::info!("gateway stopped");
        }
    }
}

/// What each accepted connection is served with.
struct Connections<'a> {
    http: http1::Builder,
    state: &'a Arc<State>,
    tasks: &'a Tasks,
}

impl Connections<'_> {
    fn serve(&self, stream: TcpStream) {
        self.tasks.tracker.spawn(serve_connection(
            stream,
            self.http.clone(),
            self.state.clone(),
            self.tasks.token.clone(),
        ));
    }
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
