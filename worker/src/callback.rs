//! Callback delivery, in the call's own task: a callback first takes a place in a bounded queue
//! (`--callback-queue`), then a delivery permit (`--callback-concurrency`), and is POSTed with its
//! own timeout and a few retries. A full queue makes calls wait while they still hold their
//! function slot (backpressure on pulling); nothing is dropped. The call acks its message only
//! once delivery has ended, and a shutdown drains callbacks with the calls.
//!
//! Two semaphores rather than a channel and delivery tasks: the same bounds and the same
//! backpressure, without handing each job to another task and its result back (measured in
//! `docs/benchmarks.md`, worker hot path).

use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::headers::{
    X_BATCH_ID, X_CALL_ID, X_DURATION_SECONDS, X_FUNCTION_NAME, X_FUNCTION_STATUS, X_RETRY,
    X_RETRY_MAX, X_START_TIME,
};
use flotilla_queue::{Backoff, FunctionName, Jitter};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use flotilla_runtime::CallbackTargets;

use crate::budget::Slot;
use crate::metrics::WorkerMetrics;
use crate::signing::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use flotilla_runtime::error_chain;

/// Callback receivers are often `https://`; rustls on ring with the webpki roots. Names resolve
/// through [`GuardedResolver`], so no connection goes to an address the policy refuses.
type CallbackClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// The system resolver, minus the addresses the callback policy refuses. A name left with none
/// fails to resolve with `PermissionDenied` and the policy's reason.
#[derive(Clone, Debug)]
struct GuardedResolver {
    inner: GaiResolver,
    policy: Arc<CallbackTargets>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let resolving = self.inner.call(name);
        let policy = self.policy.clone();
        Box::pin(async move {
            let named = policy.check_name(&host).map_err(refused)?;
            let mut kept = Vec::new();
            let mut last_refusal = None;
            for addr in resolving.await? {
                match policy.check_ip(Some(&host), addr.ip(), named) {
                    Ok(()) => kept.push(addr),
                    Err(why) => last_refusal = Some(why),
                }
            }
            match (kept.is_empty(), last_refusal) {
                (true, Some(why)) => Err(refused(why)),
                _ => Ok(kept.into_iter()),
            }
        })
    }
}

fn refused(why: flotilla_runtime::Refused) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("callback policy: {why}"),
    )
}

/// Whether a send failed because the callback policy refused every address.
fn is_refusal(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Waits between delivery attempts: 200 ms doubling up to 5 s, plus up to half as much again at
/// random, so receivers that come back are not hit by every worker at the same instant.
const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(5),
    Jitter::UpTo(0.5),
);

/// Why one delivery attempt failed (the last one is logged when delivery gives up).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// No connection, a reset, or a broken answer. The client's own message names only the
    /// outermost layer, so the text spells out the whole chain of causes.
    #[error("{}", error_chain(.0))]
    Send(#[source] hyper_util::client::legacy::Error),
    /// The receiver failed (5xx): it may do better on the next attempt.
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One callback to deliver.
#[derive(Debug)]
pub(crate) struct CallbackJob {
    pub url: String,
    pub call_id: String,
    pub function: FunctionName,
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    pub duration: Duration,
    pub start_time: u128,
    pub retry: u32,
    pub retry_max: u32,
    /// Signs the callback (Standard Webhooks) when secrets are configured.
    pub signer: Option<std::sync::Arc<crate::signing::Signer>>,
}

/// How delivery ended. Either way the call is settled: a shutdown that cannot wait for delivery
/// drops it instead, and the call is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The callback policy refuses the target: never connected, not retried; logged and counted.
    Refused,
    /// The receiver answered (a 4xx included: it refused, and asking again will not change that).
    Delivered,
    /// Every attempt failed; logged at warn and counted. The call is settled anyway: running the
    /// function again would not make an unreachable receiver reachable.
    GaveUp,
}

/// How callbacks are delivered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallbackSettings {
    /// Callbacks that may wait for a delivery permit (`--callback-queue`).
    pub capacity: usize,
    pub concurrency: usize,
    pub attempts: u32,
    pub timeout: Duration,
}

/// Where callbacks may go (`--callback-allow`, `--callback-deny`).
pub(crate) type CallbackPolicy = Arc<CallbackTargets>;

/// The callback budget of a worker, shared by its calls.
#[derive(Debug)]
pub(crate) struct Callbacks {
    client: CallbackClient,
    policy: CallbackPolicy,
    settings: CallbackSettings,
    /// Places in the queue: held from the moment a call hands its callback over (and lets go of
    /// its function slot) until delivery starts.
    queue: Semaphore,
    /// Deliveries in flight: the worker's load on callback receivers.
    sending: Semaphore,
    metrics: WorkerMetrics,
}

impl Callbacks {
    pub fn new(settings: CallbackSettings, policy: CallbackPolicy, metrics: WorkerMetrics) -> Self {
        Self {
            client: callback_client(settings.concurrency, policy.clone()),
            policy,
            queue: Semaphore::new(settings.capacity),
            sending: Semaphore::new(settings.concurrency),
            settings,
            metrics,
        }
    }

    /// Delivers `job`. Waits for a place in the queue while still holding `slot`, the call's
    /// function slot, so a full queue slows pulling; releases the slot once queued, then waits
    /// for a delivery permit. `None` (the semaphores were closed, which the worker never does)
    /// leaves the call to be handed back. Dropping the future (shutdown past the grace period)
    /// gives up its place and permit; the caller hands the call back.
    pub async fn deliver(&self, job: CallbackJob, slot: Slot) -> Option<Delivery> {
        let queued = self.queue.acquire().await.ok()?;
        drop(slot);
        self.set_depth();
        let sending = self.sending.acquire().await.ok()?;
        drop(queued);
        self.set_depth();
        let result = self.send(&job).await;
        drop(sending);
        Some(result)
    }

    /// Delivers a batch's end under the same delivery permits, policy and retries as calls'.
    pub async fn deliver_batch(&self, job: BatchCallback) -> Option<Delivery> {
        let sending = self.sending.acquire().await.ok()?;
        let result = self.send(&job).await;
        drop(sending);
        Some(result)
    }

    /// One delivery, with its retries, counted by how it ended.
    async fn send(&self, job: &impl Post) -> Delivery {
        let result = deliver(&self.client, &self.policy, self.settings, job).await;
        match result {
            Delivery::Delivered => self.metrics.callbacks_delivered.increment(1),
            Delivery::GaveUp => self.metrics.callback_failures.increment(1),
            Delivery::Refused => self.metrics.callbacks_refused.increment(1),
        }
        result
    }

    fn set_depth(&self) {
        let waiting = self.settings.capacity - self.queue.available_permits();
        self.metrics.callback_queue_depth.set(waiting as f64);
    }
}

fn callback_client(concurrency: usize, policy: CallbackPolicy) -> CallbackClient {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        inner: GaiResolver::new(),
        policy,
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(concurrency)
        .build(https)
}

/// Something POSTed to a callback URL: a call's outcome, or a batch's end.
trait Post {
    fn url(&self) -> &str;
    /// The call or batch id, for the logs.
    fn id(&self) -> &str;
    fn request(&self, uri: &Uri) -> Request<Full<Bytes>>;
}

impl Post for CallbackJob {
    fn url(&self) -> &str {
        &self.url
    }
    fn id(&self) -> &str {
        &self.call_id
    }
    fn request(&self, uri: &Uri) -> Request<Full<Bytes>> {
        request(uri, self)
    }
}

/// A batch's end, POSTed once to the batch's callback URL: its counts as JSON, with
/// `X-Batch-Id` (and signed like a call's callback, the batch id as `webhook-id`).
#[derive(Debug)]
pub(crate) struct BatchCallback {
    pub url: String,
    pub batch_id: String,
    pub body: Bytes,
    pub signer: Option<std::sync::Arc<crate::signing::Signer>>,
}

impl Post for BatchCallback {
    fn url(&self) -> &str {
        &self.url
    }
    fn id(&self) -> &str {
        &self.batch_id
    }
    fn request(&self, uri: &Uri) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(&self.batch_id) {
            h.insert(X_BATCH_ID, v);
        }
        sign(h, self.signer.as_deref(), &self.batch_id, &self.body);
        req
    }
}

/// Delivers one job with retries on connection errors, timeouts and 5xx answers.
async fn deliver(
    client: &CallbackClient,
    policy: &CallbackTargets,
    s: CallbackSettings,
    job: &impl Post,
) -> Delivery {
    let uri: Uri = match job.url().parse() {
        Ok(u) => u,
        Err(error) => {
            tracing::warn!(id = job.id(), url = job.url(), %error, "callback URL is invalid; giving up");
            return Delivery::GaveUp;
        }
    };
    // An address in the URL never reaches the resolver: judge it here. Names are judged by
    // their rules here and by each resolved address in the resolver.
    let host = uri.host().unwrap_or_default();
    let verdict = policy
        .check_literal(host)
        .unwrap_or_else(|| policy.check_name(host).map(drop));
    if let Err(why) = verdict {
        tracing::warn!(id = job.id(), url = job.url(), %why, "callback target refused by the callback policy; not sent");
        return Delivery::Refused;
    }
    let mut last_error = None;
    let mut delays = BACKOFF.delays();
    for attempt in 1..=s.attempts {
        let req = job.request(&uri);
        let error = match tokio::time::timeout(s.timeout, send(client, req)).await {
            Ok(Ok(status)) if !status.is_server_error() => {
                if status.is_client_error() {
                    tracing::warn!(id = job.id(), url = job.url(), %status, "callback receiver refused the result");
                }
                return Delivery::Delivered;
            }
            Ok(Ok(status)) => AttemptError::Status(status),
            Ok(Err(e)) if is_refusal(&e) => {
                tracing::warn!(id = job.id(), url = job.url(), error = %error_chain(&e), "callback target refused by the callback policy; not sent");
                return Delivery::Refused;
            }
            Ok(Err(e)) => AttemptError::Send(e),
            Err(_) => AttemptError::Timeout(s.timeout),
        };
        last_error = Some(error);
        if attempt < s.attempts {
            tokio::time::sleep(delays.next_delay()).await;
        }
    }
    tracing::warn!(
        id = job.id(),
        url = job.url(),
        attempts = s.attempts,
        error = last_error.as_ref().map(tracing::field::display),
        "callback not delivered; giving up"
    );
    Delivery::GaveUp
}

async fn send(
    client: &CallbackClient,
    req: Request<Full<Bytes>>,
) -> Result<StatusCode, hyper_util::client::legacy::Error> {
    let resp = client.request(req).await?;
    let status = resp.status();
    // Read the (usually empty) answer so the connection returns to the pool.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

fn request(uri: &Uri, job: &CallbackJob) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(job.body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    h.reserve(8);
    if let Some(ct) = &job.content_type {
        h.insert(CONTENT_TYPE, ct.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&job.call_id) {
        h.insert(X_CALL_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(job.function.as_str()) {
        h.insert(X_FUNCTION_NAME, v);
    }
    h.insert(X_FUNCTION_STATUS, HeaderValue::from(job.status));
    if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", job.duration.as_secs_f64())) {
        h.insert(X_DURATION_SECONDS, v);
    }
    h.insert(X_START_TIME, HeaderValue::from(job.start_time as u64));
    h.insert(X_RETRY, HeaderValue::from(job.retry));
    h.insert(X_RETRY_MAX, HeaderValue::from(job.retry_max));
    sign(h, job.signer.as_deref(), &job.call_id, &job.body);
    req
}

/// Signs a callback (Standard Webhooks) when a signer is configured: at each attempt, so the
/// timestamp is the time of sending.
fn sign(h: &mut http::HeaderMap, signer: Option<&crate::signing::Signer>, id: &str, body: &[u8]) {
    let Some(signer) = signer else {
        return;
    };
    let Ok(id_value) = HeaderValue::from_str(id) else {
        return;
    };
    let now = (flotilla_queue::time::unix_nanos() / 1_000_000_000) as u64;
    let signature = signer.signature(id, now, body);
    if let Ok(v) = HeaderValue::from_str(&signature) {
        h.insert(WEBHOOK_SIGNATURE, v);
        h.insert(WEBHOOK_ID, id_value);
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut delays = BACKOFF.delays();
        let b1 = delays.next_delay();
        assert!(b1 >= Duration::from_millis(200) && b1 < Duration::from_millis(300));
        delays.next_delay();
        let b3 = delays.next_delay();
        assert!(b3 >= Duration::from_millis(800) && b3 < Duration::from_millis(1200));
        assert!(BACKOFF.delay(29) <= Duration::from_millis(7500));
    }
}
