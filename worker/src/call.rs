//! One call, from the pulled message to its ack, as three steps: `prepare` (decode the envelope,
//! read a large body), `run` (start its status, call the function once under its timeout) and
//! `settle` (record how it ended, then store its retry, write its dead letter or deliver its
//! callback, and ack). Invariants: the message is acked only once the outcome and its callback
//! are settled, and kept alive with progress acks meanwhile (a numbered call that ends with only
//! its ack left hands record and ack to the status writer, which acks once the record is stored:
//! [`Later`]); the call's [`Slot`] is owned by the
//! step that holds it, and a step that ends the call early returns an [`End`] without it, so no
//! path keeps a slot past its step.

mod again;
mod attempt;
mod body;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use flotilla_queue::Envelope;
use flotilla_queue::policy::join_url;
use flotilla_queue::status::{self, CallState, ResultKept};

use crate::Shared;
use crate::adaptive::Refusal;
use crate::budget::Slot;
use crate::callback::CallbackJob;
use crate::dead;
use crate::functions::FunctionRt;
use crate::keys::{self, KeySlot};
use crate::outcome::{Attempt, CallError, Exhausted, Outcome};
use crate::retry::{self, Next};
use crate::status::{Begin, Later, Recorded, Tracked};
pub(crate) use again::hand_back;
use again::{Held, OnFailure, exhausted_hand_back, settle_step, wait_again};
use attempt::{BatchRunning, InFlight, expired, invoke, keep_alive};
use body::BodyMissing;

/// The task of one call. `slot` is the call's place in its function and in the replica; it is
/// released as soon as the function has answered and the callback (if any) is handed over (the
/// function's part of it at the answer when there is no callback), while the message stays
/// unacked until the outcome is settled: stored as a retry, dead-lettered, or delivered to the
/// callback.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    func: Arc<FunctionRt>,
    msg: jetstream::Message,
    slot: Slot,
) {
    // Only calls of a function under `key_concurrency` are claimed with a key slot.
    let claimed = func
        .policy
        .key_concurrency
        .and_then(|_| KeySlot::of_headers(msg.headers.as_ref()));
    let key_slot = match claimed {
        None => None,
        Some(held) => match renew_key_slot(&shared, &func, &msg, &held).await {
            Some(renewed) => Some(renewed),
            None => return,
        },
    };
    let call = Call::new(&shared, &func, &msg);
    if let Some(env) = call.prepare().await {
        match call.begin(&env, slot) {
            Ok((tracked, slot)) => call.lifecycle(&env, tracked, slot).await,
            Err(end) => call.finish(&env, end).await,
        }
    }
    if let Some(held) = key_slot {
        keys::release(&shared, &held).await;
        if let Some(token) = held.token() {
            func.lanes.freed(token);
        }
    }
}

/// Renews the key slot a claimed call carries as it starts, so the slot lives as long as the call
/// from now on. A call whose slot is gone (freed by a replica that handed the call back, or past
/// its time to live while the call waited) or held by another call now is parked under its key
/// again, to be claimed with a slot of its own; when NATS cannot tell, it is handed back.
async fn renew_key_slot(
    shared: &Shared,
    func: &FunctionRt,
    msg: &jetstream::Message,
    held: &KeySlot,
) -> Option<KeySlot> {
    match keys::renew(shared, held, func.policy.timeout).await {
        Ok(Some(renewed)) => Some(renewed),
        Ok(None) => {
            retry::park_again(shared, func, msg).await;
            None
        }
        Err(error) => {
            tracing::warn!(function = %func.name, %error, "cannot renew a call's key slot; handing it back");
            hand_back(shared, msg).await;
            None
        }
    }
}

/// How a call's steps ended. A step returning anything but [`End::Settled`] has let go of the
/// call's slot; [`Call::finish`] then does what is left.
#[derive(Debug)]
enum End {
    /// Nothing is left to do: settled and acked, handed back, or stored to run again.
    Settled,
    /// A client's cancel stopped it (`when` says where): acked, no callback.
    Cancelled(&'static str),
    /// The worker is stopping: the message goes back to NATS.
    HandBack,
    /// This worker ran out of a local resource before the function was reached.
    Exhausted {
        exhausted: Exhausted,
        status_revision: Option<u64>,
    },
}

/// What the end of an attempt leaves to do, and whether that still needs the call's slot.
#[derive(Debug)]
enum Settling {
    /// Stored as a retry: the function is done with this attempt, so no slot.
    Retry(Duration),
    /// Written to the dead letters, then its callback (which holds the slot).
    DeadLetter(Slot),
    /// Its callback, then the ack.
    Settle(Slot),
}

impl Settling {
    fn of(next: Next, slot: Slot) -> Self {
        match next {
            Next::Retry(delay) => Settling::Retry(delay),
            Next::DeadLetter => Settling::DeadLetter(slot),
            Next::Settle => Settling::Settle(slot),
        }
    }
}

/// One call's message and what every step needs to handle it.
struct Call<'a> {
    shared: &'a Arc<Shared>,
    func: &'a Arc<FunctionRt>,
    msg: &'a jetstream::Message,
    attempt_of_delivery: u32,
    /// The stream the message came from (the calls', or the waiting calls'), and its place there.
    origin: (&'a str, u64),
}

impl<'a> Call<'a> {
    fn new(
        shared: &'a Arc<Shared>,
        func: &'a Arc<FunctionRt>,
        msg: &'a jetstream::Message,
    ) -> Self {
        let (attempt_of_delivery, origin) = match msg.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                (info.stream, info.stream_sequence),
            ),
            Err(_) => (1, ("", 0)),
        };
        Self {
            shared,
            func,
            msg,
            attempt_of_delivery,
            origin,
        }
    }

    /// Step 1: the envelope, with its large body read from the object store. `None` when the
    /// call cannot run and is already settled (poison: dead-lettered) or handed back (the body
    /// could not be read now).
    async fn prepare(&self) -> Option<Envelope> {
        let (shared, msg) = (self.shared, self.msg);
        // The message's subject names the function, which is where the envelope's function is.
        let decoded = Envelope::from_nats(
            self.func.name.clone(),
            msg.headers.as_ref(),
            msg.payload.clone(),
        );
        let mut env = match decoded {
            Ok(env) => env,
            Err(e) => {
                // Boxed, like every rare branch: a call's task is allocated at the size of its
                // largest state, and every call pays for it.
                Box::pin(dead::poison(shared, msg, self.func.shard, &e.to_string())).await;
                return None;
            }
        };
        if let Some(object) = env.body_object.clone() {
            match Box::pin(body::fetch_body(shared, &object)).await {
                Ok(body) => env.body = body,
                Err(BodyMissing::Gone) => {
                    let reason = format!("its body ({object}) is no longer in the object store");
                    Box::pin(dead::poison(shared, msg, self.func.shard, &reason)).await;
                    return None;
                }
                Err(BodyMissing::Unreadable(error)) => {
                    tracing::warn!(call_id = %env.call_id, %error, object, "body not read from the object store; the call returns shortly");
                    let delay = Some(body::BODY_RETRY_AFTER);
                    let _ = msg.ack_with(jetstream::AckKind::Nak(delay)).await;
                    return None;
                }
            }
        }
        Some(env)
    }

    /// Which attempt this delivery of the call is.
    fn attempt_of(&self, env: &Envelope) -> Attempt {
        Attempt {
            earlier: env.attempt,
            delivered: self.attempt_of_delivery,
        }
    }

    /// The call's status from here on (`None` without call status); `Err` when a client
    /// cancelled it before it started, the slot let go.
    fn begin(&self, env: &'a Envelope, slot: Slot) -> Result<(Option<Tracked<'a>>, Slot), End> {
        let Some(status) = &self.shared.results.status else {
            return Ok((None, slot));
        };
        match status.begin(env, self.msg.headers.as_ref()) {
            Begin::Cancelled => Err(End::Cancelled("before it started")),
            Begin::Run(tracked) => Ok((Some(tracked), slot)),
        }
    }

    /// Steps 2 and 3 for a started call, holding its slot as long as they need it, then what an
    /// early end leaves to do; the call counts as in flight until all is done.
    async fn lifecycle(&self, env: &Envelope, mut tracked: Option<Tracked<'_>>, slot: Slot) {
        let _in_flight = InFlight::enter(&self.func.metrics.in_flight);
        let attempt = self.attempt_of(env);
        if let Some(batch) = env.batch_id.as_deref()
            && attempt.earlier > 0
        {
            self.shared
                .results
                .tally
                .count(batch, |c| c.retries_started += 1);
        }
        let end = match self.run(env, attempt, &mut tracked, slot).await {
            Ok((outcome, slot)) => self.settle(env, attempt, tracked, outcome, slot).await,
            Err(end) => end,
        };
        self.finish(env, end).await;
    }

    /// Step 2: the call's one attempt, or the outcome that stands for it when it must not run
    /// (a crash loop, too old). `Err` when the attempt did not end in an answer to settle.
    async fn run(
        &self,
        env: &Envelope,
        attempt: Attempt,
        tracked: &mut Option<Tracked<'_>>,
        slot: Slot,
    ) -> Result<(Outcome, Slot), End> {
        if attempt.delivered > self.shared.settings.max_deliveries {
            // A crash loop: every earlier delivery ended without a settlement (the worker died,
            // hung until killed, or lost the ack). The function is not called again; the retry
            // policy sends this outcome to the dead letters and the callback gets it as the last
            // failure.
            let redelivered = CallError::Redelivered(attempt.delivered);
            return Ok((Outcome::failed(redelivered, Duration::ZERO, attempt), slot));
        }
        if let Some(expired) = expired(self.func, env, attempt) {
            // Too old to matter: never started, dead-lettered as `expired`, a 410 to the
            // callback.
            return Ok((expired, slot));
        }
        self.attempt(env, attempt, tracked, slot).await
    }

    /// Calls the function once, counted at the function for adaptive control, and reads its
    /// answer: a refusal sends the call back to wait for room.
    async fn attempt(
        &self,
        env: &Envelope,
        attempt: Attempt,
        tracked: &mut Option<Tracked<'_>>,
        mut slot: Slot,
    ) -> Result<(Outcome, Slot), End> {
        let (shared, func) = (self.shared, self.func);
        let url = join_url(&func.base_url, &env.path, &env.query);
        let _running = env
            .batch_id
            .as_deref()
            .map(|b| BatchRunning::enter(&shared.results.tally, b));
        let Some(at_function) = func.sending() else {
            // Its function's limit came down after this call took its slot: it waits again
            // rather than be refused.
            return Err(self
                .wait_again(
                    env,
                    attempt,
                    tracked,
                    slot,
                    Refusal::Lowered,
                    Duration::ZERO,
                )
                .await);
        };
        let ran = {
            // Pinned where they are (not moved into the futures that run them, which would hold
            // them twice) and dropped as soon as the attempt ends: a cancel while it runs drops
            // `invoked`, which aborts the function's request.
            let invoked = std::pin::pin!(invoke(
                &shared.calls.http,
                &url,
                env,
                func.policy.timeout,
                attempt
            ));
            let work = std::pin::pin!(async {
                match tracked.as_mut() {
                    Some(t) => t.run(attempt.earlier, invoked).await,
                    None => Some(invoked.await),
                }
            });
            keep_alive(
                self.msg,
                shared.settings.progress_every,
                &shared.life.hard,
                work,
            )
            .await
        };
        let outcome = match ran {
            Some(Some(Ok(outcome))) => outcome,
            Some(None) => return Err(End::Cancelled("while it ran")),
            Some(Some(Err(exhausted))) => {
                let status_revision = tracked.as_ref().and_then(Tracked::revision);
                return Err(End::Exhausted {
                    exhausted,
                    status_revision,
                });
            }
            None => return Err(End::HandBack),
        };
        if let Some(refusal) = at_function.answered(&outcome) {
            func.metrics.call_done(outcome.status.as_u16());
            tracing::debug!(call_id = %env.call_id, function = %func.name, status = outcome.status.as_u16(), "refused for want of room; waiting again");
            // The function may say when to come back.
            let delay = outcome
                .retry_after()
                .map_or(Duration::ZERO, |d| d.min(retry::RETRY_AFTER_CAP));
            return Err(self
                .wait_again(env, attempt, tracked, slot, refusal, delay)
                .await);
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
        shared.results.reports.send(env, &outcome);
        Ok((outcome, slot))
    }

    /// The function had no room for the call: it goes back to wait, keeping its attempt.
    async fn wait_again(
        &self,
        env: &Envelope,
        attempt: Attempt,
        tracked: &mut Option<Tracked<'_>>,
        slot: Slot,
        refusal: Refusal,
        delay: Duration,
    ) -> End {
        let held = Held {
            attempt,
            origin: self.origin,
            slot,
            refusal,
            delay,
        };
        // Boxed, like the other rare branches: a call's task is allocated at the size of its
        // largest state, and every call pays for it.
        let waited = Box::pin(wait_again(
            self.shared,
            self.func,
            self.msg,
            env,
            tracked.take(),
            held,
        ));
        match waited.await {
            Recorded::Cancelled => End::Cancelled("while it waited for room"),
            Recorded::Done => End::Settled,
        }
    }

    /// Step 3: records how the attempt ended, then stores the retry, or writes the dead letter
    /// and delivers the callback, and acks. The state is recorded before the step it names
    /// (retry stored, dead letter written, callback sent): a client's cancel that got in first
    /// stops that step.
    async fn settle(
        &self,
        env: &Envelope,
        attempt: Attempt,
        tracked: Option<Tracked<'_>>,
        outcome: Outcome,
        slot: Slot,
    ) -> End {
        let next = retry::next(&self.func.policy.retry, &outcome, retry::jitter());
        let mut status_revision = None;
        if let Some(mut t) = tracked {
            let ending = Box::pin(Ending::of(&t, self.func, &outcome, &next)).await;
            // The common end (a final answer, nothing to deliver) is left to the status writer,
            // which acks once the record is stored.
            if matches!(next, Next::Settle)
                && env.callback_url.is_none()
                && env.body_object.is_none()
                && let Some(status) = &self.shared.results.status
            {
                match t.later(status.clone()).await {
                    Ok(later) => {
                        self.end_later(env, later, ending);
                        return End::Settled;
                    }
                    Err(back) => t = back,
                }
            }
            if t.record_end(|r| ending.apply(r)).await == Recorded::Cancelled {
                return End::Cancelled("before it ended");
            }
            status_revision = t.revision();
            // No longer followed for cancels: from here on the call's end is recorded.
        }
        if let Some(batch) = env.batch_id.as_deref() {
            match end_state(&outcome, &next) {
                CallState::Retrying => self
                    .shared
                    .results
                    .tally
                    .count(batch, |c| c.retries_stored += 1),
                end => self.shared.results.tally.ended(batch, end),
            }
        }
        let slot = match Settling::of(next, slot) {
            Settling::Retry(delay) => {
                let code = outcome.status.as_u16();
                let retry =
                    Box::pin(self.store_retry(env, (attempt, code), delay, status_revision));
                retry.await;
                return End::Settled;
            }
            Settling::DeadLetter(slot) => {
                if !Box::pin(self.write_dead_letter(env, &outcome)).await {
                    return End::Settled;
                }
                slot
            }
            Settling::Settle(slot) => slot,
        };
        let dead_lettered = matches!(next, Next::DeadLetter);
        if !self.deliver(env, attempt, outcome, slot).await {
            return End::Settled;
        }
        if let Err(error) = self.msg.ack().await {
            tracing::warn!(%error, "ack failed; the call will run again after ack_wait");
            return End::Settled;
        }
        self.func.settled();
        // Settled: its body is needed no more, unless its dead letter may be replayed.
        if !dead_lettered && let Some(object) = &env.body_object {
            // Boxed: only calls with large bodies take this step.
            Box::pin(body::forget_body(self.shared, object)).await;
        }
        End::Settled
    }

    /// Settles a call whose end goes to its status page, with nothing to deliver: the status
    /// writer stores the end, then acks (or, when a client's cancel was stored first, settles
    /// it as cancelled). The call's task and slot end here.
    fn end_later(&self, env: &Envelope, later: Later, ending: Ending) {
        let (shared, func) = (self.shared.clone(), self.func.clone());
        let (client, reply) = (self.msg.context.client(), self.msg.reply.clone());
        let batch = env.batch_id.clone();
        let state = ending.state;
        // A draining replica waits for these acks as for its calls.
        let pending = shared.life.tracker.token();
        later.end(
            move |r| ending.apply(r),
            move |recorded| {
                Box::pin(async move {
                    let _pending = pending;
                    let Some(reply) = reply else { return };
                    if recorded == Recorded::Cancelled {
                        shared.metrics.cancelled.increment(1);
                        tracing::debug!(ack = %reply, "call cancelled before it ended");
                    } else if let Some(batch) = batch.as_deref() {
                        shared.results.tally.ended(batch, state);
                    }
                    if let Err(error) = client.publish(reply.clone(), bytes::Bytes::new()).await {
                        tracing::warn!(%error, ack = %reply, "ack failed; the call will run again after ack_wait");
                        return;
                    }
                    if recorded == Recorded::Done {
                        func.settled();
                    }
                })
            },
        );
    }

    /// Stores the call's next attempt, due after `delay`, and acks this one. When NATS takes no
    /// retry, the message itself waits out the delay (holding its place in max_ack_pending) and
    /// this attempt runs again.
    async fn store_retry(
        &self,
        env: &Envelope,
        (attempt, code): (Attempt, u16),
        delay: Duration,
        status_revision: Option<u64>,
    ) {
        let stored = Box::pin(retry::schedule(
            self.shared,
            self.func.shard,
            env,
            attempt.number(),
            delay,
            self.origin,
            status_revision,
        ));
        let on_failure = OnFailure::Nak {
            step: "store the retry",
            env,
            delay,
        };
        if settle_step(self.shared, self.msg, on_failure, stored)
            .await
            .is_some()
        {
            self.func.metrics.retries_scheduled.increment(1);
            tracing::debug!(call_id = %env.call_id, function = %env.function, attempt = attempt.number(), status = code, ?delay, "retry scheduled");
            if let Err(error) = self.msg.ack().await {
                // The message returns after ack_wait and stores the same retry again, which
                // JetStream drops as a duplicate (same Nats-Msg-Id).
                tracing::debug!(%error, "ack after scheduling a retry failed");
            }
        }
    }

    /// Writes the call's dead letter; false when it was not written and the message went back.
    async fn write_dead_letter(&self, env: &Envelope, outcome: &Outcome) -> bool {
        let written = Box::pin(dead::exhausted(
            self.shared,
            self.msg,
            self.func.shard,
            self.origin,
            outcome,
            self.func.policy.retry.attempts,
        ));
        let on_failure = OnFailure::Nak {
            step: "write the dead letter",
            env,
            delay: Duration::from_secs(5),
        };
        settle_step(self.shared, self.msg, on_failure, written)
            .await
            .is_some()
    }

    /// Hands the outcome to the callback queue, which takes the slot; without a callback the
    /// slot goes back here. False when the worker is stopping and the message went back.
    async fn deliver(
        &self,
        env: &Envelope,
        attempt: Attempt,
        outcome: Outcome,
        slot: Slot,
    ) -> bool {
        let Some(url) = env.callback_url.clone() else {
            return true;
        };
        let retry_max = self.func.policy.retry.attempts.saturating_sub(1);
        let job = CallbackJob {
            url,
            call_id: env.call_id.clone(),
            function: env.function.clone(),
            status: outcome.status.as_u16(),
            content_type: outcome.content_type().cloned(),
            body: outcome.body,
            duration: outcome.duration,
            start_time: env.start_time,
            // A call replayed or re-published under a lowered budget may have made more.
            retry: attempt.retries().min(retry_max),
            retry_max,
            signer: self.shared.calls.signers.for_policy(&self.func.policy),
        };
        // A full callback queue blocks in here while this call still holds its slot: pulling
        // slows down. Boxed: delivery's state would otherwise enlarge every call's task, callback
        // or not. `None` from delivery means the worker is stopping: hand the call back.
        let callbacks = &self.shared.results.callbacks;
        let delivery = Box::pin(async { callbacks.deliver(job, slot).await.ok_or("stopping") });
        let step = settle_step(self.shared, self.msg, OnFailure::HandBack, delivery);
        Box::pin(step).await.is_some()
    }

    /// Does what an early end leaves to do, once the call's slot is released.
    async fn finish(&self, env: &Envelope, end: End) {
        match end {
            End::Settled => {}
            End::Cancelled(when) => {
                Box::pin(settle_cancelled(self.shared, self.msg, env, when)).await;
            }
            End::HandBack => hand_back(self.shared, self.msg).await,
            End::Exhausted {
                exhausted,
                status_revision,
            } => {
                let at = (self.attempt_of(env), self.origin, status_revision);
                Box::pin(exhausted_hand_back(
                    self.shared,
                    self.func,
                    self.msg,
                    env,
                    at,
                    exhausted,
                ))
                .await;
            }
        }
    }
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

/// How the attempt ended, as its record says: `retrying` with its due time, or the final state
/// (`succeeded`, `failed`, `dead`) with the answer kept when the function's policy keeps results.
struct Ending {
    state: CallState,
    attempts: u32,
    status: Option<u16>,
    due: Option<u128>,
    result: Option<ResultKept>,
    dead: Option<(&'static str, String)>,
}

impl Ending {
    /// Keeps the answer first, when the function's policy keeps results.
    async fn of(t: &Tracked<'_>, func: &FunctionRt, outcome: &Outcome, next: &Next) -> Self {
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
        Self {
            state,
            attempts: outcome.attempts_made(),
            status: ran.then_some(status),
            due,
            result,
            dead,
        }
    }

    fn apply(&self, r: &mut status::Record) {
        r.state = self.state;
        r.attempts = self.attempts;
        r.status = self.status;
        r.next_attempt_at = self.due;
        r.result = self.result;
        if let Some((kind, reason)) = &self.dead {
            r.dead_kind = Some((*kind).to_owned());
            r.reason = Some(reason.clone());
        }
    }
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
        body::forget_body(shared, object).await;
    }
}

#[cfg(test)]
mod tests;
