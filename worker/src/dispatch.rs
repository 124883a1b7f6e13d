//! A shard's dispatch loop: one durable consumer reads every call of the shard, shared by the
//! shard's replicas like a queue group, and each call either starts at once or, when its function
//! has no room, moves to the shard's wait stream. Reading calls in arrival order costs nats-server
//! the same whatever the number of functions, where one filtered consumer per function on a shared
//! stream made it skip the other functions' messages (see `docs/ARCHITECTURE.md`).
//!
//! A call starts when its function has a free slot (its share of the function's cluster-wide
//! concurrency, see `functions`) and the replica a free permit (`--max-in-flight`). Otherwise:
//! - its function has no free slot: the loop waits for one a few milliseconds ([`HOLD`]), long
//!   enough for a fast function, and otherwise moves the call to the wait stream under its
//!   function's subject, so a saturated function never holds back another;
//! - the replica is at its cap: a function with no call in flight takes one of the permits kept
//!   for quiet functions, so it is never stuck behind other functions' calls; a function holding
//!   twice its share of the cap or more (and at least [`MOVE_AT_CAP_FROM`] calls) moves the call
//!   to the wait stream, where it takes its turn among the waiting functions, unless its recent
//!   calls were quick (under [`HOLD`] on average): then it waits up to [`HOLD`] for a permit
//!   first, like a slot; any other waits for the next free permit.
//!
//! Calls also move at once when the function is rate-limited (all its calls start from the wait
//! stream, at the rate) or calls of the function wait already (a new one queues behind them).
//!
//! A move publishes a copy (de-duplicated on the call's stream sequence) and acks the call only
//! once JetStream holds the copy, so a crash in between runs the call at most twice, never zero.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, PullConsumer};
use flotilla_queue::FunctionName;
use flotilla_queue::headers::NATS_MESSAGE_ID;
use flotilla_queue::subjects::{self, DISPATCH_CONSUMER, RETRY_CONSUMER};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::budget::Slot;
use crate::call;
use crate::dead;
use crate::error::PullError;
use crate::functions::{FunctionRt, Functions};
use crate::pull::Arrival;
use crate::{Shared, metrics, pull, retry};

/// Messages asked for at once. Each is started, moved or (at the replica's cap) waits a moment
/// for a permit, so few wait in the inbox.
const BATCH: usize = 256;
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
    let create = |message: String, retryable: bool| PullError::Create {
        consumer: DISPATCH_CONSUMER.into(),
        message,
        retryable,
    };
    let stream_name = subjects::call_stream(shard);
    let stream = shared
        .js
        .get_stream(stream_name.as_str())
        .await
        .map_err(|e| create(e.to_string(), true))?;
    let mut earlier = Vec::new();
    let mut list = stream.consumers();
    while let Some(info) = list
        .try_next()
        .await
        .map_err(|e| create(e.to_string(), true))?
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
            .map_err(|e| create(format!("removing consumer {name}: {e}"), true))?;
        tracing::info!(
            shard,
            consumer = %name,
            "removed a per-function consumer of the earlier layout; its calls are dispatched"
        );
    }
    let consumer = stream
        .create_consumer(consumer_config(shard, shared.ack_wait))
        .await
        .map_err(|e| PullError::creating(DISPATCH_CONSUMER.into(), &e))?;
    Ok(consumer)
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
    let puller = format!("dispatch of shard {shard}");
    let moves = Arc::new(Semaphore::new(MOVES));
    let mut placer = Placer::default();
    let pending = metrics::shard_pending(shard);
    let mut info_tick = tokio::time::interval(INFO_EVERY);
    info_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Messages asked for and not yet delivered, and when the requests count as lost.
    let mut outstanding = 0usize;
    let mut lost_at = Instant::now();
    tracing::debug!(shard, "dispatching");
    let result = loop {
        let paused = shared.budget.paused_until();
        // Ask again once half a batch has arrived, so calls keep flowing without a gap.
        if paused.is_none() && outstanding <= BATCH / 2 {
            let want = BATCH - outstanding;
            let batch = consumer::pull::BatchConfig {
                batch: want,
                expires: Some(pull::BUSY.expires),
                idle_heartbeat: pull::BUSY.heartbeat,
                ..Default::default()
            };
            if let Err(e) = consumer.request_batch(batch, inbox.clone().into()).await {
                break Err(PullError::Request(e.to_string()));
            }
            outstanding += want;
            lost_at = Instant::now() + pull::BUSY.lost_after;
        }
        let m = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break Ok(()),
            m = sub.next() => m,
            // The replica ran out of a local resource: ask for nothing new until the pause ends.
            _ = tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => continue,
            _ = tokio::time::sleep_until(lost_at), if outstanding > 0 => {
                outstanding = 0;
                continue;
            }
            _ = info_tick.tick() => {
                if let Ok(info) = consumer.get_info().await {
                    pending.set(info.num_pending as f64);
                }
                continue;
            }
        };
        let Some(m) = m else {
            break Err(PullError::Closed);
        };
        // Anything on the inbox (a message, a status, a heartbeat) shows the requests are alive.
        lost_at = Instant::now() + pull::BUSY.lost_after;
        let msg = match pull::arrival(&shared, m, &puller).await {
            Ok(Arrival::Message(msg)) => {
                outstanding = outstanding.saturating_sub(1);
                msg
            }
            Ok(Arrival::Expired(unfulfilled)) => {
                outstanding = unfulfilled.map_or(0, |n| outstanding.saturating_sub(n));
                continue;
            }
            Ok(Arrival::Heartbeat) => continue,
            Ok(Arrival::Stopping) => break Ok(()),
            Err(e) => break Err(e),
        };
        let Some(name) = subjects::function_of_subject(shard, &msg.subject) else {
            let shared2 = shared.clone();
            shared.tracker.spawn(async move {
                dead::poison(&shared2, &msg, shard, "subject names no valid function").await;
            });
            continue;
        };
        let f = functions.get(&name, &shared.policies);
        match placer.place(&shared, &f).await {
            Place::Start(slot) => {
                shared
                    .tracker
                    .spawn(call::handle(shared.clone(), f, msg, slot));
            }
            Place::Stopping => {
                call::hand_back(&shared, &msg).await;
                break Ok(());
            }
            Place::Wait => {
                let guard = f.moving();
                if guard.began {
                    let _ = waiting.send(f.clone());
                }
                let Ok(permit) = moves.clone().acquire_owned().await else {
                    call::hand_back(&shared, &msg).await;
                    break Ok(());
                };
                let shared2 = shared.clone();
                shared.tracker.spawn(async move {
                    move_to_wait(&shared2, &f, msg).await;
                    drop((guard, permit));
                });
            }
        }
    };
    pull::hand_back_inbox(&shared, sub).await;
    result
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
    async fn place(&mut self, shared: &Shared, f: &FunctionRt) -> Place {
        if f.always_waits() || f.is_waiting() {
            return Place::Wait;
        }
        let function = match f.slots.clone().try_acquire_owned() {
            Ok(p) => p,
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
        let budget = &shared.budget;
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
                    _ = shared.stop.cancelled() => return Place::Stopping,
                },
            },
        };
        Place::Start(Slot::new(function, replica, &f.running))
    }
}

/// Moves a call to its function's wait subject.
async fn move_to_wait(shared: &Shared, f: &FunctionRt, msg: jetstream::Message) {
    let (stream, sequence) = msg
        .info()
        .map_or(("", 0), |i| (i.stream, i.stream_sequence));
    let mut headers = dead::copied_headers(msg.headers.as_ref());
    headers.insert(
        NATS_MESSAGE_ID,
        retry::dedup_id("wait", stream, sequence).as_str(),
    );
    let subject = subjects::wait_subject(f.shard, &f.name);
    let payload = msg.payload.clone();
    match retry::relay(shared, &msg, subject, headers, payload, MOVE_RETRY_AFTER).await {
        Ok(()) => f.metrics.waited.increment(1),
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
