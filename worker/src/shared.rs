//! What every task of a running worker shares, and what `/readyz` reports. Built once by
//! `start::Started::start`; tasks hold it through an `Arc`.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use flotilla_queue::Policies;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::callback::Callbacks;
use crate::metrics::WorkerMetrics;
use crate::report::ReportQueue;
use crate::{budget, http1, signing, status};

/// What every task of a running worker shares, grouped by concern.
pub(crate) struct Shared {
    pub nats: Nats,
    pub calls: Calls,
    pub results: Results,
    pub settings: Settings,
    pub life: Life,
    pub metrics: WorkerMetrics,
}

/// The NATS connection and what the worker reads and writes through it.
pub(crate) struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Bodies larger than one NATS message (`FLOTILLA_BODIES`).
    pub bodies: jetstream::object_store::ObjectStore,
}

/// How the replica calls functions: their policies, its client and its cap.
pub(crate) struct Calls {
    pub policies: Policies,
    /// What each function's callbacks are signed with.
    pub signers: signing::Signers,
    pub http: http1::Client,
    /// The replica's cap on calls in flight across all its functions.
    pub budget: Arc<budget::Budget>,
}

/// Where what becomes of a call goes.
pub(crate) struct Results {
    pub callbacks: Callbacks,
    pub reports: ReportQueue,
    /// Call status (`--call-status`): read before each call starts, written as it moves on.
    pub status: Option<Arc<status::CallStatus>>,
    /// What this replica counted of batches, written every second (`flotilla_queue::batch`).
    pub tally: flotilla_queue::batch::Tally,
}

/// Timings and bounds from the flags.
pub(crate) struct Settings {
    pub ack_wait: Duration,
    /// A third of `ack_wait`: two progress acks may be lost before NATS redelivers.
    pub progress_every: Duration,
    pub consumer_idle: Duration,
    pub discovery_interval: Duration,
    /// Deliveries after which a message that never settled is dead-lettered (a crash loop).
    pub max_deliveries: u32,
    /// `max_ack_pending` of each shard's retry consumer: retries that may wait at once.
    pub retry_max_waiting: u32,
}

/// The worker's life: when to stop pulling, when to hand back, what the drain waits on.
pub(crate) struct Life {
    /// Fires on shutdown: stop pulling.
    pub stop: CancellationToken,
    /// Fires when the grace period is over: hand back what is still running.
    pub hard: CancellationToken,
    /// Supervisors, pull loops and calls; the drain waits on it.
    pub tracker: TaskTracker,
    pub ready: Arc<Readiness>,
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    client: OnceLock<async_nats::Client>,
    /// Why NATS last refused or dropped the connection.
    pub nats_problems: flotilla_runtime::NatsProblems,
    shards_wanted: AtomicUsize,
    pub shards_ready: AtomicUsize,
    started: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    /// The NATS connection is made: readiness follows its state from now on.
    pub fn connected(&self, client: &async_nats::Client) {
        let _ = self.client.set(client.clone());
    }

    /// How many shards this replica serves: it is ready once each has its consumers.
    pub fn expect_shards(&self, shards: usize) {
        self.shards_wanted.store(shards, Ordering::SeqCst);
    }

    /// Every shard's tasks are started.
    pub fn started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// The worker is draining: not ready any more, whatever else holds.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether the NATS connection is up now (false before the first connection).
    pub fn nats_connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    pub fn check(&self) -> Result<(), std::borrow::Cow<'static, str>> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("shutting down\n".into());
        }
        if self.client.get().is_none() {
            return Err("connecting to NATS\n".into());
        }
        if !self.nats_connected() {
            return Err(match self.nats_problems.last() {
                Some(problem) => format!("NATS disconnected: {problem}\n").into(),
                None => "NATS disconnected\n".into(),
            });
        }
        if !self.started.load(Ordering::SeqCst)
            || self.shards_ready.load(Ordering::SeqCst) < self.shards_wanted.load(Ordering::SeqCst)
        {
            return Err("consumers starting\n".into());
        }
        Ok(())
    }
}
