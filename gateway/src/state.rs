//! What every request handler shares: the NATS client and its one JetStream context, the agreed
//! topology (absent until agreed), the function policies, the pooled HTTP client and the metric
//! handles. Built once in `run`, held in an `Arc`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use flotilla_queue::{FunctionName, Policies, ShardMap, Topology};
use flotilla_runtime::FunctionClient;
use http::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::CallError;
use crate::hot::HotFunctions;
use crate::metrics::Metrics;

/// Room left in a NATS message for the envelope's headers when capping the body limit: control
/// fields plus typical request headers. A request whose headers need more is still refused
/// cleanly (413) by the publish's own size check.
pub const ENVELOPE_HEADER_ROOM: usize = 16 * 1024;

/// How long a readiness answer is reused: probes from several kubelets and load balancers must
/// not each cost a round of JetStream API calls.
const READY_CACHE: Duration = Duration::from_secs(2);

pub struct State {
    pub client: async_nats::Client,
    /// The one JetStream context: its ack semaphore bounds publishes in flight process-wide.
    pub js: jetstream::Context,
    /// Set once by the topology task; until then asynchronous calls answer 503.
    pub topology: OnceLock<(Topology, ShardMap)>,
    pub policies: Policies,
    /// The pooled client of the synchronous route, `http://` and `https://` alike.
    pub http: FunctionClient<crate::body::ClientBody>,
    pub max_body_bytes: usize,
    /// The longest delay an asynchronous call may ask for (`--max-delay`).
    pub max_delay: Duration,
    pub sync_timeout: Duration,
    pub retry_after: HeaderValue,
    /// The exact `Authorization` value `/system/*` requires, when credentials are configured.
    pub auth: Option<String>,
    pub metrics: Metrics,
    /// Per-function subject and metric handles of the asynchronous path, made on first use.
    pub hot: HotFunctions,
    pub prometheus: PrometheusHandle,
    /// Signalled when a publish found no stream (deleted, or lost with a memory-backed NATS
    /// restart); the topology task then re-creates the streams.
    pub streams_missing: tokio::sync::Notify,
    ready: tokio::sync::Mutex<Option<(Instant, Result<(), NotReady>)>>,
    /// Only functions the policy file names are served (`--known-functions-only`).
    known_only: bool,
    nats_problems: flotilla_runtime::NatsProblems,
    /// Where callbacks may go, with a short memory of host names' verdicts.
    pub callback_guard: crate::callback_guard::CallbackGuard,
    /// The latest read of every function's queue (`/system/queues`, `flotilla_queue_*`).
    pub queues: crate::queues::Snapshots,
    /// The workers' latest concurrency limits per function (`/system/queues`).
    pub limits: crate::limits::Limits,
    /// Whether calls' status is kept (`--call-status`).
    call_status: bool,
    /// What this gateway counted of batches (cancels), written every second.
    pub tally: flotilla_queue::batch::Tally,
    /// The object store of bodies larger than one NATS message, once the topology task made it.
    pub bodies: OnceLock<async_nats::jetstream::object_store::ObjectStore>,
    /// The status streams, once the topology task made sure they exist.
    pub status: OnceLock<flotilla_queue::status::Store>,
    /// Numbers the calls this process accepts: their ids tell where their status is.
    pub call_ids: flotilla_queue::status::pages::CallIds,
    /// Existing streams whose replicas or storage differ from the stream flags, as found when
    /// the topology was agreed (`/system/info` lists them).
    pub stream_warnings: OnceLock<Vec<String>>,
    /// Set on shutdown: `/readyz` fails from then on while requests are still served.
    stopping: std::sync::atomic::AtomicBool,
    /// Why the latest attempt to agree the topology failed, for `/readyz`.
    topology_problem: std::sync::Mutex<Option<String>>,
}

/// Why `/readyz` answers 503; the text is the answer's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("shutting down")]
    ShuttingDown,
    /// `problem` is why NATS last refused or dropped the connection, when known.
    #[error("NATS is not connected{}", problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default())]
    NatsDown { problem: Option<String> },
    /// `last_error` is why the latest attempt to agree failed, when one did.
    #[error("topology not agreed yet{}", last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoTopology { last_error: Option<String> },
    #[error("streams of the {shards}-shard topology are not all present")]
    StreamsMissing { shards: u32 },
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("topology", &self.topology.get().map(|t| t.0))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Parts of `State` that `run` fills in from the configuration.
pub struct StateParts {
    /// Where callbacks may go.
    pub callback_targets: flotilla_runtime::CallbackTargets,
    /// Why NATS last refused the connection.
    pub nats_problems: flotilla_runtime::NatsProblems,
    /// `--known-functions-only`.
    pub known_only: bool,
    /// `--call-status`.
    pub call_status: bool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub policies: Policies,
    pub http: FunctionClient<crate::body::ClientBody>,
    pub max_body_bytes: usize,
    pub max_delay: Duration,
    pub sync_timeout: Duration,
    pub retry_after: HeaderValue,
    pub auth: Option<String>,
    pub prometheus: PrometheusHandle,
}

impl State {
    pub fn new(p: StateParts) -> Self {
        let metrics = Metrics::new(p.policies.configured().map(|(f, _)| f));
        Self {
            client: p.client,
            js: p.js.clone(),
            topology: OnceLock::new(),
            policies: p.policies,
            http: p.http,
            max_body_bytes: p.max_body_bytes,
            max_delay: p.max_delay,
            sync_timeout: p.sync_timeout,
            retry_after: p.retry_after,
            auth: p.auth,
            metrics,
            hot: HotFunctions::default(),
            prometheus: p.prometheus,
            streams_missing: tokio::sync::Notify::new(),
            ready: tokio::sync::Mutex::new(None),
            known_only: p.known_only,
            nats_problems: p.nats_problems,
            callback_guard: crate::callback_guard::CallbackGuard::new(p.callback_targets),
            queues: crate::queues::Snapshots::default(),
            limits: crate::limits::Limits::default(),
            call_status: p.call_status,
            tally: flotilla_queue::batch::Tally::new(p.js.clone()),
            status: OnceLock::new(),
            call_ids: flotilla_queue::status::pages::CallIds::new(),
            stream_warnings: OnceLock::new(),
            bodies: OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            topology_problem: std::sync::Mutex::new(None),
        }
    }

    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The largest body that travels inside the call's NATS message (with room for the
    /// envelope's headers); a larger one, up to `--max-body-bytes`, goes to the object store.
    pub fn inline_limit(&self) -> usize {
        let fits = self
            .client
            .max_payload()
            .saturating_sub(ENVELOPE_HEADER_ROOM)
            .max(1);
        self.max_body_bytes.min(fits)
    }

    /// A publish found no stream: forget the cached readiness and have the streams re-created.
    pub fn stream_missing(&self) {
        if let Ok(mut cached) = self.ready.try_lock() {
            *cached = None;
        }
        self.streams_missing.notify_one();
    }

    /// Refuses a function the policy file does not name, when only known functions are served.
    pub fn check_known(&self, function: &FunctionName) -> Result<(), CallError> {
        if self.known_only && !self.policies.knows(function) {
            return Err(CallError::UnknownFunction(function.as_str().to_owned()));
        }
        Ok(())
    }

    /// Every function's queue (see `queues.rs`): read from NATS at most every few seconds, the
    /// `flotilla_queue_*` gauges set from each fresh read.
    pub async fn queue_rows(
        &self,
    ) -> Result<std::sync::Arc<Vec<crate::queues::QueueRow>>, CallError> {
        if !self.nats_connected() {
            return Err(CallError::NatsDown);
        }
        let Some((topology, _)) = self.topology.get() else {
            return Err(CallError::NotReady("shard topology not agreed yet"));
        };
        self.queues
            .get(&self.js, topology)
            .await
            .map_err(|e| CallError::Queues(e.to_string()))
    }

    /// The status store for `/async-call/<id>`: refused when status is off, not ready before the
    /// topology task opened it or while NATS is down.
    pub fn status_store(&self) -> Result<&flotilla_queue::status::Store, CallError> {
        if !self.call_status {
            return Err(CallError::StatusOff);
        }
        if !self.nats_connected() {
            return Err(CallError::NatsDown);
        }
        self.status
            .get()
            .ok_or(CallError::NotReady("call status streams not opened yet"))
    }

    /// The status store when call status is kept and open (the enqueue path's question).
    pub fn keeps_status(&self) -> Option<&flotilla_queue::status::Store> {
        if self.call_status {
            self.status.get()
        } else {
            None
        }
    }

    /// From now on `/readyz` fails with "shutting down".
    pub fn stop_being_ready(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records why agreeing the topology failed (`None` once it succeeded).
    pub fn topology_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.topology_problem.lock() {
            *p = problem;
        }
    }

    /// Ready when NATS is connected, the topology is agreed and its streams exist. The stream
    /// check is cached briefly; concurrent probes share one check.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NotReady::ShuttingDown);
        }
        let connected = self.nats_connected();
        self.metrics.nats_connected(connected);
        if !connected {
            return Err(NotReady::NatsDown {
                problem: self.nats_problems.last(),
            });
        }
        let Some((topology, _)) = self.topology.get() else {
            let last_error = self.topology_problem.lock().ok().and_then(|p| p.clone());
            return Err(NotReady::NoTopology { last_error });
        };
        let mut cached = self.ready.lock().await;
        if let Some((at, answer)) = cached.as_ref()
            && at.elapsed() < READY_CACHE
        {
            return answer.clone();
        }
        let answer = if topology.streams_present(&self.js).await {
            Ok(())
        } else {
            Err(NotReady::StreamsMissing {
                shards: topology.shards,
            })
        };
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }
}
