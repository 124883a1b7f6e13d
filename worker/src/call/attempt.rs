//! One attempt at the function: the request built from the envelope and sent under the policy's
//! timeout while the message is kept alive with progress acks, and the guards that count a call
//! in flight however it ends.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use flotilla_queue::{Envelope, headers};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::functions::FunctionRt;
use crate::http1;
use crate::outcome::{Attempt, CallError, Exhausted, Outcome};

/// Calls the function once: the envelope's method, headers and body, plus `X-Call-Id` and
/// `X-Start-Time`, under `timeout` (which covers the response body too). `Err` when this worker
/// could not make the call for want of a local resource: that is no outcome of the function.
pub(super) async fn invoke(
    client: &http1::Client,
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

pub(super) fn build_request(url: &str, env: &Envelope) -> Result<http1::Request, CallError> {
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
pub(super) async fn keep_alive<F: Future + Unpin>(
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
pub(super) struct BatchRunning<'a> {
    tally: &'a flotilla_queue::batch::Tally,
    batch: &'a str,
}

impl<'a> BatchRunning<'a> {
    pub(super) fn enter(tally: &'a flotilla_queue::batch::Tally, batch: &'a str) -> Self {
        tally.count(batch, |c| c.running += 1);
        Self { tally, batch }
    }
}

impl Drop for BatchRunning<'_> {
    fn drop(&mut self) {
        self.tally
            .count(self.batch, |c| c.running = c.running.saturating_sub(1));
    }
}

/// Keeps `worker_in_flight` right however a call ends.
pub(super) struct InFlight<'a>(&'a metrics::Gauge);

impl<'a> InFlight<'a> {
    pub(super) fn enter(g: &'a metrics::Gauge) -> Self {
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The outcome of a call its function's `max_age` says is too old to start: only a call never
/// started (its first attempt, first delivery) expires; one that ran goes on.
pub(super) fn expired(func: &FunctionRt, env: &Envelope, attempt: Attempt) -> Option<Outcome> {
    let max_age = func.policy.max_age?;
    if attempt.earlier > 0 || attempt.is_redelivery() {
        return None;
    }
    let age_nanos = flotilla_queue::time::unix_nanos().saturating_sub(env.start_time);
    let age = Duration::from_nanos(u64::try_from(age_nanos).unwrap_or(u64::MAX));
    (age > max_age)
        .then(|| Outcome::failed(CallError::Expired { age, max_age }, Duration::ZERO, attempt))
}
