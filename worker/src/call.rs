//! One call, from the pulled message to its ack: decode the envelope, call the function under its
//! timeout, hand the result to the callback queue, and settle the message only once the outcome
//! and its callback are settled, keeping the message alive with progress acks meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use flotilla_queue::policy::join_url;
use flotilla_queue::{Envelope, headers};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::adaptive::Refusal;
use crate::budget::Slot;
use crate::callback::CallbackJob;
use crate::dead;
use crate::functions::FunctionRt;
use crate::http1;
use crate::outcome::{Attempt, CallError, Exhausted, Outcome};
use crate::retry::{self, Next};
use crate::status::{Begin, Recorded, Tracked};
use flotilla_queue::status::{self, CallState, ResultKept};

/// The pooled client to functions: HTTP/1.1, in the clear or over TLS (`http1`).
pub(crate) type FunctionClient = http1::Client;

/// Calls the function once: the envelope's method, headers and body, plus `X-Call-Id` and
/// `X-Start-Time`, under `timeout` (which covers the response body too). `Err` when this worker
/// could not make the call for want of a local resource: that is no outcome of the function.
pub(crate) async fn invoke(
    client: &FunctionClient,
    url: &str,
    env: &Envelope,
    timeout: Duration,
    attempt: Attempt,
) -> Result<Outcome, Exhausted> {
    let started = Instant::now();
    let req = match build_request(url, env) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::failed(e, started.elapsed(), attempt)),
    };
    let outcome = match tokio::time::timeout(timeout, client.send(&req)).await {
        Ok(Ok(resp)) => Outcome {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
            error: None,
            duration: started.elapsed(),
            attempt,
        },
        Ok(Err(e)) => match Exhausted::of(&e) {
            Some(exhausted) => return Err(exhausted),
            None => Outcome::failed(
                CallError::Unreachable(flotilla_runtime::error_chain(&e)),
                started.elapsed(),
                attempt,
            ),
        },
        Err(_) => Outcome::failed(CallError::Timeout(timeout), started.elapsed(), attempt),
    };
    Ok(outcome)
}

fn build_request(url: &str, env: &Envelope) -> Result<http1::Request, CallError> {
    let (call_id, start) = (headers::X_CALL_ID, headers::X_START_TIME);
    let (call_id, start) = (call_id.as_str(), start.as_str());
    let start_time = env.start_time.to_string();
    let forwarded = env
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| !k.eq_ignore_ascii_case(call_id) && !k.eq_ignore_ascii_case(start));
    let all = forwarded.chain([
        (call_id, env.call_id.as_str()),
        (start, start_time.as_str()),
    ]);
    http1::Request::new(&env.method, url, all, env.body.clone()).map_err(CallError::InvalidRequest)
}

/// Runs `work` while sending a progress ack every `every`, so the message outlives `ack_wait`.
/// Returns `None`, leaving the message to the caller, when `abandon` fires first. `work` comes
/// pinned (boxed, or pinned where it lives): a future moved in here would be held twice in the
/// call's task, which is allocated at the size of its largest state.
pub(crate) async fn keep_alive<F: Future + Unpin>(
    msg: &jetstream::Message,
    every: Duration,
    abandon: &CancellationToken,
    mut work: F,
) -> Option<F::Output> {
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            _ = abandon.cancelled() => return None,
            _ = tokio::time::sleep_until(next) => {
                // Fire and forget: a lost progress ack costs at worst a redelivery. Boxed: it is
                // rare, and its state would otherwise enlarge every call's task.
                let _ = Box::pin(msg.ack_with(AckKind::Progress)).await;
                next = Instant::now() + every;
            }
        }
    }
}

/// Counts a batch's call as running while it runs, however it ends.
struct Running<'a> {
    tally: &'a flotilla_queue::batch::Tally,
    batch: &'a str,
}

impl<'a> Running<'a> {
    fn enter(tally: &'a flotilla_queue::batch::Tally, batch: &'a str) -> Self {
        tally.count(batch, |c| c.running += 1);
        Self { tally, batch }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.tally
            .count(self.batch, |c| c.running = c.running.saturating_sub(1));
    }
}

/// Keeps `worker_in_flight` right however a call ends.
struct InFlight<'a>(&'a metrics::Gauge);

impl<'a> InFlight<'a> {
    fn enter(g: &'a metrics::Gauge) -> Self {
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

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
enum OnFailure<'a> {
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
async fn settle_step<T, E: std::fmt::Display>(
    shared: &Shared,
    msg: &jetstream::Message,
    on_failure: OnFailure<'_>,
    work: impl Future<Output = Result<T, E>> + Unpin,
) -> Option<T> {
    match keep_alive(msg, shared.progress_every, &shared.hard, work).await {
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

/// The task of one call. `slot` is the call's place in its function and in the replica; it is
/// released as soon as the function has answered and the callback (if any) is handed over (the
/// function's part of it at the answer when there is no callback), while
/// the message stays unacked until the outcome is settled: stored as a retry, dead-lettered, or
/// delivered to the callback.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    func: Arc<FunctionRt>,
    msg: jetstream::Message,
    mut slot: Slot,
) {
    // The stream the message came from (the calls', or the waiting calls'), and its place there.
    let (delivered, origin) = match msg.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            (info.stream, info.stream_sequence),
        ),
        Err(_) => (1, ("", 0)),
    };
    // The message's subject names the function, which is where the envelope's function is.
    let decoded = Envelope::from_nats(func.name.clone(), msg.headers.as_ref(), msg.payload.clone());
    let mut env = match decoded {
        Ok(env) => env,
        Err(e) => {
            Box::pin(dead::poison(&shared, &msg, func.shard, &e.to_string())).await;
            return;
        }
    };
    if let Some(object) = env.body_object.clone() {
        match Box::pin(fetch_body(&shared, &object)).await {
            Ok(body) => env.body = body,
            Err(BodyMissing::Gone) => {
                let reason = format!("its body ({object}) is no longer in the object store");
                Box::pin(dead::poison(&shared, &msg, func.shard, &reason)).await;
                return;
            }
            Err(BodyMissing::Unreadable(error)) => {
                tracing::warn!(call_id = %env.call_id, %error, object, "body not read from the object store; the call returns shortly");
                let _ = msg.ack_with(AckKind::Nak(Some(BODY_RETRY_AFTER))).await;
                return;
            }
        }
    }
    let mut tracked = match &shared.status {
        Some(status) => match status.begin(&env, status::revision_of(msg.headers.as_ref())) {
            Begin::Cancelled => {
                drop(slot);
                Box::pin(settle_cancelled(&shared, &msg, &env, "before it started")).await;
                return;
            }
            Begin::Run(tracked) => Some(tracked),
        },
        None => None,
    };
    let _in_flight = InFlight::enter(&func.metrics.in_flight);
    let batch = env.batch_id.as_deref();
    if let Some(batch) = batch
        && env.attempt > 0
    {
        shared.tally.count(batch, |c| c.retries_started += 1);
    }
    let attempt = Attempt {
        earlier: env.attempt,
        delivered,
    };
    let outcome = if delivered > shared.max_deliveries {
        // A crash loop: every earlier delivery ended without a settlement (the worker died, hung
        // until killed, or lost the ack). The function is not called again; the retry policy
        // sends this outcome to the dead letters and the callback gets it as the last failure.
        Outcome::failed(CallError::Redelivered(delivered), Duration::ZERO, attempt)
    } else if let Some(expired) = expired(&func, &env, attempt) {
        // Too old to matter: never started, dead-lettered as `expired`, a 410 to the callback.
        expired
    } else {
        let url = join_url(&func.base_url, &env.path, &env.query);
        let _running = batch.map(|b| Running::enter(&shared.tally, b));
        // Pinned where they are (not moved into the futures that run them, which would hold
        // them twice) and dropped as soon as the attempt ends: a cancel while it runs drops
        // `invoked`, which aborts the function's request.
        // Counted at the function from before the request to the answer, for adaptive control.
        let Some(at_function) = func.sending() else {
            // Its function's limit came down after this call took its slot: it waits again
            // rather than be refused.
            let held = Held {
                attempt,
                origin,
                slot,
                refusal: Refusal::Lowered,
                delay: Duration::ZERO,
            };
            Box::pin(wait_again(&shared, &func, &msg, &env, tracked, held)).await;
            return;
        };
        let ran = {
            let invoked = std::pin::pin!(invoke(
                &shared.http,
                &url,
                &env,
                func.policy.timeout,
                attempt
            ));
            let work = std::pin::pin!(async {
                match tracked.as_mut() {
                    Some(t) => t.run(attempt.earlier, invoked).await,
                    None => Some(invoked.await),
                }
            });
            keep_alive(&msg, shared.progress_every, &shared.hard, work).await
        };
        let outcome = match ran {
            Some(Some(Ok(outcome))) => outcome,
            Some(None) => {
                drop(slot);
                Box::pin(settle_cancelled(&shared, &msg, &env, "while it ran")).await;
                return;
            }
            Some(Some(Err(exhausted))) => {
                drop(slot);
                let status_revision = tracked.as_ref().and_then(Tracked::revision);
                Box::pin(exhausted_hand_back(
                    &shared,
                    &func,
                    &msg,
                    &env,
                    (attempt, origin, status_revision),
                    exhausted,
                ))
                .await;
                return;
            }
            None => {
                hand_back(&shared, &msg).await;
                return;
            }
        };
        if let Some(refusal) = at_function.answered(&outcome) {
            func.metrics.call_done(outcome.status.as_u16());
            tracing::debug!(call_id = %env.call_id, function = %func.name, status = outcome.status.as_u16(), "refused for want of room; waiting again");
            let held = Held {
                attempt,
                origin,
                slot,
                refusal,
                // The function may say when to come back.
                delay: outcome
                    .retry_after()
                    .map_or(Duration::ZERO, |d| d.min(retry::RETRY_AFTER_CAP)),
            };
            Box::pin(wait_again(&shared, &func, &msg, &env, tracked, held)).await;
            return;
        }
        // Recording the outcome and settling a call without a callback are no work of the
        // function's: another call of it may start meanwhile. A call with a callback keeps its
        // function slot until the callback is handed over, so a slow callback receiver slows
        // the function's calls down rather than letting them run ahead.
        if env.callback_url.is_none() {
            slot.function_answered();
        }
        func.metrics.call_done(outcome.status.as_u16());
        func.metrics.duration.record(outcome.duration.as_secs_f64());
        func.call_took(outcome.duration);
        if let Some(error) = &outcome.error {
            tracing::debug!(call_id = %env.call_id, function = %env.function, attempt = attempt.number(), %error, "call failed");
        }
        shared.reports.send(&env, &outcome);
        outcome
    };
    let code = outcome.status.as_u16();

    let policy = &func.policy.retry;
    let next = retry::next(policy, &outcome, retry::jitter());
    // The state is recorded before the step it names (retry stored, dead letter written,
    // callback sent): a client's cancel that got in first stops that step.
    if let Some(t) = tracked.as_mut()
        && Box::pin(record_end(t, &func, &outcome, &next)).await == Recorded::Cancelled
    {
        drop(slot);
        Box::pin(settle_cancelled(&shared, &msg, &env, "before it ended")).await;
        return;
    }
    let status_revision = tracked.as_ref().and_then(Tracked::revision);
    drop(tracked);
    if let Some(batch) = env.batch_id.as_deref() {
        match end_state(&outcome, &next) {
            CallState::Retrying => shared.tally.count(batch, |c| c.retries_stored += 1),
            end => shared.tally.ended(batch, end),
        }
    }
    let dead_lettered = next == Next::DeadLetter;
    match next {
        Next::Settle => {}
        Next::Retry(delay) => {
            // The function is done with this attempt; storing the retry needs no slot.
            drop(slot);
            // Boxed, like the other rare branches: a call's task is allocated at the size of
            // its largest state, and every call pays for it. When NATS takes no retry, the
            // message itself waits out the delay (holding its place in max_ack_pending) and
            // this attempt runs again.
            let stored = Box::pin(retry::schedule(
                &shared,
                func.shard,
                &env,
                attempt.number(),
                delay,
                origin,
                status_revision,
            ));
            let on_failure = OnFailure::Nak {
                step: "store the retry",
                env: &env,
                delay,
            };
            let step = settle_step(&shared, &msg, on_failure, stored);
            if Box::pin(step).await.is_some() {
                func.metrics.retries_scheduled.increment(1);
                tracing::debug!(call_id = %env.call_id, function = %env.function, attempt = attempt.number(), status = code, ?delay, "retry scheduled");
                if let Err(error) = msg.ack().await {
                    // The message returns after ack_wait and stores the same retry again,
                    // which JetStream drops as a duplicate (same Nats-Msg-Id).
                    tracing::debug!(%error, "ack after scheduling a retry failed");
                }
            }
            return;
        }
        Next::DeadLetter => {
            let written = Box::pin(dead::exhausted(
                &shared,
                &msg,
                func.shard,
                origin,
                &outcome,
                policy.attempts,
            ));
            let on_failure = OnFailure::Nak {
                step: "write the dead letter",
                env: &env,
                delay: Duration::from_secs(5),
            };
            let step = settle_step(&shared, &msg, on_failure, written);
            if Box::pin(step).await.is_none() {
                return;
            }
        }
    }

    if let Some(url) = env.callback_url {
        let retry_max = policy.attempts.saturating_sub(1);
        let job = CallbackJob {
            url,
            call_id: env.call_id,
            function: env.function,
            status: code,
            content_type: outcome.content_type().cloned(),
            body: outcome.body,
            duration: outcome.duration,
            start_time: env.start_time,
            // A call replayed or re-published under a lowered budget may have made more.
            retry: attempt.retries().min(retry_max),
            retry_max,
            signer: shared.signers.for_policy(&func.policy),
        };
        // A full callback queue blocks in here while this call still holds its slot: pulling
        // slows down. Boxed: delivery's state would otherwise enlarge every call's task, callback
        // or not. `None` from delivery means the worker is stopping: hand the call back.
        let delivery =
            Box::pin(async { shared.callbacks.deliver(job, slot).await.ok_or("stopping") });
        let step = settle_step(&shared, &msg, OnFailure::HandBack, delivery);
        if Box::pin(step).await.is_none() {
            return;
        }
    } else {
        drop(slot);
    }
    if let Err(error) = msg.ack().await {
        tracing::warn!(%error, "ack failed; the call will run again after ack_wait");
        return;
    }
    func.settled();
    // Settled: its body is needed no more, unless its dead letter may be replayed.
    if !dead_lettered && let Some(object) = &env.body_object {
        // Boxed: only calls with large bodies take this step.
        Box::pin(forget_body(&shared, object)).await;
    }
}

/// How long a call whose body could not be read waits before it is tried again.
const BODY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a large body was not read.
enum BodyMissing {
    /// The object is gone: the call can never run.
    Gone,
    /// NATS did not answer; trying again may help.
    Unreadable(String),
}

/// Reads a body kept in the object store, whole (it is held once, in this buffer, for every
/// attempt of this delivery).
async fn fetch_body(shared: &Shared, object: &str) -> Result<Bytes, BodyMissing> {
    use async_nats::jetstream::object_store::GetErrorKind;
    use tokio::io::AsyncReadExt;
    let mut reader = match shared.bodies.get(object).await {
        Ok(r) => r,
        Err(e) if e.kind() == GetErrorKind::NotFound => return Err(BodyMissing::Gone),
        Err(e) => return Err(BodyMissing::Unreadable(e.to_string())),
    };
    let mut body = Vec::new();
    reader
        .read_to_end(&mut body)
        .await
        .map_err(|e| BodyMissing::Unreadable(e.to_string()))?;
    Ok(Bytes::from(body))
}

/// Removes a settled call's body from the object store; a failure leaves it until the bucket's
/// maximum age.
async fn forget_body(shared: &Shared, object: &str) {
    if let Err(error) = shared.bodies.delete(object).await {
        tracing::debug!(%error, object, "body of a settled call left in the object store until it expires");
    }
}

/// The outcome of a call its function's `max_age` says is too old to start: only a call never
/// started (its first attempt, first delivery) expires; one that ran goes on.
fn expired(func: &FunctionRt, env: &Envelope, attempt: Attempt) -> Option<Outcome> {
    let max_age = func.policy.max_age?;
    if attempt.earlier > 0 || attempt.is_redelivery() {
        return None;
    }
    let age_nanos = flotilla_queue::time::unix_nanos().saturating_sub(env.start_time);
    let age = Duration::from_nanos(u64::try_from(age_nanos).unwrap_or(u64::MAX));
    (age > max_age)
        .then(|| Outcome::failed(CallError::Expired { age, max_age }, Duration::ZERO, attempt))
}

/// The state an attempt's end puts its call in: `retrying`, or the final `succeeded`, `failed`
/// (an answer the policy does not retry) or `dead`.
fn end_state(outcome: &Outcome, next: &Next) -> CallState {
    match next {
        Next::Retry(_) => CallState::Retrying,
        Next::DeadLetter => CallState::Dead,
        Next::Settle if outcome.is_success() => CallState::Succeeded,
        Next::Settle => CallState::Failed,
    }
}

/// Records how the attempt ended: `retrying` with its due time, or the final state (`succeeded`,
/// `failed`, `dead`) with the answer kept when the function's policy keeps results.
async fn record_end(
    t: &mut Tracked<'_>,
    func: &FunctionRt,
    outcome: &Outcome,
    next: &Next,
) -> Recorded {
    let attempts = outcome.attempts_made();
    let status = outcome.status.as_u16();
    let ran = outcome.ran();
    let state = end_state(outcome, next);
    let due = match next {
        Next::Retry(delay) => Some(flotilla_queue::time::unix_nanos() + delay.as_nanos()),
        Next::Settle | Next::DeadLetter => None,
    };
    let dead = (state == CallState::Dead).then(|| {
        (
            dead::kind_of(outcome),
            dead::exhausted_reason(outcome, func.policy.retry.attempts),
        )
    });
    let result = if state == CallState::Retrying || !ran {
        None
    } else if !func.policy.keep_results {
        Some(ResultKept::No)
    } else if outcome.body.len() as u64 > func.policy.max_result_bytes {
        Some(ResultKept::TooLarge {
            bytes: outcome.body.len() as u64,
            limit: func.policy.max_result_bytes,
        })
    } else {
        let content_type = outcome.content_type().and_then(|v| v.to_str().ok());
        let kept = t
            .keep_result(status, content_type, outcome.body.clone())
            .await;
        Some(if kept {
            ResultKept::Yes
        } else {
            ResultKept::No
        })
    };
    t.record_end(|r| {
        r.state = state;
        r.attempts = attempts;
        r.status = ran.then_some(status);
        r.next_attempt_at = due;
        r.result = result;
        if let Some((kind, reason)) = &dead {
            r.dead_kind = Some((*kind).to_owned());
            r.reason = Some(reason.clone());
        }
    })
    .await
}

/// Settles a call a client cancelled: acked, so it never runs (again), with no callback.
async fn settle_cancelled(shared: &Shared, msg: &jetstream::Message, env: &Envelope, when: &str) {
    shared.metrics.cancelled.increment(1);
    tracing::debug!(call_id = %env.call_id, function = %env.function, "call cancelled {when}");
    if let Err(error) = msg.ack().await {
        tracing::debug!(%error, "ack of a cancelled call failed; it is settled again when it returns");
        return;
    }
    if let Some(object) = &env.body_object {
        forget_body(shared, object).await;
    }
}

/// A call the function refused for want of room, and what it holds.
struct Held<'a> {
    attempt: Attempt,
    origin: (&'a str, u64),
    slot: Slot,
    refusal: Refusal,
    /// When it may run again, from now.
    delay: Duration,
}

/// The function said it is full (a refusal under adaptive control), or its limit came down
/// after the call took its slot: backpressure, not a failure.
/// The call goes back to wait for room, stored with the same attempt number (no attempt used, no
/// delivery counted), due at once or when the function's `Retry-After` says; its status is
/// `queued` again. A refusal at the limit's floor keeps the call's function slot for a pause, so
/// this replica sends the function nothing meanwhile.
async fn wait_again(
    shared: &Shared,
    func: &FunctionRt,
    msg: &jetstream::Message,
    env: &Envelope,
    mut tracked: Option<Tracked<'_>>,
    held: Held<'_>,
) {
    let Held {
        attempt,
        origin,
        slot,
        refusal,
        delay,
    } = held;
    match refusal {
        Refusal::Pause(pause) => slot.pause_function(pause),
        Refusal::Lowered => drop(slot),
    }
    if let Some(t) = tracked.as_mut()
        && t.record(|r| {
            r.state = CallState::Queued;
            r.next_attempt_at = None;
        })
        .await
            == Recorded::Cancelled
    {
        settle_cancelled(shared, msg, env, "while it waited for room").await;
        return;
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
async fn exhausted_hand_back(
    shared: &Shared,
    func: &FunctionRt,
    msg: &jetstream::Message,
    env: &Envelope,
    (attempt, origin, status_revision): (Attempt, (&str, u64), Option<u64>),
    exhausted: Exhausted,
) {
    shared.metrics.exhausted(exhausted).increment(1);
    if shared.budget.pause(EXHAUSTED_PAUSE) {
        tracing::error!(
            call_id = %env.call_id,
            function = %func.name,
            resource = exhausted.label(),
            in_flight_cap = shared.budget.cap(),
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
