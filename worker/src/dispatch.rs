//! A shard's dispatch loop: the shard's one durable dispatch consumer, shared by its replicas like
//! a queue group, and a loop that starts each call at once or, when its function has no room
//! (no free slot within [`HOLD`], a rate, calls of it waiting already, or too large a part of the
//! replica's cap), moves it to the shard's wait stream. The loop only dispatches events; its
//! requests are kept in `dispatch/requests.rs` and where a call goes is decided by [`Placer`].
//!
//! Invariant: a moved call is acked only once JetStream holds its copy (de-duplicated on the
//! call's stream sequence), so a crash in between runs it at most twice, never zero times. The
//! rules for placing a call, and why one consumer per shard: `docs/ARCHITECTURE.md`,
//! "Partitioning and limits".

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use flotilla_queue::headers::NATS_MESSAGE_ID;
use flotilla_queue::subjects::{self, DISPATCH_CONSUMER, RETRY_CONSUMER};
use flotilla_queue::{FairnessKey, FunctionName, Priority, fairness};
use futures_util::future::OptionFuture;
use futures_util::{StreamExt, TryStreamExt};
use metrics::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Interval};

use crate::budget::Slot;
use crate::call;
use crate::dead;
use crate::functions::{FunctionRt, Functions};
use crate::pull::{Arrival, InfoCall, PullError};
use crate::{Shared, pull, retry};

mod requests;

use requests::Requests;

/// Moves to the wait stream in progress at once per shard (each waits for a PubAck).
const MOVES: usize = 256;
/// How long a call whose move failed waits before it is dispatched again.
const MOVE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the dispatch consumer is read for `worker_shard_pending`.
const INFO_EVERY: Duration = Duration::from_secs(5);

/// The shard's dispatch consumer. `max_ack_pending` is unlimited: each replica's own cap bounds
/// what it takes, and a function's concurrency is kept by its slots.
pub(crate) fn consumer_config(shard: u32, ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(DISPATCH_CONSUMER.into()),
        description: Some(format!(
            "Flotilla calls of shard {shard}, dispatched by function"
        )),
        filter_subject: subjects::shard_wildcard(shard),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // The worker settles every call itself; NATS must never drop one after some number of
        // deliveries.
        max_deliver: -1,
        max_ack_pending: -1,
        ..Default::default()
    }
}

/// Removes the consumers of the earlier layout (one per function, filtered on its call subject)
/// from the shard's stream, then creates the dispatch consumer. A work-queue stream refuses a
/// consumer whose filter overlaps another's, and the calls those consumers had delivered and not
/// acknowledged return to the stream when they go, to be dispatched like any other.
pub(crate) async fn prepare(shared: &Shared, shard: u32) -> Result<PullConsumer, PullError> {
    let consumer = || DISPATCH_CONSUMER.to_owned();
    let stream_name = subjects::call_stream(shard);
    let stream = shared
        .nats
        .js
        .get_stream(stream_name.as_str())
        .await
        .map_err(|source| PullError::Stream {
            consumer: consumer(),
            source,
        })?;
    let mut earlier = Vec::new();
    let mut list = stream.consumers();
    while let Some(info) = list
        .try_next()
        .await
        .map_err(|source| PullError::ListConsumers {
            consumer: consumer(),
            source,
        })?
    {
        if info.name != DISPATCH_CONSUMER
            && info.name != RETRY_CONSUMER
            && subjects::function_of_subject(shard, &info.config.filter_subject).is_some()
        {
            earlier.push(info.name);
        }
    }
    for name in &earlier {
        stream
            .delete_consumer(name)
            .await
            .map_err(|source| PullError::RemoveEarlier {
                consumer: consumer(),
                earlier: name.clone(),
                source,
            })?;
        tracing::info!(
            shard,
            consumer = %name,
            "removed a per-function consumer of the earlier layout; its calls are dispatched"
        );
    }
    let created = stream
        .create_consumer(consumer_config(shard, shared.settings.ack_wait))
        .await
        .map_err(|source| PullError::Create {
            consumer: consumer(),
            source,
        })?;
    Ok(created)
}

/// Dispatches the shard's calls until the worker stops (`Ok`) or the consumer fails. `waiting`
/// hears of every function whose calls start waiting, so its wait loop runs.
pub(crate) async fn run(
    shared: Arc<Shared>,
    shard: u32,
    consumer: PullConsumer,
    functions: Arc<Functions>,
    waiting: mpsc::UnboundedSender<Arc<FunctionRt>>,
) -> Result<(), PullError> {
    let (inbox, mut sub) = pull::open_inbox(&shared).await?;
    let mut dispatcher =
        Dispatcher::new(shared.clone(), shard, consumer, inbox, functions, waiting);
    tracing::debug!(shard, "dispatching");
    let result = loop {
        match dispatcher.turn(&mut sub).await {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(())) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    pull::hand_back_inbox(&shared, sub).await;
    result
}

/// A shard's dispatch loop: its open [`Requests`], the [`Placer`] that decides where each call
/// goes, and the I/O they ask for. Each turn asks for more calls when due and handles one event.
struct Dispatcher {
    shared: Arc<Shared>,
    shard: u32,
    consumer: PullConsumer,
    inbox: String,
    /// Names the loop in the log.
    puller: String,
    functions: Arc<Functions>,
    /// Hears of every function whose calls start waiting.
    waiting: mpsc::UnboundedSender<Arc<FunctionRt>>,
    /// Moves to the wait stream in progress; a full set holds the loop back.
    moves: Arc<Semaphore>,
    placer: Placer,
    requests: Requests,
    /// `worker_shard_pending`.
    pending: Gauge,
    info_tick: Interval,
    /// The consumer is read beside the loop, not in it: during a NATS disruption the request may
    /// take seconds, and calls must not wait behind it.
    info_call: Option<InfoCall>,
}

impl Dispatcher {
    fn new(
        shared: Arc<Shared>,
        shard: u32,
        consumer: PullConsumer,
        inbox: String,
        functions: Arc<Functions>,
        waiting: mpsc::UnboundedSender<Arc<FunctionRt>>,
    ) -> Self {
        let mut info_tick = tokio::time::interval(INFO_EVERY);
        info_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pending = shared.metrics.shard_pending(shard);
        Self {
            shared,
            shard,
            consumer,
            inbox,
            puller: format!("dispatch of shard {shard}"),
            functions,
            waiting,
            moves: Arc::new(Semaphore::new(MOVES)),
            placer: Placer::default(),
            requests: Requests::new(),
            pending,
            info_tick,
            info_call: None,
        }
    }

    /// Asks for more calls when due, then waits for one event and hands it to its method.
    async fn turn(
        &mut self,
        sub: &mut async_nats::Subscriber,
    ) -> Result<ControlFlow<()>, PullError> {
        let paused = self.shared.calls.budget.paused_until();
        self.request(self.requests.want(paused.is_some())).await?;
        tokio::select! {
            biased;
            _ = self.shared.life.stop.cancelled() => Ok(ControlFlow::Break(())),
            m = sub.next() => self.on_inbox(m).await,
            // The replica ran out of a local resource: ask for nothing new until the pause ends.
            _ = tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => {
                Ok(ControlFlow::Continue(()))
            }
            _ = tokio::time::sleep_until(self.requests.lost_at()), if self.requests.outstanding() > 0 => {
                self.requests.lost();
                Ok(ControlFlow::Continue(()))
            }
            _ = self.info_tick.tick(), if self.info_call.is_none() => {
                self.info_call = Some(pull::read_info(&self.consumer));
                Ok(ControlFlow::Continue(()))
            }
            Some(info) = OptionFuture::from(self.info_call.as_mut()), if self.info_call.is_some() => {
                self.info_call = None;
                if let Ok(info) = info {
                    self.pending.set(info.num_pending as f64);
                }
                Ok(ControlFlow::Continue(()))
            }
        }
    }

    /// Asks NATS for `n` more calls (none when 0).
    async fn request(&mut self, n: usize) -> Result<(), PullError> {
        if n == 0 {
            return Ok(());
        }
        let batch = consumer::pull::BatchConfig {
            batch: n,
            expires: Some(pull::BUSY.expires),
            idle_heartbeat: pull::BUSY.heartbeat,
            ..Default::default()
        };
        self.consumer
            .request_batch(batch, self.inbox.clone().into())
            .await
            .map_err(PullError::Request)?;
        self.requests.requested(n);
        Ok(())
    }

    /// Something arrived on the pull inbox.
    async fn on_inbox(
        &mut self,
        m: Option<async_nats::Message>,
    ) -> Result<ControlFlow<()>, PullError> {
        let Some(m) = m else {
            return Err(PullError::Closed);
        };
        // Anything on the inbox (a message, a status, a heartbeat) shows the requests are alive.
        self.requests.heard();
        match pull::arrival(&self.shared, m, &self.puller).await? {
            Arrival::Message(msg) => {
                self.requests.arrived();
                Ok(self.dispatch(msg).await)
            }
            Arrival::Expired(unfulfilled) => {
                self.requests.expired(unfulfilled);
                Ok(ControlFlow::Continue(()))
            }
            Arrival::Heartbeat => Ok(ControlFlow::Continue(())),
            Arrival::Stopping => Ok(ControlFlow::Break(())),
        }
    }

    /// Starts a call, or moves it to the wait stream; a call whose subject names no valid
    /// function is a poison message.
    async fn dispatch(&mut self, msg: jetstream::Message) -> ControlFlow<()> {
        let shard = self.shard;
        let Some(name) = subjects::function_of_subject(shard, &msg.subject) else {
            let shared = self.shared.clone();
            self.shared.life.tracker.spawn(async move {
                dead::poison(&shared, &msg, shard, "subject names no valid function").await;
            });
            return ControlFlow::Continue(());
        };
        let f = self.functions.get(&name, &self.shared.calls.policies);
        let priority = Priority::of_headers(msg.headers.as_ref());
        let key = FairnessKey::of_headers(msg.headers.as_ref());
        f.lanes.saw(priority);
        if key.is_some() {
            f.lanes.saw_key();
        }
        // The key's subject token, made once, and only when a step needs it.
        let mut token = None;
        // A keyed call under `key_concurrency` starts only once claimed with one of its key's
        // slots.
        let place = if key.is_some() && f.policy.key_concurrency.is_some() {
            Place::Wait
        } else {
            let own_turn = f.is_waiting() && f.lanes.keyed() && {
                let token = token.insert(fairness::token_of(key.as_ref()));
                f.lanes.nothing_waits_for(priority, token)
            };
            self.placer.place(&self.shared, &f, own_turn).await
        };
        match place {
            Place::Start(slot) => {
                let shared = self.shared.clone();
                self.shared
                    .life
                    .tracker
                    .spawn(call::handle(shared, f, msg, slot));
                ControlFlow::Continue(())
            }
            Place::Stopping => {
                call::hand_back(&self.shared, &msg).await;
                ControlFlow::Break(())
            }
            Place::Wait => self.move_to_wait(f, msg, priority, key, token).await,
        }
    }

    /// Moves a call to its function's wait stream in a task of its own, once a move is free;
    /// tells the supervisor when this move makes the function waiting. `token`: its key's
    /// subject token, when already made.
    async fn move_to_wait(
        &mut self,
        f: Arc<FunctionRt>,
        msg: jetstream::Message,
        priority: Priority,
        key: Option<FairnessKey>,
        token: Option<String>,
    ) -> ControlFlow<()> {
        let guard = f.moving();
        if guard.began {
            let _ = self.waiting.send(f.clone());
        }
        let Ok(permit) = self.moves.clone().acquire_owned().await else {
            call::hand_back(&self.shared, &msg).await;
            return ControlFlow::Break(());
        };
        let token = token.or_else(|| {
            (key.is_some() || f.lanes.keyed()).then(|| fairness::token_of(key.as_ref()))
        });
        // Sent from the loop, so that a key's calls are parked in the order they came (and a
        // lane's in the order they came too).
        let sent = send_to_wait(&self.shared, &f, &msg, priority, token.as_deref()).await;
        // Until it is parked, the key's next calls queue behind it.
        if let Some(token) = &token {
            f.lanes.ahead.add(token, 1, Instant::now());
        }
        self.shared.life.tracker.spawn(async move {
            moved_to_wait(&f, &msg, sent, priority, token.as_deref()).await;
            if let Some(token) = &token {
                f.lanes.ahead.done(token);
            }
            drop((guard, permit));
        });
        ControlFlow::Continue(())
    }
}

/// Where a dispatched call goes.
enum Place {
    Start(Slot),
    Wait,
    /// The worker stopped while the call waited for a permit.
    Stopping,
}

/// At the replica's cap, calls of a function holding fewer calls than this wait in place for a
/// permit whatever its share: with hundreds of functions a share is one or two calls, and moving
/// the calls of every function that happens to hold two would cost more than it spares.
const MOVE_AT_CAP_FROM: usize = 8;

/// How long the dispatch loop waits in place for a function's slot before it moves the call to
/// the wait stream. A fast function at its limit frees one within microseconds, and a call that
/// waits a moment costs far less than a move; a slow one does not, and after a wait in vain its
/// calls move at once for a while.
const HOLD: Duration = Duration::from_millis(5);
/// After a wait in vain, calls move without waiting for this long, doubled after each further
/// wait in vain up to [`STARVED_MAX`], so a saturated slow function costs the loop a few
/// milliseconds now and then, not on every call.
const STARVED_MIN: Duration = Duration::from_millis(250);
const STARVED_MAX: Duration = Duration::from_secs(30);

/// Whether waiting in place for a function's slot was in vain lately.
#[derive(Debug, Default)]
struct Starved {
    until: Option<Instant>,
    streak: u32,
}

impl Starved {
    fn now(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }

    fn waited_in_vain(&mut self, now: Instant) {
        let backoff = STARVED_MIN
            .saturating_mul(1 << self.streak.min(16))
            .min(STARVED_MAX);
        self.streak = self.streak.saturating_add(1);
        self.until = Some(now + backoff);
    }

    fn fed(&mut self) {
        *self = Self::default();
    }

    /// Waits up to [`HOLD`] for one permit of `permits`, unless waiting was in vain lately, and
    /// remembers how the wait went.
    async fn hold(&mut self, permits: &Arc<Semaphore>) -> Held {
        let now = Instant::now();
        if self.now(now) {
            return Held::InVain;
        }
        match tokio::time::timeout(HOLD, permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => {
                self.fed();
                Held::Got(p)
            }
            Ok(Err(_)) => Held::Closed,
            Err(_) => {
                self.waited_in_vain(now);
                Held::InVain
            }
        }
    }
}

/// How a brief wait for a permit ended.
enum Held {
    Got(OwnedSemaphorePermit),
    /// None came in time, or waiting was in vain lately: the call moves.
    InVain,
    /// The semaphore was closed: the worker is stopping.
    Closed,
}

/// Decides where each dispatched call goes, remembering which functions' slots were waited for
/// in vain.
#[derive(Debug, Default)]
struct Placer {
    starved: HashMap<FunctionName, Starved>,
    /// Likewise for a replica permit, for functions holding more than their share of the cap.
    starved_at_cap: HashMap<FunctionName, Starved>,
}

impl Placer {
    /// Where a call of `f` goes. `own_turn`: a keyed call whose key has nothing waiting (see
    /// `LaneMarks::nothing_waits_for`) takes a free slot though other keys' calls wait.
    async fn place(&mut self, shared: &Shared, f: &FunctionRt, own_turn: bool) -> Place {
        if f.always_waits() || (f.is_waiting() && !own_turn) {
            return Place::Wait;
        }
        let function = match f.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            // A function whose calls carry priorities or keys has its waiting calls ordered in
            // its lanes, not held here in arrival order; in slow start its limit still grows to
            // meet its calls first (doubling, as after a wait in vain below).
            Err(_) if f.lanes.used() => match f
                .grow_on_demand()
                .then(|| f.slots.clone().try_acquire_owned().ok())
                .flatten()
            {
                Some(p) => p,
                None => return Place::Wait,
            },
            Err(_) => {
                let starved = self.starved.entry(f.name.clone()).or_default();
                match starved.hold(&f.slots).await {
                    Held::Got(p) => p,
                    Held::Closed => return Place::Wait,
                    // A function under adaptive control that never refused a call is in slow
                    // start: its limit grows to meet its calls, once per wait in vain, rather
                    // than send them through the wait stream.
                    Held::InVain => match f
                        .grow_on_demand()
                        .then(|| f.slots.clone().try_acquire_owned().ok())
                        .flatten()
                    {
                        Some(p) => {
                            starved.fed();
                            p
                        }
                        None => return Place::Wait,
                    },
                }
            }
        };
        let budget = &shared.calls.budget;
        let replica = match budget.permits().clone().try_acquire_owned() {
            Ok(p) => p,
            // The replica is at its cap. A function with no call in flight takes a permit kept
            // for such functions; one holding twice its share of the cap (and a few calls at
            // least) waits its turn in the wait stream; any other waits here for the next free
            // permit.
            Err(_) => match budget.express().filter(|_| f.running.calls() == 0) {
                Some(p) => p,
                None if f.running.calls() >= (2 * budget.share()).max(MOVE_AT_CAP_FROM) => {
                    // A quick function's calls give permits back within moments, so it waits
                    // a moment for one: cheaper than a move, and a skewed load of quick calls
                    // flows in arrival order. A slow one's calls move at once, so a slow
                    // function can never fill the replica's cap.
                    if !f.is_quick(HOLD) {
                        return Place::Wait;
                    }
                    let starved = self.starved_at_cap.entry(f.name.clone()).or_default();
                    match starved.hold(budget.permits()).await {
                        Held::Got(p) => p,
                        Held::InVain => return Place::Wait,
                        Held::Closed => return Place::Stopping,
                    }
                }
                None => tokio::select! {
                    p = budget.permits().clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return Place::Stopping,
                    },
                    _ = shared.life.stop.cancelled() => return Place::Stopping,
                },
            },
        };
        Place::Start(Slot::new(function, replica, &f.running))
    }
}

/// Sends a call's copy to its function's wait subject: into the lane of its `priority`, or parked
/// under its key's `token` when the function's calls carry keys.
async fn send_to_wait(
    shared: &Shared,
    f: &FunctionRt,
    msg: &jetstream::Message,
    priority: Priority,
    token: Option<&str>,
) -> Result<PublishAckFuture, PublishError> {
    let (stream, sequence) = msg
        .info()
        .map_or(("", 0), |i| (i.stream, i.stream_sequence));
    let mut headers = dead::copied_headers(msg.headers.as_ref());
    headers.insert(
        NATS_MESSAGE_ID,
        retry::dedup_id("wait", stream, sequence).as_str(),
    );
    let subject = subjects::waiting_subject(f.shard, &f.name, priority, token);
    shared
        .nats
        .js
        .publish_with_headers(subject, headers, msg.payload.clone())
        .await
}

/// Once JetStream holds the copy `sent`, acks the call and marks its lane, or parks its key.
async fn moved_to_wait(
    f: &FunctionRt,
    msg: &jetstream::Message,
    sent: Result<PublishAckFuture, PublishError>,
    priority: Priority,
    token: Option<&str>,
) {
    match retry::relayed(msg, sent, MOVE_RETRY_AFTER).await {
        Ok(()) => {
            match token {
                Some(token) => f.lanes.park(priority, token),
                None => f.lanes.mark(priority),
            }
            f.metrics.waited.increment(1);
        }
        Err(error) => {
            tracing::warn!(function = %f.name, %error, "cannot move a call to the wait stream; dispatching it again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_in_vain_back_off_and_a_success_forgets_them() {
        let now = Instant::now();
        let mut s = Starved::default();
        assert!(!s.now(now));
        s.waited_in_vain(now);
        assert!(s.now(now + STARVED_MIN / 2) && !s.now(now + STARVED_MIN));
        s.waited_in_vain(now);
        assert!(s.now(now + STARVED_MIN * 3 / 2), "doubled");
        for _ in 0..40 {
            s.waited_in_vain(now);
        }
        assert!(s.now(now + STARVED_MAX - Duration::from_millis(1)) && !s.now(now + STARVED_MAX));
        s.fed();
        assert!(!s.now(now));
    }

    #[test]
    fn the_dispatch_consumer_reads_every_call_of_the_shard_and_never_gives_up() {
        let c = consumer_config(3, Duration::from_secs(30));
        assert_eq!(c.filter_subject, "flotilla.call.3.>");
        assert_eq!(c.durable_name.as_deref(), Some(DISPATCH_CONSUMER));
        assert_eq!((c.max_deliver, c.max_ack_pending), (-1, -1));
        assert_eq!(c.ack_policy, consumer::AckPolicy::Explicit);
    }
}
