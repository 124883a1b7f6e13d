//! A shard's dispatch loop: one durable consumer reads every call of the shard, shared by the
//! shard's replicas like a queue group, and each call either starts at once or, when its function
//! has no room, moves to the shard's wait stream. Reading calls in arrival order costs nats-server
//! the same whatever the number of functions, where one filtered consumer per function on a shared
//! stream made it skip the other functions' messages (see `docs/ARCHITECTURE.md`).
//!
//! A call starts when its function has a free slot (its share of the function's cluster-wide
//! concurrency, see `functions`) and the replica a free permit (`--max-in-flight`). Otherwise it
//! waits in the wait stream under its function's subject, so no function ever holds back another:
//! - the function is at its concurrency in this replica;
//! - the function is rate-limited (all its calls start from the wait stream, at the rate);
//! - calls of the function are waiting already (a new one queues behind them);
//! - the replica is at its cap, unless the function has no call in flight: such a function takes
//!   one of the permits kept for quiet functions, so it is not stuck behind other functions'
//!   backlogs.
//!
//! A move publishes a copy (de-duplicated on the call's stream sequence) and acks the call only
//! once JetStream holds the copy, so a crash in between runs the call at most twice, never zero.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, PullConsumer};
use flotilla_queue::headers::NATS_MESSAGE_ID;
use flotilla_queue::subjects::{self, DISPATCH_CONSUMER, RETRY_CONSUMER};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{Semaphore, mpsc};

use crate::budget::Slot;
use crate::call;
use crate::dead;
use crate::error::PullError;
use crate::functions::{FunctionRt, Functions};
use crate::retry;
use crate::{Shared, metrics};

/// Messages asked for per pull request. Each is started, moved or (at the replica's cap) waits
/// a moment for a permit, so few wait in the client's buffer.
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
/// acknowledged return to the stream when they go, to be dispatched like any other. Returns the
/// number of consumers removed.
pub(crate) async fn prepare(
    shared: &Shared,
    shard: u32,
) -> Result<(PullConsumer, usize), PullError> {
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
        .map_err(|e| {
            let retryable = !matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(_));
            create(e.to_string(), retryable)
        })?;
    Ok((consumer, earlier.len()))
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
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| PullError::Subscribe(e.to_string()))?;
    let moves = Arc::new(Semaphore::new(MOVES));
    let pending = metrics::shard_pending(shard);
    let mut info_tick = tokio::time::interval(INFO_EVERY);
    info_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::debug!(shard, "dispatching");
    loop {
        if let Some(until) = shared.budget.paused_until() {
            // The replica ran out of a local resource: take nothing new until the pause ends.
            tokio::select! {
                _ = shared.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        let msg = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(Ok(msg)) => msg,
                Some(Err(e)) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::debug!(shard, error = %e, "dispatch heartbeat missed");
                    continue;
                }
                Some(Err(e)) => return Err(PullError::Request(e.to_string())),
                None => return Err(PullError::Closed),
            },
            _ = info_tick.tick() => {
                if let Ok(info) = consumer.get_info().await {
                    pending.set(info.num_pending as f64);
                }
                continue;
            }
        };
        let Some(name) = subjects::function_of_subject(shard, &msg.subject) else {
            let shared2 = shared.clone();
            shared.tracker.spawn(async move {
                dead::poison(&shared2, &msg, shard, "subject names no valid function").await;
            });
            continue;
        };
        let f = functions.get(&name, &shared.policies);
        match place(&shared, &f) {
            Place::Start(slot) => {
                shared
                    .tracker
                    .spawn(call::handle(shared.clone(), f, msg, slot));
            }
            Place::Wait => {
                let guard = f.moving();
                if guard.began {
                    let _ = waiting.send(f.clone());
                }
                let Ok(permit) = moves.clone().acquire_owned().await else {
                    return Ok(());
                };
                let shared2 = shared.clone();
                shared.tracker.spawn(async move {
                    move_to_wait(&shared2, &f, msg).await;
                    drop((guard, permit));
                });
            }
        }
    }
}

/// Where a dispatched call goes.
enum Place {
    Start(Slot),
    Wait,
}

fn place(shared: &Shared, f: &FunctionRt) -> Place {
    if f.always_waits() || f.is_waiting() {
        return Place::Wait;
    }
    let Ok(function) = f.slots.clone().try_acquire_owned() else {
        return Place::Wait;
    };
    let replica = match shared.budget.permits().clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => match f.running.calls() {
            0 => match shared.budget.express() {
                Some(p) => p,
                None => return Place::Wait,
            },
            _ => return Place::Wait,
        },
    };
    Place::Start(Slot::new(function, replica, &f.running))
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
