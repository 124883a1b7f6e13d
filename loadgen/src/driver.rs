//! The senders: offer load to a gateway's `/async-function/<name>` under the open- or closed-loop
//! model and record every answer. Bounded in time (`--duration`), count (`--count`) and in
//! flight (`--max-in-flight`); each request has its own deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_queue::headers::{X_CALL_ID, X_CALLBACK_URL};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::config::LoadModel;
use crate::dist::KeySkew;
use crate::net::HttpClient;
use crate::schedule::OpenLoop;
use crate::stats::Recorder;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("gateway URL {0:?} is not usable: {1}")]
    BadUrl(String, String),
    #[error("callback URL {0:?} is not a valid header value")]
    BadCallback(String),
    #[error("warm-up call to {function} failed: {reason}")]
    WarmUp { function: String, reason: String },
}

/// Name of the k-th function a run calls.
pub fn function_name(k: usize) -> String {
    format!("lg-{k}")
}

/// Everything the senders need.
#[derive(Debug, Clone)]
pub struct Load {
    pub model: LoadModel,
    pub duration: Duration,
    pub count: Option<u64>,
    pub functions: usize,
    pub skew: f64,
    pub body: Bytes,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub seed: u64,
}

/// When sending began and ended, as offsets from the clock origin.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub start_ns: u64,
    pub end_ns: u64,
}

struct Target {
    uris: Vec<Uri>,
    /// `None`: calls without `X-Callback-Url`.
    callback: Option<HeaderValue>,
    body: Bytes,
    timeout: Duration,
    client: HttpClient,
    rec: Arc<Recorder>,
}

/// Sends the load to `gateway` (base URL), asking for callbacks at `callback_url` (none when
/// `None`), and returns once every request has an answer or has timed out.
pub async fn drive(
    gateway: &str,
    callback_url: Option<&str>,
    load: &Load,
    client: HttpClient,
    rec: Arc<Recorder>,
) -> Result<Sent, DriverError> {
    let base = gateway.trim_end_matches('/');
    let uris = (0..load.functions)
        .map(|k| {
            format!("{base}/async-function/{}", function_name(k))
                .parse::<Uri>()
                .map_err(|e| DriverError::BadUrl(gateway.to_owned(), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let callback = callback_url
        .map(|u| HeaderValue::from_str(u).map_err(|_| DriverError::BadCallback(u.to_owned())))
        .transpose()?;
    let target = Arc::new(Target {
        uris,
        callback,
        body: load.body.clone(),
        timeout: load.timeout,
        client,
        rec: rec.clone(),
    });
    let skew = Arc::new(KeySkew::new(load.functions, load.skew));
    let start = Instant::now();
    let start_ns = rec.clock.ns_at(start);
    match &load.model {
        LoadModel::Open { steps } => open_loop(target, skew, load, steps.clone(), start).await,
        LoadModel::Closed { concurrency } => {
            closed_loop(target, skew, load, *concurrency, start).await
        }
    }
    Ok(Sent {
        start_ns,
        end_ns: rec.clock.now_ns(),
    })
}

async fn open_loop(
    target: Arc<Target>,
    skew: Arc<KeySkew>,
    load: &Load,
    steps: Vec<crate::schedule::RateStep>,
    start: Instant,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(load.max_in_flight));
    let mut rng = fastrand::Rng::with_seed(load.seed);
    let limit = load.count.unwrap_or(u64::MAX);
    for (sent, offset) in OpenLoop::new(steps, load.duration).enumerate() {
        if sent as u64 >= limit {
            break;
        }
        let intended = start + offset;
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        // Beyond the in-flight cap the sender waits; the wait counts, as latency starts at
        // `intended`.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let k = skew.sample(&mut rng);
        let t = target.clone();
        tracker.spawn(async move {
            send_one(&t, k, intended).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn closed_loop(
    target: Arc<Target>,
    skew: Arc<KeySkew>,
    load: &Load,
    concurrency: usize,
    start: Instant,
) {
    let tracker = TaskTracker::new();
    let tickets = Arc::new(AtomicU64::new(0));
    let limit = load.count.unwrap_or(u64::MAX);
    let deadline = start + load.duration;
    for i in 0..concurrency {
        let (t, skew, tickets) = (target.clone(), skew.clone(), tickets.clone());
        let mut rng = fastrand::Rng::with_seed(load.seed.wrapping_add(i as u64));
        tracker.spawn(async move {
            loop {
                let now = Instant::now();
                if now >= deadline || tickets.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                send_one(&t, skew.sample(&mut rng), now).await;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// One call to each function, so that the fleet creates its consumers and connections before
/// anything is measured. Returns the accepted call ids; any failure is an error, as the run
/// itself would fail the same way.
pub async fn warm_up(
    gateway: &str,
    callback_url: Option<&str>,
    functions: usize,
    client: &HttpClient,
    timeout: Duration,
) -> Result<Vec<String>, DriverError> {
    let base = gateway.trim_end_matches('/');
    let calls = (0..functions).map(|k| {
        let function = function_name(k);
        let uri = format!("{base}/async-function/{function}");
        let client = client.clone();
        async move {
            let fail = |reason: String| DriverError::WarmUp {
                function: function.clone(),
                reason,
            };
            let mut req = hyper::Request::post(uri);
            if let Some(cb) = callback_url {
                req = req.header(X_CALLBACK_URL, cb);
            }
            let req = req
                .body(Full::new(Bytes::from_static(b"warm-up")))
                .map_err(|e| fail(e.to_string()))?;
            let resp = tokio::time::timeout(timeout, client.request(req))
                .await
                .map_err(|_| fail("timeout".into()))?
                .map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            let id = resp
                .headers()
                .get(X_CALL_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = resp.into_body().collect().await;
            match (status.as_u16(), id) {
                (202, Some(id)) => Ok(id),
                (202, None) => Err(fail("202 without X-Call-Id".into())),
                (s, _) => Err(fail(format!("status {s}"))),
            }
        }
    });
    futures_util::future::try_join_all(calls).await
}

/// One enqueue request; latency runs from `intended` to the end of the answer.
async fn send_one(t: &Target, function: usize, intended: Instant) {
    t.rec.sent.fetch_add(1, Ordering::Relaxed);
    let mut req = hyper::Request::post(t.uris[function].clone());
    if let Some(cb) = &t.callback {
        req = req.header(X_CALLBACK_URL, cb.clone());
    }
    let req = req
        .header("content-type", "application/octet-stream")
        .body(Full::new(t.body.clone()));
    let Ok(req) = req else {
        t.rec.error("request_build");
        return;
    };
    let outcome = tokio::time::timeout(t.timeout, async {
        let resp = t.client.request(req).await?;
        let status = resp.status().as_u16();
        let call_id = resp
            .headers()
            .get(X_CALL_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read the body to the end so the connection returns to the pool.
        let _ = resp.into_body().collect().await;
        Ok::<_, hyper_util::client::legacy::Error>((status, call_id))
    })
    .await;
    let done = Instant::now();
    match outcome {
        Err(_) => t.rec.error("timeout"),
        Ok(Err(e)) if e.is_connect() => t.rec.error("connect"),
        Ok(Err(_)) => t.rec.error("http"),
        Ok(Ok((202, Some(id)))) => {
            let latency = done.saturating_duration_since(intended);
            t.rec.accepted(
                id,
                t.rec.clock.ns_at(done),
                u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            );
        }
        Ok(Ok((202, None))) => t.rec.error("202_without_call_id"),
        Ok(Ok((status, _))) => t.rec.error(&format!("status_{status}")),
    }
}
