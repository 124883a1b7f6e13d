//! Retries: what the retry policy says after a failed attempt, and where a retry waits. A failed
//! call is re-published to its shard's retry subject with its due time and the original message is
//! acked, so the wait holds no function slot and no place in the function's `max_ack_pending`; one
//! durable consumer per shard holds the waiting retries (a `Nak` with the remaining delay counts
//! against its own, large, `max_ack_pending`) and moves each to its function's wait subject when it
//! is due. Everything waits in JetStream, so a worker crash loses nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::stream::ConsumerError;
use async_nats::jetstream::{self, AckKind};
use flotilla_queue::envelope::H_RETRY_AT;
use flotilla_queue::headers::NATS_MESSAGE_ID;
use flotilla_queue::status;
use flotilla_queue::{
    Backoff, Envelope, FairnessKey, Jitter, Priority, RetryPolicy, fairness, subjects, time,
};
use futures_util::StreamExt;
use http::StatusCode;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::Shared;
use crate::dead;
use crate::functions::FunctionRt;
use crate::outcome::{CallError, Outcome};

/// The longest `Retry-After` honoured. A function asking for more is waited on this long: a
/// header saying "come back tomorrow" is more likely a bug than a plan, and a call waiting a
/// day serves nobody.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(10 * 60);
/// A retry delivered this close to its due time is treated as due: NATS' redelivery timer is not
/// exact, and a second short `Nak` would only add a round trip.
const DUE_SLACK: Duration = Duration::from_millis(5);
/// Due retries moved to their wait subjects at once per shard (each waits for a PubAck).
const MOVE_CONCURRENCY: usize = 64;
/// Retry messages requested per pull.
const PULL_BATCH: usize = 512;
/// How often the retry consumer is asked how many retries wait (`worker_retries_waiting`).
const INFO_EVERY: Duration = Duration::from_secs(2);
/// Wait before restarting a retry loop that failed (NATS unavailable, consumer deleted).
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// Wait before a due retry whose move failed is tried again.
const MOVE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the retry policy says after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The outcome is final: a success, or an answer the policy does not retry (a 404 is the
    /// function's answer, not a failure of delivery).
    Settle,
    /// Try again after this delay.
    Retry(Duration),
    /// A failure that no further attempt may fix: the attempts are used up, or the request
    /// could not even be formed. The call goes to the dead letters.
    DeadLetter,
}

/// Decides what follows an attempt. `jitter` is a number in [0, 1).
pub(crate) fn next(policy: &RetryPolicy, outcome: &Outcome, jitter: f64) -> Next {
    if outcome.is_success() {
        return Next::Settle;
    }
    let retryable = match &outcome.error {
        Some(
            CallError::InvalidRequest(_) | CallError::Redelivered(_) | CallError::Expired { .. },
        ) => return Next::DeadLetter,
        // Unreachable (502) or past its timeout (504).
        Some(CallError::Unreachable(_) | CallError::Timeout(_)) => policy.retry_unreachable,
        None => policy.statuses.contains(&outcome.status.as_u16()),
    };
    if !retryable {
        return Next::Settle;
    }
    let number = outcome.attempt.number();
    if number >= policy.attempts {
        return Next::DeadLetter;
    }
    let mut delay = backoff(policy).delay_at(number, jitter);
    if matches!(
        outcome.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(after) = outcome.retry_after()
    {
        delay = delay.max(after.min(RETRY_AFTER_CAP));
    }
    Next::Retry(delay)
}

/// The policy's backoff: exponential with full jitter above a floor. The wait before retry `n`
/// (1 for the first retry, counted as the attempts made) is uniform between `min_backoff` and
/// `min(max_backoff, min_backoff * 2^n)`, so even the first retry spreads over `[min, 2 min]`.
/// The floor keeps a function some rest however the dice fall; the jitter spreads the retries of
/// calls that failed together (a function that fell over under load is not hit again all at once).
pub(crate) fn backoff(policy: &RetryPolicy) -> Backoff {
    Backoff::new(policy.min_backoff, policy.max_backoff, Jitter::Full)
}

/// A number in [0, 1) for jitter; not for anything secret.
pub(crate) fn jitter() -> f64 {
    fastrand::f64()
}

/// `Nats-Msg-Id` of a message derived from stream message `sequence` of `stream` (a retry
/// scheduled from a failed call, or a due retry moved back). Stream sequences are never reused,
/// so unlike the call id (which a replay reuses) this never drops a message that is not a repeat,
/// while a worker that crashes between the publish and the ack publishes once.
pub(crate) fn dedup_id(kind: &str, stream: &str, sequence: u64) -> String {
    format!("{kind}-{stream}-{sequence}")
}

/// The durable consumer of a shard's waiting retries, shared by its replicas.
pub(crate) fn consumer_config(
    shard: u32,
    ack_wait: Duration,
    max_waiting: u32,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::RETRY_CONSUMER.to_owned()),
        description: Some(format!("Flotilla retries waiting in shard {shard}")),
        // `flotilla.retry.<k>.>` never overlaps `flotilla.call.<k>.<function>`, as the work-queue
        // stream requires.
        filter_subject: subjects::retry_wildcard(shard),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        // Every retry waiting for its due time is pending here: this is how many may wait at
        // once before later ones wait, undelivered, in the stream (and so become due late).
        max_ack_pending: i64::from(max_waiting),
        ..Default::default()
    }
}

/// Why a retry loop stopped; its supervisor restarts it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RetryLoopError {
    #[error("opening the retry consumer: {0}")]
    Consumer(#[source] ConsumerError),
    #[error("pulling retries: {0}")]
    Subscribe(#[source] consumer::StreamError),
    #[error("pulling retries: {0}")]
    Pull(#[source] consumer::pull::MessagesError),
    #[error("pulling retries: the message stream ended")]
    Ended,
}

/// Why a failed attempt could not be stored as a waiting retry; the call hands its message back
/// with the delay instead.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("storing the retry: {0}")]
    Publish(#[from] PublishError),
}

/// Runs the retry loop of `shard` until the worker stops, restarting it after failures.
pub(crate) async fn supervise(shared: Arc<Shared>, shard: u32) {
    let waiting = shared.metrics.retries_waiting(shard);
    loop {
        match run(&shared, shard, &waiting).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(shard, %error, "retry loop failed; restarting"),
        }
        tokio::select! {
            _ = shared.life.stop.cancelled() => return,
            _ = tokio::time::sleep(RESTART_AFTER) => {}
        }
    }
}

async fn run(
    shared: &Arc<Shared>,
    shard: u32,
    waiting: &metrics::Gauge,
) -> Result<(), RetryLoopError> {
    let stream_name = subjects::call_stream(shard);
    let config = consumer_config(
        shard,
        shared.settings.ack_wait,
        shared.settings.retry_max_waiting,
    );
    let consumer: PullConsumer = shared
        .nats
        .js
        .create_consumer_on_stream(config, stream_name.as_str())
        .await
        .map_err(RetryLoopError::Consumer)?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(RetryLoopError::Subscribe)?;
    let moves = Arc::new(Semaphore::new(MOVE_CONCURRENCY));
    let due_total = shared.metrics.retries_due(shard);
    let mut info_tick = tokio::time::interval(INFO_EVERY);
    info_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::debug!(shard, "retry loop pulling");
    loop {
        tokio::select! {
            biased;
            _ = shared.life.stop.cancelled() => return Ok(()),
            m = messages.next() => {
                let msg = match m {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                        tracing::debug!(shard, error = %e, "retry pull heartbeat missed");
                        continue;
                    }
                    Some(Err(e)) => return Err(RetryLoopError::Pull(e)),
                    None => return Err(RetryLoopError::Ended),
                };
                let sequence = msg.info().map_or(0, |i| i.stream_sequence);
                match classify(&msg, shard, time::unix_nanos()) {
                    Waiting::NotYet(remaining) => {
                        // Fire and forget: a lost nak only brings the retry back after ack_wait.
                        let _ = msg.ack_with(AckKind::Nak(Some(remaining))).await;
                    }
                    Waiting::Due(env) => {
                        due_total.increment(1);
                        let Ok(permit) = moves.clone().acquire_owned().await else {
                            return Ok(());
                        };
                        let shared2 = shared.clone();
                        let stream_name = stream_name.clone();
                        shared.life.tracker.spawn(async move {
                            move_due(&shared2, msg, *env, shard, &stream_name, sequence).await;
                            drop(permit);
                        });
                    }
                    Waiting::Poison(reason) => {
                        let shared2 = shared.clone();
                        shared.life.tracker.spawn(async move {
                            dead::poison(&shared2, &msg, shard, &reason).await;
                        });
                    }
                }
            }
            _ = info_tick.tick() => {
                match consumer.get_info().await {
                    Ok(info) => {
                        waiting.set((info.num_pending + info.num_ack_pending as u64) as f64);
                    }
                    Err(error) => tracing::debug!(shard, %error, "retry consumer info"),
                }
            }
        }
    }
}

/// What a pulled retry message is.
#[derive(Debug)]
enum Waiting {
    /// Due in this long.
    NotYet(Duration),
    /// Due: move it to its wait subject.
    Due(Box<Envelope>),
    /// Not a retry this worker can move; dead-letter it with this reason.
    Poison(String),
}

fn classify(msg: &jetstream::Message, shard: u32, now: u128) -> Waiting {
    let Some(function) = subjects::function_of_retry_subject(shard, &msg.subject) else {
        return Waiting::Poison(format!(
            "retry subject {} names no valid function",
            msg.subject
        ));
    };
    let due = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(H_RETRY_AT))
        .map(|v| v.as_str().parse::<u128>());
    let due = match due {
        None => return Waiting::Poison(format!("retry has no {H_RETRY_AT} header")),
        Some(Err(_)) => return Waiting::Poison(format!("retry header {H_RETRY_AT} is malformed")),
        Some(Ok(due)) => due,
    };
    let env = match Envelope::from_nats(function, msg.headers.as_ref(), msg.payload.clone()) {
        Ok(env) => env,
        Err(e) => return Waiting::Poison(e.to_string()),
    };
    let remaining =
        Duration::from_nanos(u64::try_from(due.saturating_sub(now)).unwrap_or(u64::MAX));
    if remaining > DUE_SLACK {
        Waiting::NotYet(remaining)
    } else {
        Waiting::Due(Box::new(env))
    }
}

/// Publishes a due retry to its function's wait subject (the lane of its priority), waits for the PubAck, then acks it.
/// The function's wait loop (started by discovery when it finds the call there) runs it, at the
/// function's concurrency and rate like any call waiting for room. Not the call subject: only
/// the gateway takes calls in, so a worker's NATS user needs no right to publish calls.
async fn move_due(
    shared: &Shared,
    msg: jetstream::Message,
    env: Envelope,
    shard: u32,
    stream: &str,
    sequence: u64,
) {
    let id = dedup_id("due", stream, sequence);
    let (mut headers, body) = env.to_nats(Some(&id));
    if let Some(revision) = status::revision_of(msg.headers.as_ref()) {
        headers.insert(status::REVISION_HEADER, revision.to_string().as_str());
    }
    // A keyed call waits under its key again; discovery adds the key to the workers' rings.
    let token = env.fairness_key.as_ref().map(FairnessKey::token);
    let subject = subjects::waiting_subject(shard, &env.function, env.priority, token.as_deref());
    match relay(shared, &msg, subject, headers, body, MOVE_RETRY_AFTER).await {
        Ok(()) => {
            tracing::debug!(call_id = %env.call_id, function = %env.function, attempt = env.attempt + 1, "retry due; queued again");
        }
        Err(error) => {
            tracing::warn!(call_id = %env.call_id, function = %env.function, %error, "cannot queue a due retry; trying again");
        }
    }
}

/// Parks a call claimed with a key slot it no longer holds under its key again, without the
/// slot, and acks it once JetStream holds the copy.
pub(crate) async fn park_again(shared: &Shared, f: &FunctionRt, msg: &jetstream::Message) {
    let headers = msg.headers.as_ref();
    let (priority, key) = (
        Priority::of_headers(headers),
        FairnessKey::of_headers(headers),
    );
    let token = fairness::token_of(key.as_ref());
    let (stream, sequence) = msg
        .info()
        .map_or(("", 0), |i| (i.stream, i.stream_sequence));
    let mut copied = async_nats::HeaderMap::new();
    for (name, values) in dead::copied_headers(headers).iter() {
        let name: &str = name.as_ref();
        if name != flotilla_queue::headers::FLOTILLA_KEY_SLOT {
            for v in values {
                copied.append(name, v.as_str());
            }
        }
    }
    copied.insert(NATS_MESSAGE_ID, dedup_id("park", stream, sequence).as_str());
    let subject = subjects::park_subject(f.shard, &f.name, priority, &token);
    let payload = msg.payload.clone();
    match relay(shared, msg, subject, copied, payload, MOVE_RETRY_AFTER).await {
        Ok(()) => f.lanes.park(priority, &token),
        Err(error) => {
            tracing::warn!(function = %f.name, %error, "cannot park a call again; it returns");
        }
    }
}

/// Publishes `msg`'s successor (a due retry queued again, a call moved to wait) and acks `msg`
/// once JetStream holds it; when the publish fails, `msg` comes back after `retry_after`. The
/// successor's `Nats-Msg-Id` must derive from `msg`'s stream sequence: when the ack is lost, `msg`
/// returns, is relayed again, and JetStream drops the second copy as a duplicate.
pub(crate) async fn relay(
    shared: &Shared,
    msg: &jetstream::Message,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
    retry_after: Duration,
) -> Result<(), PublishError> {
    let sent = shared
        .nats
        .js
        .publish_with_headers(subject, headers, body)
        .await;
    relayed(msg, sent, retry_after).await
}

/// The rest of [`relay`] once the successor is `sent`: waits for JetStream to hold it, then acks
/// `msg`, or has it come back after `retry_after`.
pub(crate) async fn relayed(
    msg: &jetstream::Message,
    sent: Result<PublishAckFuture, PublishError>,
    retry_after: Duration,
) -> Result<(), PublishError> {
    let published = match sent {
        Ok(ack) => ack.await,
        Err(error) => Err(error),
    };
    match published {
        Ok(_) => {
            if let Err(error) = msg.ack().await {
                tracing::debug!(%error, "ack of a relayed message failed; it returns and is de-duplicated");
            }
            Ok(())
        }
        Err(error) => {
            let _ = msg.ack_with(AckKind::Nak(Some(retry_after))).await;
            Err(error)
        }
    }
}

/// Stores a failed attempt as a waiting retry: the same envelope with its attempt field set to
/// the attempts made, `Flotilla-Retry-At` to the due time and `Flotilla-Status-Rev` to its status
/// record's sequence when known, under the function's retry subject, de-duplicated on the failed
/// message's stream sequence. Returns once JetStream holds it.
pub(crate) async fn schedule(
    shared: &Shared,
    shard: u32,
    env: &Envelope,
    attempts_made: u32,
    delay: Duration,
    (stream, sequence): (&str, u64),
    status_revision: Option<u64>,
) -> Result<(), ScheduleError> {
    let mut env = env.clone();
    env.attempt = attempts_made;
    let id = dedup_id("retry", stream, sequence);
    let (mut headers, body) = env.to_nats(Some(&id));
    let due = time::unix_nanos() + delay.as_nanos();
    headers.insert(H_RETRY_AT, due.to_string().as_str());
    if let Some(revision) = status_revision {
        headers.insert(status::REVISION_HEADER, revision.to_string().as_str());
    }
    shared
        .nats
        .js
        .publish_with_headers(subjects::retry_subject(shard, &env.function), headers, body)
        .await?
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Attempt;
    use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            statuses: vec![408, 429, 500, 502, 503, 504],
            retry_unreachable: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    fn answered(status: u16, earlier: u32) -> Outcome {
        Outcome {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
            error: None,
            duration: Duration::ZERO,
            attempt: Attempt {
                earlier,
                delivered: 1,
            },
        }
    }

    #[test]
    fn backoff_follows_the_policy_from_the_first_retry() {
        let p = policy();
        let b = backoff(&p);
        assert_eq!(b.delay_at(1, 0.0), Duration::from_millis(100));
        let top = b.delay_at(1, 0.999);
        assert!(top > Duration::from_millis(199) && top < Duration::from_millis(200));
        assert_eq!(b.delay_at(2, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay_at(30, 1.0), Duration::from_secs(1));
        for n in 1..40 {
            let d = b.delay_at(n, jitter());
            assert!(d >= p.min_backoff && d <= p.max_backoff, "{n}: {d:?}");
        }
    }

    #[test]
    fn statuses_and_attempts_decide() {
        let p = policy();
        assert_eq!(next(&p, &answered(200, 0), 0.0), Next::Settle);
        assert_eq!(next(&p, &answered(404, 0), 0.0), Next::Settle);
        assert_eq!(
            next(&p, &answered(503, 0), 0.0),
            Next::Retry(Duration::from_millis(100))
        );
        assert!(matches!(next(&p, &answered(500, 1), 0.0), Next::Retry(_)));
        assert_eq!(next(&p, &answered(500, 2), 0.0), Next::DeadLetter);
        // A replayed or re-published call past a lowered budget ends at once.
        assert_eq!(next(&p, &answered(500, 7), 0.0), Next::DeadLetter);
        let one = RetryPolicy {
            attempts: 1,
            ..policy()
        };
        assert_eq!(next(&one, &answered(500, 0), 0.0), Next::DeadLetter);
    }

    #[test]
    fn transport_failures_follow_retry_unreachable() {
        let attempt = Attempt {
            earlier: 0,
            delivered: 1,
        };
        let timeout = Outcome::failed(
            CallError::Timeout(Duration::from_secs(1)),
            Duration::ZERO,
            attempt,
        );
        assert_eq!(timeout.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(matches!(next(&policy(), &timeout, 0.0), Next::Retry(_)));
        let no = RetryPolicy {
            retry_unreachable: false,
            ..policy()
        };
        assert_eq!(next(&no, &timeout, 0.0), Next::Settle);
        let invalid = Outcome::failed(
            CallError::InvalidRequest(crate::http1::RequestError::Method("x".into())),
            Duration::ZERO,
            attempt,
        );
        assert_eq!(next(&policy(), &invalid, 0.0), Next::DeadLetter);
        // A crash loop is never retried, whatever the policy says about unreachable functions.
        let looped = Outcome::failed(CallError::Redelivered(21), Duration::ZERO, attempt);
        assert_eq!(next(&no, &looped, 0.0), Next::DeadLetter);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_and_capped() {
        let p = policy();
        let mut o = answered(429, 0);
        o.headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(next(&p, &o, 0.0), Next::Retry(Duration::from_secs(2)));
        o.headers
            .insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(next(&p, &o, 0.0), Next::Retry(RETRY_AFTER_CAP));
        // Shorter than the backoff: the backoff wins.
        o.headers.insert(RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(next(&p, &o, 0.0), Next::Retry(Duration::from_millis(100)));
        // Only 429 and 503 carry a meaningful Retry-After.
        let mut o = answered(500, 0);
        o.headers
            .insert(RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(next(&p, &o, 0.0), Next::Retry(Duration::from_millis(100)));
    }

    #[test]
    fn retry_consumer_cannot_overlap_function_consumers() {
        let c = consumer_config(2, Duration::from_secs(30), 100_000);
        assert_eq!(c.filter_subject, "flotilla.retry.2.>");
        assert!(!c.filter_subject.starts_with(subjects::CALL_SUBJECT_PREFIX));
        assert_eq!(c.max_ack_pending, 100_000);
        assert_eq!(c.max_deliver, -1);
    }
}
