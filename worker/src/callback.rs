//! Callback delivery: a bounded queue drained by a fixed number of tasks, each POST with its own
//! timeout and a few retries. A full queue makes calls wait (backpressure on pulling); nothing is
//! dropped. Each job tells its call how delivery ended, so the call acks its message only then.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::FunctionName;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::error_chain;
use crate::metrics::WorkerMetrics;

static X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
static X_FUNCTION_NAME: HeaderName = HeaderName::from_static("x-function-name");
static X_FUNCTION_STATUS: HeaderName = HeaderName::from_static("x-function-status");
static X_DURATION_SECONDS: HeaderName = HeaderName::from_static("x-duration-seconds");
static X_START_TIME: HeaderName = HeaderName::from_static("x-start-time");
static X_RETRY: HeaderName = HeaderName::from_static("x-retry");
static X_RETRY_MAX: HeaderName = HeaderName::from_static("x-retry-max");

/// Callback receivers are often `https://`; rustls on ring with the webpki roots.
type CallbackClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
    pub done: oneshot::Sender<Delivery>,
}

/// How delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The receiver answered (a 4xx included: it refused, and asking again will not change that).
    Delivered,
    /// Every attempt failed; logged at warn and counted. The call is settled anyway: running the
    /// function again would not make an unreachable receiver reachable.
    GaveUp,
    /// The shutdown grace period ended first; the call is handed back.
    Abandoned,
}

/// How callbacks are delivered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallbackSettings {
    pub concurrency: usize,
    pub attempts: u32,
    pub timeout: Duration,
}

/// The sending side, held by calls.
#[derive(Debug, Clone)]
pub(crate) struct CallbackQueue {
    tx: mpsc::Sender<CallbackJob>,
    depth: metrics::Gauge,
}

impl CallbackQueue {
    /// Queues a job, waiting while the queue is full. False when the delivery tasks are gone.
    pub async fn send(&self, job: CallbackJob) -> bool {
        let ok = self.tx.send(job).await.is_ok();
        self.depth
            .set((self.tx.max_capacity() - self.tx.capacity()) as f64);
        ok
    }
}

/// Starts the delivery tasks on `tracker`. They stop once `closed` fires and the queue is
/// empty, or at once when `abandon` fires (their jobs then report `Abandoned`).
pub(crate) fn start(
    capacity: usize,
    settings: CallbackSettings,
    metrics: WorkerMetrics,
    tracker: &TaskTracker,
    closed: CancellationToken,
    abandon: CancellationToken,
) -> CallbackQueue {
    let (tx, rx) = mpsc::channel(capacity);
    let rx = Arc::new(Mutex::new(rx));
    let client = callback_client(settings.concurrency);
    let queue = CallbackQueue {
        tx,
        depth: metrics.callback_queue_depth.clone(),
    };
    for _ in 0..settings.concurrency {
        let (rx, client, metrics) = (rx.clone(), client.clone(), metrics.clone());
        let (closed, abandon) = (closed.clone(), abandon.clone());
        tracker.spawn(async move {
            loop {
                let job = {
                    let mut rx = rx.lock().await;
                    tokio::select! {
                        biased;
                        job = rx.recv() => {
                            metrics.callback_queue_depth.set(rx.len() as f64);
                            job
                        }
                        // Calls wait for their callbacks, so once every call has ended the
                        // queue is empty and nothing more can arrive.
                        _ = closed.cancelled() => rx.try_recv().ok(),
                    }
                };
                let Some(job) = job else { break };
                let result = tokio::select! {
                    r = deliver(&client, settings, &job) => r,
                    _ = abandon.cancelled() => Delivery::Abandoned,
                };
                match result {
                    Delivery::Delivered => metrics.callbacks_delivered.increment(1),
                    Delivery::GaveUp => metrics.callback_failures.increment(1),
                    Delivery::Abandoned => {}
                }
                let _ = job.done.send(result);
            }
        });
    }
    queue
}

fn callback_client(concurrency: usize) -> CallbackClient {
    let mut http = HttpConnector::new();
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

/// Delivers one job with retries on connection errors, timeouts and 5xx answers.
async fn deliver(client: &CallbackClient, s: CallbackSettings, job: &CallbackJob) -> Delivery {
    let uri: Uri = match job.url.parse() {
        Ok(u) => u,
        Err(error) => {
            tracing::warn!(call_id = %job.call_id, url = %job.url, %error, "callback URL is invalid; giving up");
            return Delivery::GaveUp;
        }
    };
    let mut last_error = String::new();
    for attempt in 1..=s.attempts {
        let req = request(&uri, job);
        match tokio::time::timeout(s.timeout, send(client, req)).await {
            Ok(Ok(status)) if !status.is_server_error() => {
                if status.is_client_error() {
                    tracing::warn!(call_id = %job.call_id, url = %job.url, %status, "callback receiver refused the result");
                }
                return Delivery::Delivered;
            }
            Ok(Ok(status)) => last_error = format!("answered {status}"),
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = format!("no answer within {:?}", s.timeout),
        }
        if attempt < s.attempts {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    tracing::warn!(
        call_id = %job.call_id,
        function = %job.function,
        url = %job.url,
        attempts = s.attempts,
        error = %last_error,
        "callback not delivered; giving up"
    );
    Delivery::GaveUp
}

async fn send(
    client: &CallbackClient,
    req: Request<Full<Bytes>>,
) -> Result<http::StatusCode, String> {
    let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
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
        h.insert(X_CALL_ID.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(job.function.as_str()) {
        h.insert(X_FUNCTION_NAME.clone(), v);
    }
    h.insert(X_FUNCTION_STATUS.clone(), HeaderValue::from(job.status));
    if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", job.duration.as_secs_f64())) {
        h.insert(X_DURATION_SECONDS.clone(), v);
    }
    h.insert(
        X_START_TIME.clone(),
        HeaderValue::from(job.start_time as u64),
    );
    h.insert(X_RETRY.clone(), HeaderValue::from(job.retry));
    h.insert(X_RETRY_MAX.clone(), HeaderValue::from(job.retry_max));
    req
}

/// 200 ms doubling up to 5 s, with up to 50% jitter so receivers that come back are not hit by
/// every worker at the same instant.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(Duration::from_secs(5));
    base + base.mul_f64(crate::retry::jitter() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b1 = backoff(1);
        assert!(b1 >= Duration::from_millis(200) && b1 < Duration::from_millis(300));
        let b3 = backoff(3);
        assert!(b3 >= Duration::from_millis(800) && b3 < Duration::from_millis(1200));
        assert!(backoff(30) <= Duration::from_millis(7500));
    }
}
