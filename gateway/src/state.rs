//! What every request handler shares, grouped by concern: the NATS connection, what the topology
//! task opened, the functions, the admission limits, the `/system` auth, call status, metrics and
//! readiness. Built once in `serve`, held in an `Arc`.
//! Invariant: no call is held here; what the topology task opens is set once and never replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::object_store::ObjectStore;
use flotilla_queue::batch::Tally;
use flotilla_queue::status::Store;
use flotilla_queue::status::pages::CallIds;
use flotilla_queue::{FunctionName, Policies, ShardMap, Topology, TopologyError};
use flotilla_runtime::{FunctionClient, NatsProblems};
use http::HeaderValue;

use crate::auth::Auth;
use crate::body::ClientBody;
use crate::callback_guard::CallbackGuard;
use crate::error::CallError;
use crate::hot::HotFunctions;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::queues::{QueueRow, QueuesError, Snapshots};

/// Room left in a NATS message for the envelope's headers when capping the body limit: control
/// fields plus typical request headers. A request whose headers need more is still refused
/// cleanly (413) by the publish's own size check.
pub const ENVELOPE_HEADER_ROOM: usize = 16 * 1024;

/// How long a readiness answer is reused: probes from several kubelets and load balancers must
/// not each cost a round of JetStream API calls.
const READY_CACHE: Duration = Duration::from_secs(2);

pub struct State {
    pub nats: Nats,
    pub streams: Streams,
    pub functions: Functions,
    pub admission: Admission,
    pub auth: Auth,
    pub status: CallStatus,
    pub metrics: Metrics,
    /// The latest read of every function's queue (`/system/queues`, `flotilla_queue_*`).
    pub queues: Snapshots,
    /// The workers' latest concurrency limits per function (`/system/queues`).
    pub limits: Limits,
    readiness: Readiness,
}

/// The NATS connection.
pub struct Nats {
    pub client: async_nats::Client,
    /// The one JetStream context: its ack semaphore bounds publishes in flight process-wide.
    pub js: jetstream::Context,
    /// Why NATS last refused the connection, for `/readyz`.
    pub problems: NatsProblems,
}

impl Nats {
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// What the topology task opens once the shard count is agreed; each empty until then.
#[derive(Default)]
pub struct Streams {
    /// Until set, asynchronous calls answer 503.
    pub topology: OnceLock<(Topology, ShardMap)>,
    /// The object store of bodies larger than one NATS message.
    pub bodies: OnceLock<ObjectStore>,
    /// Existing streams whose replicas or storage differ from the stream flags, as found when
    /// the topology was agreed (`/system/info` lists them).
    pub warnings: OnceLock<Vec<String>>,
    /// Signalled when a publish found no stream (deleted, or lost with a memory-backed NATS
    /// restart); the topology task then re-creates the streams.
    pub missing: tokio::sync::Notify,
}

/// The functions: their policies, how the synchronous path reaches them, and what the
/// asynchronous path keeps per function.
pub struct Functions {
    pub policies: Policies,
    /// Only functions the policy file names are served (`--known-functions-only`).
    pub known_only: bool,
    /// The pooled client of the synchronous route, `http://` and `https://` alike.
    pub http: FunctionClient<ClientBody>,
    pub sync_timeout: Duration,
    /// Per-function subject and metric handles of the asynchronous path, made on first use.
    pub hot: HotFunctions,
}

impl Functions {
    /// Refuses a function the policy file does not name, when only known functions are served.
    pub fn check_known(&self, function: &FunctionName) -> Result<(), CallError> {
        if self.known_only && !self.policies.knows(function) {
            return Err(CallError::UnknownFunction(function.as_str().to_owned()));
        }
        Ok(())
    }
}

/// What a request must satisfy to be taken, and what a refused one is told.
pub struct Admission {
    pub max_body_bytes: usize,
    /// The longest delay an asynchronous call may ask for (`--max-delay`).
    pub max_delay: Duration,
    /// Where callbacks may go, with a short memory of host names' verdicts.
    pub callback_guard: CallbackGuard,
    /// `Retry-After` of every 503.
    pub retry_after: HeaderValue,
}

/// Calls' status: whether it is kept (`--call-status`), the store once opened, the call ids
/// this process hands out and its batch counts.
pub struct CallStatus {
    enabled: bool,
    store: OnceLock<Store>,
    /// Numbers the calls this process accepts: their ids tell where their status is.
    pub ids: CallIds,
    /// What this gateway counted of batches (cancels), written every second.
    pub tally: Tally,
}

impl CallStatus {
    pub fn new(enabled: bool, js: jetstream::Context) -> Self {
        Self {
            enabled,
            store: OnceLock::new(),
            ids: CallIds::new(),
            tally: Tally::new(js),
        }
    }

    /// Sets the store once the topology task made sure the status streams exist.
    pub fn opened(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// The status store when call status is kept and open (the enqueue path's question).
    pub fn kept(&self) -> Option<&Store> {
        if self.enabled { self.store.get() } else { None }
    }
}

/// What `/readyz` remembers between probes.
#[derive(Default)]
struct Readiness {
    cached: tokio::sync::Mutex<Option<(Instant, Result<(), NotReady>)>>,
    /// Set on shutdown: `/readyz` fails from then on while requests are still served.
    stopping: AtomicBool,
    /// Why the latest attempt to agree the topology failed.
    topology_problem: std::sync::Mutex<Option<Arc<TopologyError>>>,
}

/// Why the queues cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum NoQueues {
    /// Nothing to read yet: NATS is down.
    #[error("NATS is not connected")]
    NatsDown,
    /// Nothing to read yet: the topology is not agreed.
    #[error("shard topology not agreed yet")]
    NotAgreed,
    #[error(transparent)]
    Read(#[from] QueuesError),
}

impl From<NoQueues> for CallError {
    fn from(e: NoQueues) -> Self {
        match e {
            NoQueues::NatsDown => CallError::NatsDown,
            NoQueues::NotAgreed => CallError::NotReady("shard topology not agreed yet"),
            NoQueues::Read(e) => CallError::Queues(e),
        }
    }
}

/// Why `/readyz` answers 503; the text is the answer's body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error("shutting down")]
    ShuttingDown,
    /// `problem` is why NATS last refused or dropped the connection, when known.
    #[error("NATS is not connected{}", problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default())]
    NatsDown { problem: Option<String> },
    /// `last_error` is why the latest attempt to agree failed, when one did.
    #[error("topology not agreed yet{}", last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoTopology {
        #[source]
        last_error: Option<Arc<TopologyError>>,
    },
    #[error("streams of the {shards}-shard topology are not all present")]
    StreamsMissing { shards: u32 },
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("topology", &self.streams.topology.get().map(|t| t.0))
            .field("max_body_bytes", &self.admission.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn new(
        nats: Nats,
        functions: Functions,
        admission: Admission,
        auth: Auth,
        status: CallStatus,
        metrics: Metrics,
    ) -> Self {
        let queues = Snapshots::new(metrics.telemetry().clone());
        Self {
            nats,
            streams: Streams::default(),
            functions,
            admission,
            auth,
            status,
            metrics,
            queues,
            limits: Limits::default(),
            readiness: Readiness::default(),
        }
    }

    /// The largest body that travels inside the call's NATS message (with room for the
    /// envelope's headers); a larger one, up to `--max-body-bytes`, goes to the object store.
    pub fn inline_limit(&self) -> usize {
        let fits = self
            .nats
            .client
            .max_payload()
            .saturating_sub(ENVELOPE_HEADER_ROOM)
            .max(1);
        self.admission.max_body_bytes.min(fits)
    }

    /// A publish found no stream: forget the cached readiness and have the streams re-created.
    pub fn stream_missing(&self) {
        if let Ok(mut cached) = self.readiness.cached.try_lock() {
            *cached = None;
        }
        self.streams.missing.notify_one();
    }

    /// Every function's queue (see `queues.rs`): read from NATS at most every few seconds, the
    /// `flotilla_queue_*` gauges set from each fresh read.
    pub async fn queue_rows(&self) -> Result<Arc<Vec<QueueRow>>, NoQueues> {
        if !self.nats.connected() {
            return Err(NoQueues::NatsDown);
        }
        let Some((topology, _)) = self.streams.topology.get() else {
            return Err(NoQueues::NotAgreed);
        };
        Ok(self.queues.get(&self.nats.js, topology).await?)
    }

    /// The status store for `/async-call/<id>`: refused when status is off, not ready before the
    /// topology task opened it or while NATS is down.
    pub fn status_store(&self) -> Result<&Store, CallError> {
        if !self.status.enabled {
            return Err(CallError::StatusOff);
        }
        if !self.nats.connected() {
            return Err(CallError::NatsDown);
        }
        self.status
            .store
            .get()
            .ok_or(CallError::NotReady("call status streams not opened yet"))
    }

    /// From now on `/readyz` fails with "shutting down".
    pub fn stop_being_ready(&self) {
        self.readiness.stopping.store(true, Ordering::SeqCst);
    }

    /// Records why agreeing the topology failed (`None` once it succeeded).
    pub fn topology_problem(&self, problem: Option<TopologyError>) {
        if let Ok(mut p) = self.readiness.topology_problem.lock() {
            *p = problem.map(Arc::new);
        }
    }

    /// Ready when NATS is connected, the topology is agreed and its streams exist. The stream
    /// check is cached briefly; concurrent probes share one check.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if self.readiness.stopping.load(Ordering::SeqCst) {
            return Err(NotReady::ShuttingDown);
        }
        let connected = self.nats.connected();
        self.metrics.nats_connected(connected);
        if !connected {
            return Err(NotReady::NatsDown {
                problem: self.nats.problems.last(),
            });
        }
        let Some((topology, _)) = self.streams.topology.get() else {
            let last_error = self
                .readiness
                .topology_problem
                .lock()
                .ok()
                .and_then(|p| p.clone());
            return Err(NotReady::NoTopology { last_error });
        };
        let mut cached = self.readiness.cached.lock().await;
        if let Some((at, answer)) = cached.as_ref()
            && at.elapsed() < READY_CACHE
        {
            return answer.clone();
        }
        let answer = if topology.streams_present(&self.nats.js).await {
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
