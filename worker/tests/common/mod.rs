//! Helpers shared by the worker's integration tests: a NATS server with the fleet's topology,
//! envelopes published straight to JetStream, and a worker and a gateway run in-process (all
//! through the fleet's launcher).

// Each test binary uses a part of these helpers; a failed unwrap is the test failure we want.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;

/// How long a helper waits for a condition before the test fails.
const WAIT: Duration = Duration::from_secs(30);

use async_nats::jetstream;
use bytes::Bytes;
use flotilla_fleet::{Fleet, FleetOptions};
use flotilla_queue::{Envelope, FunctionName, Topology, subjects, time};
use flotilla_worker::WorkerError;

/// A NATS server whose topology is agreed and whose streams exist.
pub struct Nats {
    pub fleet: Fleet,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
}

impl Nats {
    pub async fn start(shards: u32) -> Self {
        let fleet = Fleet::start(FleetOptions {
            shards,
            ..FleetOptions::default()
        })
        .await
        .unwrap();
        Self {
            client: fleet.client().clone(),
            js: fleet.jetstream(),
            topology: fleet.topology(),
            fleet,
        }
    }

    pub fn url(&self) -> String {
        self.fleet.nats_url().to_owned()
    }

    /// Publishes `env` to its function's shard and waits for the PubAck.
    pub async fn publish(&self, env: &Envelope) {
        let shard = self.topology.shard_map().shard_of(env.function.as_str());
        let (headers, body) = env.to_nats(None);
        self.js
            .publish_with_headers(subjects::call_subject(shard, &env.function), headers, body)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Messages still stored in every shard's streams, calls and waiting calls (work queues:
    /// acked messages are gone).
    pub async fn stored(&self) -> u64 {
        let mut total = 0;
        for shard in 0..self.topology.shards {
            for name in [subjects::call_stream(shard), subjects::wait_stream(shard)] {
                let mut s = self.js.get_stream(name).await.unwrap();
                total += s.info().await.unwrap().state.messages;
            }
        }
        total
    }

    /// Calls of `shard` not yet dispatched (started or moved to the wait stream).
    pub async fn undispatched(&self, shard: u32) -> u64 {
        let s = self
            .js
            .get_stream(subjects::call_stream(shard))
            .await
            .unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            s.get_consumer(subjects::DISPATCH_CONSUMER).await.unwrap();
        c.info().await.unwrap().num_pending
    }

    /// Waits until every call published to `shard` left its dispatch consumer: started, moved or
    /// parked.
    #[allow(dead_code, reason = "not every test binary waits for dispatch")]
    pub async fn dispatched(&self, shard: u32, timeout: Duration) {
        flotilla_testsupport::wait_until_async(timeout, "the backlog dispatched", || async {
            self.undispatched(shard).await == 0
        })
        .await;
    }

    /// Waits until every shard stream is empty: every call was acked (or terminated).
    pub async fn wait_settled(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.stored().await;
            if left == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{left} calls still unsettled after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A function that answers 200 after `delay`.
pub async fn function_taking(delay: Duration) -> flotilla_testsupport::RecordingServer {
    use flotilla_testsupport::{Recorded, RecordingServer, Reply};
    RecordingServer::start(std::sync::Arc::new(move |_: &Recorded| {
        Reply::status(200).delay(delay)
    }))
    .await
}

/// Waits until the function saw every call of `sent` (call id, when it was sent) start, then
/// gives the median and the longest wait from sending to start.
#[allow(dead_code, reason = "not every test binary measures start latency")]
pub async fn start_waits(
    function: &flotilla_testsupport::RecordingServer,
    sent: &std::collections::HashMap<String, std::time::Instant>,
    within: Duration,
) -> (Duration, Duration) {
    flotilla_testsupport::wait_until(within, "every call started", || {
        function
            .requests()
            .iter()
            .filter(|r| sent.contains_key(r.header("x-call-id")))
            .count()
            >= sent.len()
    })
    .await;
    let mut waits: Vec<Duration> = function
        .requests()
        .iter()
        .filter_map(|r| Some(r.at - *sent.get(r.header("x-call-id"))?))
        .collect();
    waits.sort_unstable();
    (waits[waits.len() / 2], waits[waits.len() - 1])
}

/// Letters stored in the dead-letter stream now.
pub async fn dead_letter_count(js: &jetstream::Context) -> u64 {
    js.get_stream(subjects::DEAD_STREAM)
        .await
        .unwrap()
        .cached_info()
        .state
        .messages
}

/// Every dead letter, as (subject, headers, payload), once at least `n` are stored.
pub async fn dead_letters(nats: &Nats, n: u64) -> Vec<(String, async_nats::HeaderMap, Bytes)> {
    flotilla_testsupport::wait_until_async(WAIT, &format!("{n} dead letters"), || async {
        dead_letter_count(&nats.js).await >= n
    })
    .await;
    let dead = nats.js.get_stream(subjects::DEAD_STREAM).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = dead
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        out.push((
            m.subject.to_string(),
            m.headers.clone().unwrap(),
            m.payload.clone(),
        ));
    }
    out
}

/// A call to `function` with a fixed set of request fields.
pub fn envelope(function: &str, call_id: &str, callback: Option<&str>, body: &str) -> Envelope {
    Envelope {
        call_id: call_id.into(),
        function: FunctionName::parse(function).unwrap(),
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        callback_url: callback.map(str::to_owned),
        start_time: time::unix_nanos(),
        attempt: 0,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: Bytes::from(body.to_owned()),
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    }
}

/// The `X-Call-Id` of every request `server` received, in order, collected as the caller wants.
pub fn call_ids<C: FromIterator<String>>(server: &flotilla_testsupport::RecordingServer) -> C {
    server
        .requests()
        .iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect()
}

/// A worker running in this process; dropping it asks it to stop.
pub struct Worker {
    inner: flotilla_fleet::Worker,
    pub admin: std::net::SocketAddr,
}

impl Worker {
    /// Starts a worker against `nats_url` with `args` added to the defaults tests want.
    pub async fn start(nats_url: &str, args: &[&str]) -> Self {
        let mut all = vec!["--nats-url", nats_url, "--discovery-interval", "100ms"];
        all.extend_from_slice(args);
        let inner = flotilla_fleet::Worker::start(all).await.unwrap();
        Self {
            admin: inner.addr(),
            inner,
        }
    }

    /// Starts and waits until `/readyz` answers 200.
    pub async fn start_ready(nats_url: &str, args: &[&str]) -> Self {
        let mut w = Self::start(nats_url, args).await;
        w.inner
            .wait_ready(Duration::from_secs(15))
            .await
            .expect("worker ready");
        w
    }

    /// Starts a worker that calls each function at `<function_url>/<name>`, with the policy
    /// file `policies` (TOML, read once at start), and waits until it is ready.
    /// A worker calling `function` for `busy` at a fixed concurrency of `concurrency`, with
    /// `extra` lines in its policy.
    #[allow(dead_code, reason = "not every test binary calls `busy`")]
    pub async fn busy(
        nats: &Nats,
        function: &flotilla_testsupport::RecordingServer,
        concurrency: u32,
        extra: &str,
    ) -> Self {
        let policies = format!(
            "[functions.busy]\nurl = \"{}\"\nconcurrency = {concurrency}\n{extra}",
            function.url()
        );
        Self::with_policies(&nats.url(), &function.url(), &policies).await
    }

    pub async fn with_policies(nats_url: &str, function_url: &str, policies: &str) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), policies).unwrap();
        let template = format!("{function_url}/{{name}}");
        let args = [
            "--function-url-template",
            &template,
            "--policies",
            file.path().to_str().unwrap(),
        ];
        Self::start_ready(nats_url, &args).await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(self, within: Duration) -> Result<(), WorkerError> {
        self.inner
            .stop(within)
            .await
            .expect("worker drained in time")
    }

    /// Waits for `run` to return without signalling shutdown.
    pub async fn join(&mut self, within: Duration) -> Result<(), WorkerError> {
        self.inner
            .join(within)
            .await
            .expect("worker returned in time")
    }
}

/// A GET on the admin server: status and body.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// A gateway in this process, for the tests that go through HTTP; stops when dropped.
pub struct Gateway {
    pub addr: std::net::SocketAddr,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    _inner: flotilla_fleet::Gateway,
}

/// What the gateway answered: status, `X-Call-Id`, body.
pub struct Answer {
    pub status: u16,
    pub call_id: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Gateway {
    /// Starts a gateway with `args` (after the binary name) and waits until `/readyz` is 200.
    pub async fn start(args: &[&str]) -> Self {
        let mut all = vec!["--log", "warn", "--drain-delay", "0s"];
        all.extend_from_slice(args);
        let mut inner = flotilla_fleet::Gateway::start(all).await.unwrap();
        inner
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("gateway ready");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Self {
            addr: inner.addr(),
            client,
            _inner: inner,
        }
    }

    /// GETs `path`, which must answer 200 with JSON, and returns the JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let a = self
            .send(http::Method::GET, path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, 200, "GET {path}: {:?}", a.body);
        serde_json::from_slice(&a.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&a.body)))
    }

    /// POSTs NDJSON `lines` to `/async-batch/<function>`, which must answer 200, and returns each
    /// line's JSON result in order.
    #[allow(dead_code, reason = "not every test binary sends batches")]
    pub async fn post_batch(
        &self,
        function: &str,
        lines: impl Into<Bytes>,
    ) -> Vec<serde_json::Value> {
        let a = self
            .post(
                &format!("/async-batch/{function}"),
                &[("content-type", "application/x-ndjson")],
                lines,
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// POSTs `body` to `path` with `headers`, through a pooled client.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, hyper_util::client::legacy::Error> {
        self.send(http::Method::POST, path, headers, body).await
    }

    /// Sends `method` to `path` with `headers` and `body`, through a pooled client.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, hyper_util::client::legacy::Error> {
        use http_body_util::BodyExt;
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(http_body_util::Full::new(body.into())).unwrap();
        let resp = self.client.request(req).await?;
        let status = resp.status().as_u16();
        let call_id = resp
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Answer {
            status,
            call_id,
            headers: parts.headers,
            body,
        })
    }
}

/// The worker binary, configured through flags and env twins.
pub fn spawn_worker(nats_url: &str, template: &str, args: &[&str]) -> tokio::process::Child {
    let listen: &[&str] = if args.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-worker"))
        .args(listen)
        .args(args)
        .env("NATS_URL", nats_url)
        .env("FLOTILLA_FUNCTION_URL_TEMPLATE", template)
        .env("FLOTILLA_DISCOVERY_INTERVAL", "100ms")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn flotilla-worker")
}

/// Sends SIGTERM to a spawned worker.
pub fn sigterm(child: &tokio::process::Child) {
    signal(child.id().expect("running child"), "-TERM");
}

/// Sends `sig` (as `kill` spells it: `-TERM`, `-STOP`, `-CONT`) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill {sig}: {e}"));
    assert!(status.success(), "kill {sig} {pid}");
}

/// The value of the series `name` (with its labels) in a `/metrics` scrape, if it has it.
pub fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}
