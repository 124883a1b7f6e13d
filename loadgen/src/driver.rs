//! The senders: offer load to a gateway's `/async-function/<name>` under the open- or closed-loop
//! model and record every answer. Bounded in time (`--duration`), count (`--count`) and in
//! flight (`--max-in-flight`); each request has its own deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_queue::Priority;
use flotilla_queue::headers::{X_CALL_ID, X_CALLBACK_URL, X_FAIRNESS_KEY, X_PRIORITY};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::config::LoadModel;
use crate::dist::KeySkew;
use crate::mix::{KeyMix, PriorityMix};
use crate::net::HttpClient;
use crate::schedule::OpenLoop;
use crate::stats::Recorder;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("gateway URL {url:?} is not usable: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("callback URL {url:?} is not a valid header value")]
    BadCallback {
        url: String,
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    #[error("warm-up call to {function} failed: {reason}")]
    WarmUp {
        function: String,
        #[source]
        reason: WarmUpFailure,
    },
}

/// Why one warm-up call failed.
#[derive(Debug, thiserror::Error)]
pub enum WarmUpFailure {
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error("timeout")]
    Timeout,
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    #[error("202 without X-Call-Id")]
    NoCallId,
    #[error("status {0}")]
    Status(u16),
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
    /// Calls per request: above 1, through `/async-batch/<name>`.
    pub batch: usize,
    /// `--priority-mix`: each call's `X-Priority` (batch line `priority`); none when `None`.
    pub priority_mix: Option<PriorityMix>,
    /// `--fairness-keys`: each call's `X-Fairness-Key` (batch line `fairness_key`).
    pub keys: Option<KeyMix>,
}

/// When sending began and ended, as offsets from the clock origin.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// With `--batch`: each function's batch route, the NDJSON body of one batch, and its lines'
/// priorities (each `None` without `--priority-mix`).
struct BatchTarget {
    uris: Vec<Uri>,
    body: Bytes,
    priorities: Vec<Option<Priority>>,
    /// Each line's key (each `None` without `--fairness-keys`).
    keys: Vec<Option<u32>>,
}

struct Target {
    uris: Vec<Uri>,
    /// With `--batch`: what each batch request sends.
    batch: Option<BatchTarget>,
    /// `--priority-mix` and the run's seed, which pick each call's priority.
    mix: Option<(PriorityMix, u64)>,
    /// `--fairness-keys` and the run's seed, which pick each call's key.
    keys: Option<(KeyMix, u64)>,
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
    let uris = function_uris(base, gateway, "async-function", load.functions)?;
    let callback = callback_url
        .map(|u| {
            HeaderValue::from_str(u).map_err(|source| DriverError::BadCallback {
                url: u.to_owned(),
                source,
            })
        })
        .transpose()?;
    let batch = (load.batch > 1)
        .then(|| batch_target(base, gateway, callback_url, load))
        .transpose()?;
    let target = Arc::new(Target {
        uris,
        batch,
        callback,
        body: load.body.clone(),
        timeout: load.timeout,
        client,
        rec: rec.clone(),
        mix: load.priority_mix.clone().map(|m| (m, load.seed)),
        keys: load.keys.clone().map(|k| (k, load.seed)),
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
            let per_request = t.batch.as_ref().map_or(1, |b| b.priorities.len() as u64);
            loop {
                let now = Instant::now();
                if now >= deadline || tickets.fetch_add(per_request, Ordering::Relaxed) >= limit {
                    break;
                }
                match &t.batch {
                    Some(_) => send_batch(&t, skew.sample(&mut rng), now).await,
                    None => send_one(&t, skew.sample(&mut rng), now).await,
                }
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
            let fail = |reason: WarmUpFailure| DriverError::WarmUp {
                function: function.clone(),
                reason,
            };
            let mut req = hyper::Request::post(uri);
            if let Some(cb) = callback_url {
                req = req.header(X_CALLBACK_URL, cb);
            }
            let req = req
                .body(Full::new(Bytes::from_static(b"warm-up")))
                .map_err(|e| fail(e.into()))?;
            let resp = tokio::time::timeout(timeout, client.request(req))
                .await
                .map_err(|_| fail(WarmUpFailure::Timeout))?
                .map_err(|e| fail(e.into()))?;
            let status = resp.status();
            let id = resp
                .headers()
                .get(X_CALL_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = resp.into_body().collect().await;
            match (status.as_u16(), id) {
                (202, Some(id)) => Ok(id),
                (202, None) => Err(fail(WarmUpFailure::NoCallId)),
                (s, _) => Err(fail(WarmUpFailure::Status(s))),
            }
        }
    });
    futures_util::future::try_join_all(calls).await
}

/// `<base>/<route>/<function>` of each of the run's functions.
fn function_uris(
    base: &str,
    gateway: &str,
    route: &str,
    functions: usize,
) -> Result<Vec<Uri>, DriverError> {
    (0..functions)
        .map(|k| {
            format!("{base}/{route}/{}", function_name(k))
                .parse::<Uri>()
                .map_err(|source| DriverError::BadUrl {
                    url: gateway.to_owned(),
                    source,
                })
        })
        .collect()
}

/// Each function's batch route and the NDJSON body every batch request carries: `load.batch`
/// lines of the load's body, each asking for the callback when there is one, and with
/// `--priority-mix` each with its priority (the same lines in every batch).
fn batch_target(
    base: &str,
    gateway: &str,
    callback_url: Option<&str>,
    load: &Load,
) -> Result<BatchTarget, DriverError> {
    let uris = function_uris(base, gateway, "async-batch", load.functions)?;
    let mut line = serde_json::json!({ "body": String::from_utf8_lossy(&load.body) });
    if let Some(cb) = callback_url {
        line["callback_url"] = cb.into();
    }
    let priorities: Vec<Option<Priority>> = (0..load.batch as u64)
        .map(|i| load.priority_mix.as_ref().map(|m| m.pick(load.seed, i)))
        .collect();
    let keys: Vec<Option<u32>> = (0..load.batch as u64)
        .map(|i| load.keys.as_ref().map(|k| k.pick(load.seed, i)))
        .collect();
    let mut body = String::new();
    for (p, k) in priorities.iter().zip(&keys) {
        if let Some(p) = p {
            line["priority"] = p.as_str().into();
        }
        if let Some(k) = k {
            line["fairness_key"] = KeyMix::name(*k).into();
        }
        body.push_str(&line.to_string());
        body.push('\n');
    }
    Ok(BatchTarget {
        uris,
        body: Bytes::from(body),
        priorities,
        keys,
    })
}

/// One batch request of `load.batch` calls; every call's latency is the request's, from
/// `intended` to the end of the answer.
async fn send_batch(t: &Target, function: usize, intended: Instant) {
    let Some(BatchTarget {
        uris,
        body,
        priorities,
        keys,
    }) = &t.batch
    else {
        return;
    };
    let n = priorities.len();
    t.rec.sent.fetch_add(n as u64, Ordering::Relaxed);
    let req = hyper::Request::post(uris[function].clone())
        .header("content-type", "application/x-ndjson")
        .body(Full::new(body.clone()));
    let Ok(req) = req else {
        t.rec.error("request_build");
        return;
    };
    let outcome = exchange(t, req).await;
    let done = Instant::now();
    let latency =
        u64::try_from(done.saturating_duration_since(intended).as_nanos()).unwrap_or(u64::MAX);
    let at = t.rec.clock.ns_at(done);
    let fail = |kind: &str| {
        for _ in 0..n {
            t.rec.error(kind);
        }
    };
    match outcome {
        Err(kind) => fail(kind),
        Ok((200, _, Some(lines))) => {
            let mut answered = 0;
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                answered += 1;
                let parsed: Option<serde_json::Value> = serde_json::from_slice(line).ok();
                let priority = priorities.get(answered - 1).copied().flatten();
                let key = keys.get(answered - 1).copied().flatten();
                match parsed.as_ref().and_then(|v| v["call_id"].as_str()) {
                    Some(id) => t.rec.accepted(id.to_owned(), at, latency, (priority, key)),
                    None => {
                        let status = parsed.and_then(|v| v["status"].as_u64()).unwrap_or(0);
                        t.rec.error(&format!("line_status_{status}"));
                    }
                }
            }
            for _ in answered..n {
                t.rec.error("line_unanswered");
            }
        }
        Ok((200, _, None)) => fail("http"),
        Ok((status, _, _)) => fail(&format!("status_{status}")),
    }
}

/// One request under the load's deadline: the answer's status, headers and body (`None` when
/// the body broke off), or the kind of failure (`timeout`, `connect`, `http`). The body is read to
/// the end either way, so the connection returns to the pool.
async fn exchange(
    t: &Target,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(u16, http::HeaderMap, Option<Bytes>), &'static str> {
    let answer = tokio::time::timeout(t.timeout, async {
        let resp = t.client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok().map(|b| b.to_bytes());
        Ok::<_, hyper_util::client::legacy::Error>((parts.status.as_u16(), parts.headers, body))
    })
    .await;
    match answer {
        Err(_) => Err("timeout"),
        Ok(Err(e)) if e.is_connect() => Err("connect"),
        Ok(Err(_)) => Err("http"),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// One enqueue request; latency runs from `intended` to the end of the answer.
async fn send_one(t: &Target, function: usize, intended: Instant) {
    let n = t.rec.sent.fetch_add(1, Ordering::Relaxed);
    let priority = t.mix.as_ref().map(|(m, seed)| m.pick(*seed, n));
    let key = t.keys.as_ref().map(|(k, seed)| k.pick(*seed, n));
    let mut req = hyper::Request::post(t.uris[function].clone());
    if let Some(cb) = &t.callback {
        req = req.header(X_CALLBACK_URL, cb.clone());
    }
    if let Some(p) = priority {
        req = req.header(X_PRIORITY, p.as_str());
    }
    if let Some(k) = key {
        req = req.header(X_FAIRNESS_KEY, KeyMix::name(k));
    }
    let req = req
        .header("content-type", "application/octet-stream")
        .body(Full::new(t.body.clone()));
    let Ok(req) = req else {
        t.rec.error("request_build");
        return;
    };
    let outcome = exchange(t, req).await.map(|(status, headers, _)| {
        let call_id = headers
            .get(X_CALL_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, call_id)
    });
    let done = Instant::now();
    match outcome {
        Err(kind) => t.rec.error(kind),
        Ok((202, Some(id))) => {
            let latency = done.saturating_duration_since(intended);
            t.rec.accepted(
                id,
                t.rec.clock.ns_at(done),
                u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                (priority, key),
            );
        }
        Ok((202, None)) => t.rec.error("202_without_call_id"),
        Ok((status, _)) => t.rec.error(&format!("status_{status}")),
    }
}
