//! A call that goes back without using an attempt: handed back to NATS, stored to wait for room
//! after a refusal, or stored for later when this worker ran out of a local resource; and how a
//! settling step handles NATS refusing it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use flotilla_queue::Envelope;
use flotilla_queue::status::CallState;

use super::attempt::keep_alive;
use crate::Shared;
use crate::adaptive::Refusal;
use crate::budget::Slot;
use crate::functions::FunctionRt;
use crate::outcome::{Attempt, Exhausted};
use crate::retry;
use crate::status::{Recorded, Tracked};

/// Hands a message back to NATS for another replica (or this one, later). Boxed: it is rare, and
/// its state would otherwise enlarge every call's task, which is allocated at the size of its
/// largest state.
pub(crate) fn hand_back<'a>(
    shared: &'a Shared,
    msg: &'a jetstream::Message,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        shared.metrics.handed_back.increment(1);
        if let Err(error) = msg.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%error, "nak failed; the message returns after ack_wait");
        }
    })
}

/// How long a replica stops pulling after it ran out of a local resource, and how long the call
/// it could not make waits before it is tried again.
const EXHAUSTED_PAUSE: Duration = Duration::from_secs(1);

/// What a settling step does with the message when NATS refused the step.
pub(super) enum OnFailure<'a> {
    /// Negatively acked with `delay`, with a warning naming the step and the call.
    Nak {
        step: &'static str,
        env: &'a Envelope,
        delay: Duration,
    },
    /// Handed back at once, quietly (the worker is stopping).
    HandBack,
}

/// Runs one step that settles a call (storing its retry, writing its dead letter, delivering its
/// callback) while keeping the message alive. `None` when the step did not settle the call and the
/// message went back to NATS: handed back when the grace period ended, or as `on_failure` says
/// when the step failed.
pub(super) async fn settle_step<T, E: std::fmt::Display>(
    shared: &Shared,
    msg: &jetstream::Message,
    on_failure: OnFailure<'_>,
    work: impl Future<Output = Result<T, E>> + Unpin,
) -> Option<T> {
    match keep_alive(msg, shared.settings.progress_every, &shared.life.hard, work).await {
        Some(Ok(v)) => Some(v),
        Some(Err(error)) => {
            match on_failure {
                OnFailure::Nak { step, env, delay } => {
                    tracing::warn!(call_id = %env.call_id, function = %env.function, %error, ?delay, "cannot {step}; handing the call back");
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
                OnFailure::HandBack => hand_back(shared, msg).await,
            }
            None
        }
        None => {
            hand_back(shared, msg).await;
            None
        }
    }
}

/// A call the function refused for want of room, and what it holds.
pub(super) struct Held<'a> {
    pub attempt: Attempt,
    pub origin: (&'a str, u64),
    pub slot: Slot,
    pub refusal: Refusal,
    /// When it may run again, from now.
    pub delay: Duration,
}

/// The function said it is full (a refusal under adaptive control), or its limit came down
/// after the call took its slot: backpressure, not a failure.
/// The call goes back to wait for room, stored with the same attempt number (no attempt used, no
/// delivery counted), due at once or when the function's `Retry-After` says; its status is
/// `queued` again (`Recorded::Cancelled` when a client's cancel got there first: the caller
/// settles it). A refusal at the limit's floor keeps the call's function slot for a pause, so
/// this replica sends the function nothing meanwhile.
pub(super) async fn wait_again(
    shared: &Shared,
    func: &FunctionRt,
    msg: &jetstream::Message,
    env: &Envelope,
    mut tracked: Option<Tracked<'_>>,
    held: Held<'_>,
) -> Recorded {
    let Held {
        attempt,
        origin,
        slot,
        refusal,
        delay,
    } = held;
    slot.pause_function(refusal.pause());
    if let Some(t) = tracked.as_mut()
        && t.record(|r| {
            r.state = CallState::Queued;
            r.next_attempt_at = None;
        })
        .await
            == Recorded::Cancelled
    {
        return Recorded::Cancelled;
    }
    let status_revision = tracked.as_ref().and_then(Tracked::revision);
    drop(tracked);
    let again = Again {
        attempt,
        origin,
        status_revision,
        delay,
    };
    let nak_after = delay.max(Duration::from_secs(1));
    store_again(
        shared,
        func,
        msg,
        env,
        again,
        "store the refused call for later",
        nak_after,
    )
    .await;
    Recorded::Done
}

/// Where a call that runs again with the same attempt number waits, and for how long.
struct Again<'a> {
    attempt: Attempt,
    origin: (&'a str, u64),
    status_revision: Option<u64>,
    delay: Duration,
}

/// Stores the call to run again after `again.delay` with the same attempt number (so it uses no
/// attempt, and no delivery: it comes back as a new message) and acks its message once JetStream
/// holds it. When NATS refuses the store, the message comes back after `nak_after` and the
/// warning names `step`.
async fn store_again(
    shared: &Shared,
    func: &FunctionRt,
    msg: &jetstream::Message,
    env: &Envelope,
    again: Again<'_>,
    step: &'static str,
    nak_after: Duration,
) {
    let stored = Box::pin(retry::schedule(
        shared,
        func.shard,
        env,
        again.attempt.earlier,
        again.delay,
        again.origin,
        again.status_revision,
    ));
    let on_failure = OnFailure::Nak {
        step,
        env,
        delay: nak_after,
    };
    if settle_step(shared, msg, on_failure, stored).await.is_some()
        && let Err(error) = msg.ack().await
    {
        tracing::debug!(%error, "ack after storing the call again failed; it returns and is stored once");
    }
}

/// The worker ran out of a local resource before the function was reached: the call goes back,
/// stored to run again after a pause with the same attempt number (so it uses no attempt and no
/// delivery), the replica stops pulling for the pause, and an operator hears of it.
pub(super) async fn exhausted_hand_back(
    shared: &Shared,
    func: &FunctionRt,
    msg: &jetstream::Message,
    env: &Envelope,
    (attempt, origin, status_revision): (Attempt, (&str, u64), Option<u64>),
    exhausted: Exhausted,
) {
    shared.metrics.exhausted(exhausted).increment(1);
    if shared.calls.budget.pause(EXHAUSTED_PAUSE) {
        tracing::error!(
            call_id = %env.call_id,
            function = %func.name,
            resource = exhausted.label(),
            in_flight_cap = shared.calls.budget.cap(),
            "this worker is {exhausted}: its calls go back without using an attempt and pulling pauses; lower --max-in-flight or raise the limit"
        );
    } else {
        tracing::debug!(call_id = %env.call_id, function = %func.name, resource = exhausted.label(), "handed back: {exhausted}");
    }
    let again = Again {
        attempt,
        origin,
        status_revision,
        delay: EXHAUSTED_PAUSE,
    };
    let step = "store the call for later";
    store_again(shared, func, msg, env, again, step, EXHAUSTED_PAUSE).await;
}
