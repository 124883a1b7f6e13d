//! One supervisor per served shard: it runs the shard's dispatch loop, a wait loop for each
//! function whose calls wait (told by the dispatch loop, or found among the wait stream's subjects
//! every `--discovery-interval`), the presence heartbeat that counts the shard's replicas, and the
//! limit reports. Its select only dispatches events; the bookkeeping is in `discovery/state.rs`.
//!
//! Invariant: at most one wait loop per function in a replica, and a failed loop restarts only
//! after a wait. The why: `docs/ARCHITECTURE.md`, "Partitioning and limits".

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{InfoError, Stream as JsStream};
use flotilla_queue::{FunctionName, Priority, limits, subjects};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::Shared;
use crate::dispatch;
use crate::functions::{FunctionRt, Functions, Membership};
use crate::pull;

mod roster;
mod state;

use roster::Roster;
use state::{DispatchLoop, Health, WaitLoops};

/// How often a replica announces that it serves a shard.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// Why one discovery pass failed; the next pass asks the stream again.
#[derive(Debug, thiserror::Error)]
enum DiscoveryError {
    #[error("reading the shard's wait stream: {0}")]
    Stream(#[source] GetStreamError),
    #[error("listing the subjects that hold messages: {0}")]
    Subjects(#[source] InfoError),
}

/// Runs one shard's dispatch and wait loops until the worker stops.
pub(crate) async fn supervise(shared: Arc<Shared>, shard: u32) {
    let (membership_tx, mut membership) = watch::channel(Membership::ALONE);
    let presence_task = shared
        .life
        .tracker
        .spawn(presence(shared.clone(), shard, membership_tx));
    let functions = Arc::new(Functions::new(
        shard,
        shared.calls.budget.clone(),
        membership.clone(),
        shared.metrics.clone(),
    ));
    let limits_task =
        shared
            .life
            .tracker
            .spawn(report_limits(shared.clone(), shard, functions.clone()));
    let (waiting_tx, mut waiting_rx) = mpsc::unbounded_channel::<Arc<FunctionRt>>();
    let mut supervisor = Supervisor::new(shared.clone(), shard, functions, waiting_tx);
    let mut tick = tokio::time::interval(shared.settings.discovery_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch_replicas = true;

    loop {
        tokio::select! {
            biased;
            _ = shared.life.stop.cancelled() => break,
            Some(f) = waiting_rx.recv() => supervisor.start_wait_loop(f),
            changed = membership.changed(), if watch_replicas => match changed {
                Ok(()) => {
                    let m = *membership.borrow_and_update();
                    supervisor.functions.rebalance(m);
                }
                // The presence heartbeat ended (it could not subscribe): the split stays as it
                // is, and an arm that is ready at once must not starve the discovery tick.
                Err(_) => watch_replicas = false,
            },
            _ = tick.tick() => supervisor.pass().await,
        }
    }
    // The loops see the same stop signal; wait for them so the pending gauges settle.
    supervisor.stop().await;
    let _ = presence_task.await;
    let _ = limits_task.await;
}

/// One shard's supervisor: the state of its loops and of discovery, and the I/O they ask for.
/// Each event (a function whose calls start waiting, a change of replicas, a discovery tick) is
/// one method.
struct Supervisor {
    shared: Arc<Shared>,
    shard: u32,
    functions: Arc<Functions>,
    /// Handed to each dispatch loop, which tells of every function whose calls start waiting.
    waiting: mpsc::UnboundedSender<Arc<FunctionRt>>,
    dispatch: DispatchLoop,
    loops: WaitLoops,
    /// The shard's wait stream, looked up once and again after a failed pass.
    wait_stream: Option<JsStream>,
    discovery: Health,
}

impl Supervisor {
    fn new(
        shared: Arc<Shared>,
        shard: u32,
        functions: Arc<Functions>,
        waiting: mpsc::UnboundedSender<Arc<FunctionRt>>,
    ) -> Self {
        Self {
            shared,
            shard,
            functions,
            waiting,
            dispatch: DispatchLoop::new(),
            loops: WaitLoops::default(),
            wait_stream: None,
            discovery: Health::new(),
        }
    }

    /// Starts `f`'s wait loop unless it runs already or failed too recently.
    fn start_wait_loop(&mut self, f: Arc<FunctionRt>) {
        if !self.loops.may_start(&f.name, Instant::now()) {
            return;
        }
        let name = f.name.clone();
        let handle = self
            .shared
            .life
            .tracker
            .spawn(pull::run(self.shared.clone(), f));
        self.loops.started(name, handle);
        self.shared.metrics.consumers.increment(1.0);
    }

    /// A discovery tick: collects finished wait loops, restarts the dispatch loop if it is due,
    /// and starts a wait loop for each function whose calls wait.
    async fn pass(&mut self) {
        let consumers = &self.shared.metrics.consumers;
        self.loops.reap(self.shard, consumers).await;
        self.keep_dispatching().await;
        self.discover().await;
    }

    /// Prepares and starts the dispatch loop when none runs and no wait after a failure is under
    /// way.
    async fn keep_dispatching(&mut self) {
        let shard = self.shard;
        if !self.dispatch.due(Instant::now()) {
            return;
        }
        self.dispatch.reap(shard).await;
        match dispatch::prepare(&self.shared, shard).await {
            Ok(consumer) => {
                let handle = self.shared.life.tracker.spawn(dispatch::run(
                    self.shared.clone(),
                    shard,
                    consumer,
                    self.functions.clone(),
                    self.waiting.clone(),
                ));
                if self.dispatch.started(handle) {
                    self.shared
                        .life
                        .ready
                        .shards_ready
                        .fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(error) => {
                let retryable = error.is_retryable();
                if retryable {
                    tracing::warn!(shard, %error, "cannot dispatch the shard's calls yet; retrying");
                } else {
                    tracing::error!(shard, %error, "NATS refused the shard's dispatch consumer");
                }
                self.dispatch.failed(retryable, Instant::now());
            }
        }
    }

    /// Starts a wait loop for each function with calls in the wait stream, whoever moved them
    /// there.
    async fn discover(&mut self) {
        let shard = self.shard;
        match self.waiting_functions().await {
            Ok(found) => {
                if self.discovery.worked() {
                    tracing::info!(shard, "discovery works again");
                }
                for (name, lane, token) in found {
                    let f = self.functions.get(&name, &self.shared.calls.policies);
                    // Another replica may have moved them: the loop asks that lane again (and
                    // gives the key its turns).
                    match token {
                        Some(token) => f.lanes.park(lane, &token),
                        None => f.lanes.mark(lane),
                    }
                    if !self.loops.runs(&name) {
                        self.start_wait_loop(f);
                    }
                }
            }
            Err(error) => {
                self.wait_stream = None;
                if self.discovery.failed() {
                    tracing::warn!(shard, %error, "discovery failed; retrying");
                }
            }
        }
    }

    /// The functions whose calls wait in the shard's wait stream, in which lanes, and under which
    /// keys when parked.
    async fn waiting_functions(
        &mut self,
    ) -> Result<Vec<(FunctionName, Priority, Option<String>)>, DiscoveryError> {
        let shard = self.shard;
        let s = match self.wait_stream.take() {
            Some(s) => s,
            None => self
                .shared
                .nats
                .js
                .get_stream(subjects::wait_stream(shard))
                .await
                .map_err(DiscoveryError::Stream)?,
        };
        let s = &*self.wait_stream.insert(s);
        let mut subjects_info = s
            .info_with_subjects(subjects::wait_wildcard(shard))
            .await
            .map_err(DiscoveryError::Subjects)?;
        let mut found = Vec::new();
        while let Some(entry) = subjects_info.next().await {
            let (subject, count) = entry.map_err(DiscoveryError::Subjects)?;
            if count == 0 {
                continue;
            }
            if let Some((name, lane, token)) = subjects::park_of_wait_subject(shard, &subject) {
                found.push((name, lane, Some(token.to_owned())));
            } else if let Some((name, lane)) = subjects::lane_of_wait_subject(shard, &subject) {
                found.push((name, lane, None));
            }
        }
        Ok(found)
    }

    /// Waits for the shard's loops to end.
    async fn stop(mut self) {
        self.dispatch.stop().await;
        self.loops.stop(&self.shared.metrics.consumers).await;
    }
}

/// Reports the concurrency limits of the shard's functions in this replica every
/// [`limits::REPORT_EVERY`], for the gateway's `/system/queues`. Fire and forget: a lost report
/// only leaves the gateway with the previous one for a while.
async fn report_limits(shared: Arc<Shared>, shard: u32, functions: Arc<Functions>) {
    let subject = subjects::limits_subject(shard);
    let replica = shared.nats.client.new_inbox();
    let mut tick = tokio::time::interval(limits::REPORT_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.life.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = limits::LimitReport {
            replica: replica.clone(),
            functions: functions.limits(),
        };
        if report.functions.is_empty() {
            continue;
        }
        let body = report.encode();
        if let Err(error) = shared
            .nats
            .client
            .publish(subject.clone(), body.into())
            .await
        {
            tracing::debug!(%error, "limit report not sent");
        }
    }
}

/// The shard's presence heartbeat: announces this replica every `PRESENCE_EVERY` and tells
/// `membership` how many replicas were heard from within [`roster::PRESENCE_EXPIRY`], itself
/// included, and its place among them (by id, so every replica orders them alike). A replica says
/// `hello` when it starts (the others answer at once, so it knows them within a round trip) and
/// `bye` when it stops pulling (the others take over its share at once). One that dies silently
/// drops out after that expiry. No other coordination between replicas exists.
async fn presence(shared: Arc<Shared>, shard: u32, membership: watch::Sender<Membership>) {
    let subject = subjects::presence_subject(shard);
    // Unique per connection, hence per replica and shard.
    let me = shared.nats.client.new_inbox();
    let announce = |kind: &str| {
        let (client, subject, body) = (
            shared.nats.client.clone(),
            subject.clone(),
            format!("{kind} {me}"),
        );
        async move {
            if let Err(error) = client.publish(subject, body.into()).await {
                tracing::debug!(%error, "presence heartbeat not sent");
            }
        }
    };
    let mut sub = match shared.nats.client.subscribe(subject.clone()).await {
        Ok(sub) => sub,
        Err(error) => {
            tracing::warn!(shard, %error, "no presence heartbeat: rates and concurrency are not split among replicas");
            return;
        }
    };
    announce("hello").await;
    let mut roster = Roster::new(me.clone());
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.life.stop.cancelled() => break,
            m = sub.next() => {
                let Some(m) = m else { break };
                if roster.heard(&m.payload) {
                    announce("beat").await;
                }
            }
            _ = tick.tick() => {
                announce("beat").await;
                roster.expire();
            }
        }
        let now = roster.membership();
        membership.send_if_modified(|m| {
            let changed = *m != now;
            if changed {
                tracing::debug!(
                    shard,
                    replicas = now.replicas,
                    index = now.index,
                    "replicas of the shard"
                );
                *m = now;
            }
            changed
        });
    }
    announce("bye").await;
    let _ = sub.unsubscribe().await;
}
