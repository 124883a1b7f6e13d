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
use flotilla_queue::{Envelope, subjects};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::callback::{CallbackJob, Delivery};
use crate::dead;
use crate::pull::FunctionRt;
use crate::retry::{self, Next};

/// The pooled client to functions (plain HTTP/1.1: functions run next to the fleet).
pub(crate) type FunctionClient = Client<HttpConnector, Full<Bytes>>;

static X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
static X_START_TIME: HeaderName = HeaderName::from_static("x-start-time");

/// Which attempt of a call this is. A retry policy reads it to decide whether another
/// attempt is allowed.
///
/// Attempts are counted from the envelope (its attempt field, set when a failed attempt is
/// stored as a retry), never from JetStream's delivery count: a redelivery after a worker crash
/// or a hand-back repeats the interrupted attempt instead of starting a new one. So a crash never
/// uses up the retry budget, and `X-Retry` never exceeds `X-Retry-Max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts made before this message was published (the envelope's attempt: a re-published
    /// retry carries its count; a fresh or replayed call 0).
    pub earlier: u32,
    /// JetStream deliveries of this message, this one included (1 on the first).
    pub delivered: u32,
}

impl Attempt {
    /// The attempt number under the retry policy, starting at 1.
    pub fn number(&self) -> u32 {
        self.earlier.saturating_add(1)
    }

    /// Attempts made before this one (`X-Retry`).
    pub fn retries(&self) -> u32 {
        self.earlier
    }

    /// True when JetStream delivered this message before: an interrupted run of this same
    /// attempt may have reached the function.
    pub fn is_redelivery(&self) -> bool {
        self.delivered > 1
    }
}

/// Why a function gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection, a reset, or a broken response.
    #[error("function unreachable: {0}")]
    Unreachable(String),
    #[error("function did not answer within {0:?}")]
    Timeout(Duration),
    /// The envelope's method or URL cannot form a request; trying again cannot help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// JetStream delivered the message this many times and no run settled it (`--max-deliveries`):
    /// the function was not called again.
    #[error("delivered {0} times without settling: the worker crashed or lost the ack each time")]
    Redelivered(u32),
}

impl CallError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::InvalidRequest(_) | Self::Redelivered(_))
    }

    /// The status the outcome reports: 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// How one attempt of a call ended: what the callback receives and what a retry policy inspects.
#[derive(Debug)]
pub struct Outcome {
    /// The function's status, or 502/504 when it was unreachable or timed out.
    pub status: StatusCode,
    /// The function's response headers (empty when it gave no answer).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set when the function gave no answer.
    pub error: Option<CallError>,
    /// Time from sending the request to the end of the response body.
    pub duration: Duration,
    pub attempt: Attempt,
}

impl Outcome {
    pub(crate) fn failed(error: CallError, duration: Duration, attempt: Attempt) -> Self {
        let body = Bytes::from(error.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Self {
            status: error.status(),
            headers,
            body,
            error: Some(error),
            duration,
            attempt,
        }
    }

    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.status.is_success()
    }

    /// The function's `Retry-After`, in seconds or as an HTTP date (a past date is zero).
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        retry::parse_retry_after(v, std::time::SystemTime::now())
    }

    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.headers.get(CONTENT_TYPE)
    }
}

/// Calls the function once: the envelope's method, headers and body, plus `X-Call-Id` and
/// `X-Start-Time`, under `timeout` (which covers the response body too).
pub(crate) async fn invoke(
    client: &FunctionClient,
    url: &str,
    env: &Envelope,
    timeout: Duration,
    attempt: Attempt,
) -> Outcome {
    let started = Instant::now();
    let req = match build_request(url, env) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(e, started.elapsed(), attempt),
    };
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| CallError::Unreachable(format!("reading the response: {e}")))?
            .to_bytes();
        Ok::<_, CallError>((parts, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok((parts, body))) => Outcome {
            status: parts.status,
            headers: parts.headers,
            body,
            error: None,
            duration: started.elapsed(),
            attempt,
        },
        Ok(Err(e)) => Outcome::failed(e, started.elapsed(), attempt),
        Err(_) => Outcome::failed(CallError::Timeout(timeout), started.elapsed(), attempt),
    }
}

fn build_request(url: &str, env: &Envelope) -> Result<Request<Full<Bytes>>, CallError> {
    let method = Method::from_bytes(env.method.as_bytes())
        .map_err(|_| CallError::InvalidRequest(format!("method {:?}", env.method)))?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CallError::InvalidRequest(format!("url {url:?}: {e}")))?;
    let mut req = Request::new(Full::new(env.body.clone()));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.reserve(env.headers.len() + 2);
    for (k, v) in &env.headers {
        // The gateway only enqueues valid headers; anything else is skipped, not fatal.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&env.call_id) {
        h.insert(X_CALL_ID.clone(), v);
    }
    h.insert(
        X_START_TIME.clone(),
        HeaderValue::from(env.start_time as u64),
    );
    Ok(req)
}

/// The error and its sources on one line ("client error (Connect): tcp connect error: ...").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Runs `work` while sending a progress ack every `every`, so the message outlives `ack_wait`.
/// Returns `None`, leaving the message to the caller, when `abandon` fires first.
pub(crate) async fn keep_alive<F: Future>(
    msg: &jetstream::Message,
    every: Duration,
    abandon: &CancellationToken,
    work: F,
) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
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

/// The task of one call. `slot` is the function's per-replica concurrency slot; it is released
/// as soon as the function has answered and the callback (if any) is handed over, while the
/// message stays unacked until the outcome is settled: stored as a retry, dead-lettered, or
/// delivered to the callback.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    func: Arc<FunctionRt>,
    msg: jetstream::Message,
    slot: OwnedSemaphorePermit,
) {
    let (delivered, sequence) = match msg.info() {
        Ok(info) => {
            func.metrics.pending.set(info.pending as f64);
            (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
            )
        }
        Err(_) => (1, 0),
    };
    // The consumer filters on the function's subject, which is where the envelope's function is.
    let decoded = Envelope::from_nats(func.name.clone(), msg.headers.as_ref(), msg.payload.clone());
    let env = match decoded {
        Ok(env) => env,
        Err(e) => {
            dead::poison(&shared, &msg, func.shard, sequence, &e.to_string()).await;
            return;
        }
    };
    let _in_flight = InFlight::enter(&func.metrics.in_flight);
    let every = shared.progress_every;
    let attempt = Attempt {
        earlier: env.attempt,
        delivered,
    };
    let outcome = if delivered > shared.max_deliveries {
        // A crash loop: every earlier delivery ended without a settlement (the worker died, hung
        // until killed, or lost the ack). The function is not called again; the retry policy
        // sends this outcome to the dead letters and the callback gets it as the last failure.
        Outcome::failed(CallError::Redelivered(delivered), Duration::ZERO, attempt)
    } else {
        let url = join_url(&func.base_url, &env.path, &env.query);
        let work = invoke(&shared.http, &url, &env, func.policy.timeout, attempt);
        let Some(outcome) = keep_alive(&msg, every, &shared.hard, work).await else {
            hand_back(&shared, &msg).await;
            return;
        };
        func.metrics.call_done(outcome.status.as_u16());
        func.metrics.duration.record(outcome.duration.as_secs_f64());
        if let Some(error) = &outcome.error {
            tracing::debug!(call_id = %env.call_id, function = %env.function, attempt = attempt.number(), %error, "call failed");
        }
        shared.reports.send(&env, &outcome);
        outcome
    };
    let code = outcome.status.as_u16();

    let policy = &func.policy.retry;
    match retry::next(policy, &outcome, retry::jitter()) {
        Next::Settle => {}
        Next::Retry(delay) => {
            // The function is done with this attempt; storing the retry needs no slot.
            drop(slot);
            let stream = subjects::call_stream(func.shard);
            // Boxed, like the other rare branches: a call's task is allocated at the size of
            // its largest state, and every call pays for it.
            let stored = Box::pin(retry::schedule(
                &shared,
                func.shard,
                &env,
                attempt.number(),
                delay,
                &stream,
                sequence,
            ));
            match keep_alive(&msg, every, &shared.hard, stored).await {
                Some(Ok(())) => {
                    func.metrics.retries_scheduled.increment(1);
                    tracing::debug!(call_id = %env.call_id, function = %env.function, attempt = attempt.number(), status = code, ?delay, "retry scheduled");
                    if let Err(error) = msg.ack().await {
                        // The message returns after ack_wait and stores the same retry again,
                        // which JetStream drops as a duplicate (same Nats-Msg-Id).
                        tracing::debug!(%error, "ack after scheduling a retry failed");
                    }
                }
                Some(Err(error)) => {
                    // Degraded: NATS took no retry, so the message itself waits (holding its
                    // place in max_ack_pending) and this attempt runs again.
                    tracing::warn!(call_id = %env.call_id, function = %env.function, %error, "cannot store the retry; handing the call back with its delay");
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
                None => hand_back(&shared, &msg).await,
            }
            return;
        }
        Next::DeadLetter => {
            let written = Box::pin(dead::exhausted(
                &shared,
                &msg,
                func.shard,
                sequence,
                &outcome,
                policy.attempts,
            ));
            match keep_alive(&msg, every, &shared.hard, written).await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    tracing::warn!(call_id = %env.call_id, function = %env.function, %error, "cannot write the dead letter; handing the call back");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                    return;
                }
                None => {
                    hand_back(&shared, &msg).await;
                    return;
                }
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
        };
        // A full callback queue blocks in here while this call still holds its slot: pulling
        // slows down. Boxed: delivery's state would otherwise enlarge every call's task, callback
        // or not.
        let delivery = Box::pin(shared.callbacks.deliver(job, slot));
        match keep_alive(&msg, every, &shared.hard, delivery).await {
            Some(Some(Delivery::Delivered | Delivery::GaveUp)) => {}
            Some(None) | None => {
                hand_back(&shared, &msg).await;
                return;
            }
        }
    } else {
        drop(slot);
    }
    if let Err(error) = msg.ack().await {
        tracing::warn!(%error, "ack failed; the call will run again after ack_wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_from_the_envelope_not_redeliveries() {
        let a = Attempt {
            earlier: 0,
            delivered: 1,
        };
        assert_eq!((a.number(), a.retries(), a.is_redelivery()), (1, 0, false));
        // Redelivered twice after crashes: still the third attempt.
        let a = Attempt {
            earlier: 2,
            delivered: 3,
        };
        assert_eq!((a.number(), a.retries(), a.is_redelivery()), (3, 2, true));
    }

    #[test]
    fn failed_outcomes_report_502_and_504() {
        let a = Attempt {
            earlier: 0,
            delivered: 1,
        };
        let o = Outcome::failed(
            CallError::Timeout(Duration::from_secs(1)),
            Duration::ZERO,
            a,
        );
        assert_eq!(o.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(!o.is_success());
        let o = Outcome::failed(CallError::Unreachable("x".into()), Duration::ZERO, a);
        assert_eq!(o.status, StatusCode::BAD_GATEWAY);
        assert_eq!(o.content_type().unwrap(), "text/plain");
        assert!(o.body.starts_with(b"function unreachable"));
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut o = Outcome::failed(
            CallError::Unreachable("x".into()),
            Duration::ZERO,
            Attempt {
                earlier: 0,
                delivered: 1,
            },
        );
        assert_eq!(o.retry_after(), None);
        o.headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(o.retry_after(), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(later);
        o.headers
            .insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let d = o.retry_after().unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }
}
