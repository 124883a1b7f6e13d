//! One waiting function's durable consumers on the shard's wait stream (one per priority lane it
//! uses), and its pull loop: it asks NATS for exactly as many calls as the function can start now
//! (free slots, replica permits, rate tokens), of the highest lane with calls waiting, and ends
//! once nothing waits. The loop only dispatches events; the bookkeeping lives in `pull/state.rs`,
//! `pull/ledger.rs` and `pull/lanes.rs`.
//!
//! Invariant: nothing is requested that could not start at once, so no message waits in a local
//! buffer while its `ack_wait` clock runs. Why a loop per waiting function: `docs/ARCHITECTURE.md`,
//! "Partitioning and limits".

use std::future::Future;
use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{HeaderMap, StatusCode};
use flotilla_queue::{FairnessKey, FunctionName, FunctionPolicy, Priority, fairness, subjects};
use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use crate::Shared;
use crate::budget::Slot;
use crate::call;
use crate::functions::{FunctionRt, Membership};

mod claim;
mod error;
mod lanes;
mod ledger;
mod pace;
mod state;

pub(crate) use error::PullError;
#[cfg(test)]
pub(crate) use error::tests::refused;
use lanes::{Ask, Asked, LANE_POLL, Lanes};
use ledger::{Ledger, Plan, RateShare};
pub(crate) use pace::{BUSY, Silence};
use state::WaitState;

/// A consumer-info request in progress.
pub(crate) type InfoCall = Pin<
    Box<dyn Future<Output = Result<consumer::Info, jetstream::context::ConsumerInfoError>> + Send>,
>;
/// At most this many calls are claimed into a lane beyond the slots being filled (fewer for a
/// function whose limit in this replica is lower).
const CLAIM_AHEAD: usize = 32;
/// A function whose calls end within this on average has [`CLAIM_AHEAD`] calls claimed ahead
/// whatever its limit: a key arriving after them waits a few milliseconds, and the lane does not
/// run dry between claims.
const QUICK: Duration = Duration::from_millis(5);
/// How long the loop waits before claiming again after a claim that found nothing to claim.
const CLAIM_PAUSE: Duration = Duration::from_millis(100);
/// How often a wait loop may double its function's limit in slow start.
const GROW_EVERY: Duration = Duration::from_millis(5);
/// A claim of parked calls in progress (see `pull/claim.rs`).
type ClaimCall = Pin<Box<dyn Future<Output = usize> + Send>>;
/// A wait for one of the replica's permits.
type PermitWait = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// How a wait loop ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The worker is shutting down.
    Stopped,
    /// No call of the function waits any more: its calls are dispatched directly again.
    Drained,
}

/// The durable consumer of a function's waiting calls of one priority (its lane).
pub(crate) fn consumer_config(
    function: &FunctionName,
    lane: Priority,
    shard: u32,
    policy: &FunctionPolicy,
    ack_wait: Duration,
    inactive: Duration,
) -> consumer::pull::Config {
    let description = match lane {
        Priority::Normal => format!("Flotilla calls of {function} waiting for room"),
        lane => format!("Flotilla {lane} calls of {function} waiting for room"),
    };
    consumer::pull::Config {
        durable_name: Some(subjects::lane_consumer_name(function, lane)),
        description: Some(description),
        filter_subject: subjects::wait_lane_subject(shard, function, lane),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // The worker settles every call itself (ack, term to the dead letters, or nak); NATS
        // must never drop one silently after some number of deliveries.
        max_deliver: -1,
        // The cluster-wide concurrency: NATS enforces it across every replica (for each lane).
        max_ack_pending: i64::from(policy.concurrency),
        // A function whose calls no longer wait loses its consumer; the next call that has to
        // wait makes it again.
        inactive_threshold: inactive,
        // Its state (which waiting calls are delivered) in memory: consumers come and go with
        // the functions that are at a limit, and a file each would cost nats-server a directory
        // and a state file written per flush. After a server restart the calls delivered and
        // not acked are delivered again, which a work queue allows.
        memory_storage: true,
        ..Default::default()
    }
}

/// Creates (or updates) the consumer of the function's lane of `lane`.
async fn lane_consumer(
    shared: &Shared,
    f: &FunctionRt,
    lane: Priority,
) -> Result<consumer::PullConsumer, PullError> {
    let stream = subjects::wait_stream(f.shard);
    let config = consumer_config(
        &f.name,
        lane,
        f.shard,
        &f.policy,
        shared.settings.ack_wait,
        shared.settings.consumer_idle,
    );
    shared
        .nats
        .js
        .create_consumer_on_stream(config, stream.as_str())
        .await
        .map_err(|source| PullError::Create {
            consumer: subjects::lane_consumer_name(&f.name, lane),
            source,
        })
}

/// Creates (or updates) the function's consumer and pulls until stopped, drained, or broken.
pub(crate) async fn run(shared: Arc<Shared>, f: Arc<FunctionRt>) -> Result<Ended, PullError> {
    // New calls queue behind those found waiting, rather than overtake them.
    f.set_waiting(true);
    let consumer = lane_consumer(&shared, &f, Priority::Normal).await?;
    // One inbox for every lane: a request's answer comes to `<inbox>.<lane>`.
    let (inbox, mut sub) = open_inbox_for(&shared, |inbox| format!("{inbox}.*")).await?;
    tracing::debug!(function = %f.name, shard = f.shard, "pulling");
    let mut wait = WaitLoop::new(shared.clone(), f.clone(), consumer, inbox);
    let ended = wait.run(&mut sub).await?;
    drop(wait);
    hand_back_inbox(&shared, sub).await;
    f.metrics.pending.set(0.0);
    Ok(ended)
}

/// A waiting function's pull loop: its [`WaitState`] and the I/O it asks for. Each turn plans,
/// sends the request the plan asks for, and waits for one event, which one method handles.
struct WaitLoop {
    shared: Arc<Shared>,
    f: Arc<FunctionRt>,
    /// Each lane's consumer, in `Priority::ALL` order, made when the lane is first asked.
    consumers: [Option<consumer::PullConsumer>; 3],
    /// Which lane to ask next, and what each lane was asked.
    lanes: Lanes,
    /// Calls this loop claimed into each lane and has not seen delivered since (see
    /// `pull/claim.rs`); a lane read empty or short has none.
    claimed_ahead: [usize; 3],
    /// A claim of parked calls in progress, and its lane.
    claiming: Option<(Priority, ClaimCall)>,
    /// No claim starts before this (after one that claimed nothing).
    claim_after: Instant,
    /// The function's limit does not grow again before this (see `grow_to_meet_lanes`).
    grow_after: Instant,
    inbox: String,
    membership: watch::Receiver<Membership>,
    state: WaitState,
    /// The consumers are read beside the loop, not in it: during a NATS disruption the request
    /// may take seconds, and messages must not wait behind it.
    info_call: Option<LanesInfoCall>,
    /// Waiting for a replica permit keeps its place in the queue across turns of the loop.
    permit_wait: Option<PermitWait>,
}

impl WaitLoop {
    fn new(
        shared: Arc<Shared>,
        f: Arc<FunctionRt>,
        consumer: consumer::PullConsumer,
        inbox: String,
    ) -> Self {
        let ledger = Ledger::new(
            f.policy.replica_concurrency as usize,
            f.slots.clone(),
            f.running.clone(),
        );
        let rate = f.policy.rate_per_second.and_then(NonZeroU32::new);
        let mut membership = f.membership.clone();
        let replicas = membership.borrow_and_update().replicas;
        let state = WaitState::new(ledger, rate, replicas, shared.settings.consumer_idle);
        Self {
            shared,
            f,
            consumers: [None, Some(consumer), None],
            lanes: Lanes::new(),
            claimed_ahead: [0; 3],
            claiming: None,
            claim_after: Instant::now(),
            grow_after: Instant::now(),
            inbox,
            membership,
            state,
            info_call: None,
            permit_wait: None,
        }
    }

    /// Turns until the loop ends: nothing waits any more (see [`WaitLoop::on_info`]) and no
    /// request of the loop is open, the worker stops, or pulling fails. The end does not hang on
    /// reading the consumer again, which NATS may have removed.
    async fn run(&mut self, sub: &mut async_nats::Subscriber) -> Result<Ended, PullError> {
        loop {
            if self.f.lanes.used() {
                // Lanes came into use: long polls of before must not hold the slots.
                let forgotten = self.lanes.forget_before();
                if forgotten > 0 {
                    self.state.expired(Some(forgotten));
                }
            }
            self.grow_to_meet_lanes();
            let paused = self.shared.calls.budget.paused_until();
            let Some(plan) = self.state.plan(self.f.is_waiting(), paused.is_some()) else {
                return Ok(Ended::Drained);
            };
            self.request(plan.request).await?;
            if plan.budget_blocked && self.permit_wait.is_none() {
                let permits = self.shared.calls.budget.permits().clone();
                self.permit_wait = Some(Box::pin(permits.acquire_owned()));
            }
            if let ControlFlow::Break(ended) = self.next_event(sub, plan, paused).await? {
                return Ok(ended);
            }
        }
    }

    /// Asks NATS for `n` messages of the lane to serve next (see `pull/lanes.rs`), unless nothing
    /// waits any more: then the loop ends when its last request is closed.
    async fn request(&mut self, n: usize) -> Result<(), PullError> {
        if n == 0 || !self.f.is_waiting() {
            return Ok(());
        }
        let mut pace = self.state.pace();
        let mut batch = consumer::pull::BatchConfig {
            batch: n,
            ..Default::default()
        };
        let parked = if self.f.lanes.keyed() {
            let now = Instant::now();
            Priority::ALL.map(|p| self.f.lanes.keys.waiting(p, now))
        } else {
            [false; 3]
        };
        let asked = match self.lanes.ask(&self.f.lanes, parked) {
            Ask::Hold => return Ok(()),
            Ask::Normal => {
                batch.expires = Some(pace.expires);
                batch.idle_heartbeat = pace.heartbeat;
                Asked::Before
            }
            Ask::Poll => {
                pace.expires = LANE_POLL;
                batch.expires = Some(LANE_POLL);
                Asked::Lane(Priority::Normal)
            }
            Ask::Lane(lane) => {
                batch.no_wait = true;
                Asked::Lane(lane)
            }
        };
        let lane = asked.lane();
        if parked[lane.index()] && self.claim_parked(lane, n) {
            // Nothing claimed waits in the lane yet: it is asked once the claim lands.
            return Ok(());
        }
        let consumer = match &self.consumers[lane.index()] {
            Some(c) => c,
            None => {
                let made = lane_consumer(&self.shared, &self.f, lane).await?;
                self.consumers[lane.index()].insert(made)
            }
        };
        let reply = format!("{}.{}", self.inbox, asked.token());
        consumer
            .request_batch(batch, reply.into())
            .await
            .map_err(PullError::Request)?;
        self.lanes.requested(asked, n, &self.f.lanes);
        self.state.requested(n, &pace);
        Ok(())
    }

    /// A function whose calls wait in lanes is never held in the dispatch loop, where a function
    /// in slow start grows its limit to meet its calls; its wait loop grows it instead, at most
    /// once per [`GROW_EVERY`], while every slot is taken and calls wait.
    fn grow_to_meet_lanes(&mut self) {
        let now = Instant::now();
        if self.f.lanes.used()
            && self.f.is_waiting()
            && now >= self.grow_after
            && self.f.slots.available_permits() == 0
            && self.state.ledger_mut().held_slots() <= self.state.outstanding()
            && self.f.grow_on_demand()
        {
            self.grow_after = now + GROW_EVERY;
        }
    }

    /// Claims the lane's parked calls, one per key in turn, beside the loop: enough for `n` free
    /// slots and as many again ahead of the next requests, so slots do not wait for claims.
    /// Returns whether the lane must wait for the claim before it is asked.
    fn claim_parked(&mut self, lane: Priority, n: usize) -> bool {
        let ahead = self.claimed_ahead[lane.index()];
        // Under `key_concurrency` a claimed call holds its key's slot while it waits in the
        // lane: nothing is claimed ahead.
        let beyond = match self.f.policy.key_concurrency {
            Some(_) => 0,
            None if self.f.is_known_quick(QUICK) => CLAIM_AHEAD,
            None => self.f.limit().min(CLAIM_AHEAD),
        };
        let target = n + beyond;
        if self.claiming.is_none() && ahead < target && Instant::now() >= self.claim_after {
            let (shared, f, want) = (self.shared.clone(), self.f.clone(), target - ahead);
            self.claiming = Some((
                lane,
                Box::pin(async move { claim::claim(&shared, &f, lane, want).await }),
            ));
        }
        // While a claim is on its way (or paused after one that claimed nothing) and nothing
        // claimed waits, the lane is asked once the claim lands: asking an empty lane meanwhile
        // would spin.
        ahead == 0
    }

    /// A claim beside the loop ended with `claimed` calls in `lane`.
    fn on_claimed(&mut self, lane: Priority, claimed: usize) {
        self.claiming = None;
        self.claimed_ahead[lane.index()] += claimed;
        if claimed > 0 {
            // The lane holds calls now, whatever an earlier request found.
            self.lanes.pending(lane);
        } else {
            // NATS trouble, or every key turned out taken: not again at once.
            self.claim_after = Instant::now() + CLAIM_PAUSE;
        }
    }

    /// Waits for the next event and hands it to its method.
    async fn next_event(
        &mut self,
        sub: &mut async_nats::Subscriber,
        plan: Plan,
        paused: Option<Instant>,
    ) -> Result<ControlFlow<Ended>, PullError> {
        tokio::select! {
            biased;
            _ = self.shared.life.stop.cancelled() => Ok(ControlFlow::Break(Ended::Stopped)),
            m = sub.next() => self.on_inbox(m).await,
            slot = self.f.slots.clone().acquire_many_owned(plan.wake_at), if self.f.is_waiting() => {
                // Calls released their slots.
                if let Ok(slot) = slot {
                    self.state.ledger_mut().add_slots(slot);
                }
                Ok(ControlFlow::Continue(()))
            }
            Some(permit) = OptionFuture::from(self.permit_wait.as_mut()), if self.permit_wait.is_some() => {
                self.on_permit(permit);
                Ok(ControlFlow::Continue(()))
            }
            _ = until_ready(self.state.share()), if plan.rate_blocked => {
                self.state.rate_token();
                Ok(ControlFlow::Continue(()))
            }
            // The replica ran out of a local resource: nothing new is asked for until the pause
            // ends.
            _ = tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => {
                Ok(ControlFlow::Continue(()))
            }
            // A call moved into a lane (or found there): the loop may ask another lane now.
            () = self.f.lanes.marked() => Ok(ControlFlow::Continue(())),
            Some(claimed) = OptionFuture::from(self.claiming.as_mut().map(|(_, c)| c)), if self.claiming.is_some() => {
                let lane = self.claiming.as_ref().map_or(Priority::Normal, |(l, _)| *l);
                self.on_claimed(lane, claimed);
                Ok(ControlFlow::Continue(()))
            }
            _ = tokio::time::sleep_until(self.claim_after), if self.claim_after > Instant::now() => {
                Ok(ControlFlow::Continue(()))
            }
            changed = self.membership.changed(), if self.state.watch_replicas() => {
                self.on_membership(changed.is_ok());
                Ok(ControlFlow::Continue(()))
            }
            _ = tokio::time::sleep_until(self.state.lost_at()), if self.state.outstanding() > 0 => {
                self.state.lost();
                self.lanes.lost();
                Ok(ControlFlow::Continue(()))
            }
            _ = tokio::time::sleep_until(self.state.next_info()), if self.info_call.is_none() => {
                self.info_call = Some(read_lanes(&self.consumers));
                Ok(ControlFlow::Continue(()))
            }
            Some(info) = OptionFuture::from(self.info_call.as_mut()), if self.info_call.is_some() => {
                self.on_info(info);
                Ok(ControlFlow::Continue(()))
            }
        }
    }

    /// Something arrived on the pull inbox.
    async fn on_inbox(
        &mut self,
        m: Option<async_nats::Message>,
    ) -> Result<ControlFlow<Ended>, PullError> {
        let Some(m) = m else {
            return Err(PullError::Closed);
        };
        // Anything on the inbox (a message, a status, a heartbeat) shows the requests are alive.
        self.state.heard();
        // A lane's consumer NATS removed after `--consumer-idle` answers nothing: no responders.
        let gone = m.status == Some(StatusCode::NO_RESPONDERS);
        // A message names its lane in its subject; a status comes to its request's reply subject.
        let asked = match m.status {
            None | Some(StatusCode::OK) => subjects::lane_of_wait_subject(self.f.shard, &m.subject)
                .map(|(_, lane)| Asked::Lane(lane)),
            Some(_) => Asked::of_reply(&self.inbox, &m.subject),
        }
        .unwrap_or(Asked::Lane(Priority::Normal));
        let lane = asked.lane();
        match arrival(&self.shared, m, &self.f.name).await? {
            Arrival::Message(msg) => {
                self.lanes.arrived(lane);
                let ahead = &mut self.claimed_ahead[lane.index()];
                *ahead = ahead.saturating_sub(1);
                return Ok(self.start(msg).await);
            }
            Arrival::Expired(unfulfilled) => {
                let given_up = self.lanes.ended(asked, unfulfilled);
                if given_up > 0 {
                    // The lane had less than was asked: nothing claimed waits in it.
                    self.claimed_ahead[lane.index()] = 0;
                }
                self.state.expired(Some(given_up));
                // With lanes in use, a lane left unasked for a while (even the normal one, behind
                // a long high or low backlog) may have lost its consumer to inactivity: the next
                // request makes it again. Without lanes the normal lane is asked all the time, and
                // no responder means JetStream itself is away.
                if gone && self.f.lanes.used() {
                    self.consumers[lane.index()] = None;
                }
            }
            Arrival::Heartbeat => {}
            Arrival::Stopping => {
                self.state.expired(None);
                self.lanes.lost();
                return Ok(ControlFlow::Break(Ended::Stopped));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Starts a delivered call in the slot set aside for it, or in one it waits for when it came
    /// beyond what was asked for; hands it back when the worker stops first.
    async fn start(&mut self, msg: jetstream::Message) -> ControlFlow<Ended> {
        let slot = match self.state.delivered() {
            Some(slot) => slot,
            None => match wait_for_slot(&self.shared, &self.f, self.state.ledger_mut()).await {
                Some(slot) => slot,
                None => {
                    call::hand_back(&self.shared, &msg).await;
                    return ControlFlow::Break(Ended::Stopped);
                }
            },
        };
        // A call claimed from its key's parked subject no longer waits ahead of the key's next.
        if self.f.lanes.keyed() && claim::was_claimed(msg.headers.as_ref()) {
            let key = FairnessKey::of_headers(msg.headers.as_ref());
            self.f.lanes.ahead.done(&fairness::token_of(key.as_ref()));
        }
        let (shared, f) = (self.shared.clone(), self.f.clone());
        self.shared
            .life
            .tracker
            .spawn(call::handle(shared, f, msg, slot));
        ControlFlow::Continue(())
    }

    /// The replica permit waited for came (or the budget closed: the worker stops).
    fn on_permit(&mut self, permit: Result<OwnedSemaphorePermit, AcquireError>) {
        self.permit_wait = None;
        if let Ok(permit) = permit {
            self.state.ledger_mut().add_permit(permit);
        }
    }

    /// The shard's replicas changed, or (`changed` false) its heartbeat ended.
    fn on_membership(&mut self, changed: bool) {
        let replicas = changed.then(|| self.membership.borrow_and_update().replicas);
        if self.state.replicas(replicas)
            && let Some(n) = replicas
        {
            tracing::debug!(function = %self.f.name, replicas = n, "rate shared anew");
        }
    }

    /// The consumers were read: `worker_pending`, the lanes that hold calls, and whether the
    /// function's calls may start directly again.
    fn on_info(&mut self, info: Result<[LaneReading; 3], jetstream::context::ConsumerInfoError>) {
        self.info_call = None;
        self.state.info_read();
        match info {
            Ok(readings) => {
                let mut num_pending = 0;
                for lane in Priority::ALL {
                    match readings[lane.index()] {
                        LaneReading::Unread => {}
                        // NATS removed it after `--consumer-idle`: made again when next asked.
                        LaneReading::Gone => self.consumers[lane.index()] = None,
                        LaneReading::Read { pending } => {
                            let ahead = &mut self.claimed_ahead[lane.index()];
                            *ahead = (*ahead).min(usize::try_from(pending).unwrap_or(usize::MAX));
                            if pending > 0 {
                                self.lanes.pending(lane);
                            }
                            num_pending += pending;
                        }
                    }
                }
                self.f.metrics.pending.set(num_pending as f64);
                let f = &self.f;
                // Keys with calls parked, and a claim under way, hold the loop like calls in a
                // lane.
                let claiming = u64::from(self.claiming.is_some());
                let waiting = num_pending + f.lanes.keys.parked() as u64 + claiming;
                if self
                    .state
                    .drained(waiting, f.always_waits(), f.moves_in_progress())
                {
                    // New calls start directly again; a move that begins from now on sets the
                    // function waiting again and is delivered to this loop, or restarts it (see
                    // `dispatch`).
                    f.set_waiting(false);
                }
            }
            Err(error) => tracing::debug!(function = %self.f.name, %error, "consumer info"),
        }
    }
}

/// Reads `consumer` beside a loop: the future owns its own handle.
pub(crate) fn read_info(consumer: &consumer::PullConsumer) -> InfoCall {
    let consumer = consumer.clone();
    Box::pin(async move { consumer.get_info().await })
}

/// What a reading of one lane's consumer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum LaneReading {
    /// The loop holds no consumer for the lane.
    #[default]
    Unread,
    /// NATS no longer has it (removed after `--consumer-idle`).
    Gone,
    /// Calls not yet delivered.
    Read { pending: u64 },
}

/// A reading of a wait loop's consumers in progress.
type LanesInfoCall = Pin<
    Box<
        dyn Future<Output = Result<[LaneReading; 3], jetstream::context::ConsumerInfoError>> + Send,
    >,
>;

/// Reads every lane's consumer beside a loop, each on its own: a lane whose consumer is gone
/// does not hide the others.
fn read_lanes(consumers: &[Option<consumer::PullConsumer>; 3]) -> LanesInfoCall {
    let consumers = consumers.clone();
    Box::pin(async move {
        let mut readings = [LaneReading::Unread; 3];
        for (reading, consumer) in readings.iter_mut().zip(consumers) {
            let Some(c) = consumer else { continue };
            *reading = match c.get_info().await {
                Ok(info) => LaneReading::Read {
                    pending: info.num_pending,
                },
                Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                    LaneReading::Gone
                }
                Err(e) => return Err(e),
            };
        }
        Ok(readings)
    })
}

/// How long a stopping pull loop waits for its inbox to drain. A message that arrives later is
/// neither run nor handed back, and returns only after `ack_wait`.
const INBOX_DRAIN: Duration = Duration::from_secs(5);

/// Stops pulling: unsubscribes the pull inbox, and hands back whatever still arrives on it for
/// earlier requests (for at most [`INBOX_DRAIN`]).
pub(crate) async fn hand_back_inbox(shared: &Shared, mut sub: async_nats::Subscriber) {
    let _ = sub.drain().await;
    let drained = tokio::time::timeout(INBOX_DRAIN, async {
        while let Some(m) = sub.next().await {
            if m.status.is_none() || m.status == Some(StatusCode::OK) {
                let msg = jetstream::Message {
                    message: m,
                    context: shared.nats.js.clone(),
                };
                call::hand_back(shared, &msg).await;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            after = ?INBOX_DRAIN,
            "pull inbox did not drain in time; calls still on their way return after ack_wait"
        );
    }
}

/// A fresh pull inbox and its subscription.
pub(crate) async fn open_inbox(
    shared: &Shared,
) -> Result<(String, async_nats::Subscriber), PullError> {
    open_inbox_for(shared, Clone::clone).await
}

/// A fresh pull inbox and a subscription to the subject `subject` makes of it.
async fn open_inbox_for(
    shared: &Shared,
    subject: impl FnOnce(&String) -> String,
) -> Result<(String, async_nats::Subscriber), PullError> {
    let inbox = shared.nats.client.new_inbox();
    let sub = shared
        .nats
        .client
        .subscribe(subject(&inbox))
        .await
        .map_err(PullError::Subscribe)?;
    Ok((inbox, sub))
}

/// What arrived on a pull inbox. Matched at once and never stored, so the message is not boxed.
#[expect(
    clippy::large_enum_variant,
    reason = "boxing the message would cost an allocation per call"
)]
pub(crate) enum Arrival {
    /// A message asked for.
    Message(jetstream::Message),
    /// A request ended with this many messages it will never deliver (`None`: unknown, so all).
    Expired(Option<usize>),
    /// The server's sign that a request is alive.
    Heartbeat,
    /// The worker stopped while waiting for JetStream to answer again.
    Stopping,
}

/// Sorts what arrived on a pull inbox; `puller` names the loop in the log. Any other status ends
/// every request (after half a second when JetStream did not answer, so the loop does not spin);
/// a deleted consumer ends the loop.
pub(crate) async fn arrival(
    shared: &Shared,
    m: async_nats::Message,
    puller: &(dyn std::fmt::Display + Sync),
) -> Result<Arrival, PullError> {
    match m.status {
        None | Some(StatusCode::OK) => Ok(Arrival::Message(jetstream::Message {
            message: m,
            context: shared.nats.js.clone(),
        })),
        Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) => {
            if m.description.as_deref() == Some("Consumer Deleted") {
                return Err(PullError::ConsumerDeleted);
            }
            Ok(Arrival::Expired(pending_messages(m.headers.as_ref())))
        }
        Some(StatusCode::IDLE_HEARTBEAT) => Ok(Arrival::Heartbeat),
        Some(status) => {
            tracing::debug!(%puller, %status, description = ?m.description, "pull status");
            if status == StatusCode::NO_RESPONDERS {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shared.life.stop.cancelled() => return Ok(Arrival::Stopping),
                }
            }
            Ok(Arrival::Expired(None))
        }
    }
}

/// A message arrived beyond what was asked for: waits for the slot it lacks rather than exceed a
/// limit or burn a delivery. `None` when the worker stops first.
async fn wait_for_slot(shared: &Shared, f: &FunctionRt, ledger: &mut Ledger) -> Option<Slot> {
    loop {
        if let Some(slot) = ledger.take_slot() {
            return Some(slot);
        }
        let (needs_slot, needs_permit) = ledger.lacks();
        tokio::select! {
            _ = shared.life.stop.cancelled() => return None,
            p = f.slots.clone().acquire_owned(), if needs_slot => ledger.add_slots(p.ok()?),
            p = shared.calls.budget.permits().clone().acquire_owned(), if needs_permit => ledger.add_permit(p.ok()?),
        }
    }
}

async fn until_ready(share: Option<&RateShare>) {
    match share {
        Some(s) => s.until_ready().await,
        None => std::future::pending().await,
    }
}

/// The unfulfilled part of an expired or terminated pull request.
fn pending_messages(headers: Option<&HeaderMap>) -> Option<usize> {
    headers?
        .get(flotilla_queue::headers::NATS_PENDING_MESSAGES)?
        .as_str()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_enforces_the_cluster_limit_and_never_gives_up() {
        let f = FunctionName::parse("echo.ns").unwrap();
        let p = FunctionPolicy {
            concurrency: 7,
            ..FunctionPolicy::default()
        };
        let config = |lane| {
            consumer_config(
                &f,
                lane,
                2,
                &p,
                Duration::from_secs(3),
                Duration::from_secs(60),
            )
        };
        let c = config(Priority::Normal);
        assert_eq!(c.max_ack_pending, 7);
        assert_eq!(c.max_deliver, -1);
        assert_eq!(c.filter_subject, "flotilla.wait.2.echo.ns");
        assert_eq!(
            c.durable_name.as_deref(),
            Some(subjects::consumer_name(&f).as_str())
        );
        assert_eq!(c.ack_policy, consumer::AckPolicy::Explicit);
        let high = config(Priority::High);
        assert_eq!(high.filter_subject, "flotilla.wait.2.~high.echo.ns");
        assert_eq!(high.max_ack_pending, 7);
        assert_ne!(high.durable_name, c.durable_name);
    }

    #[test]
    fn reads_pending_from_status_headers() {
        let mut h = HeaderMap::new();
        h.insert(flotilla_queue::headers::NATS_PENDING_MESSAGES, "12");
        assert_eq!(pending_messages(Some(&h)), Some(12));
        assert_eq!(pending_messages(None), None);
    }
}
