//! The yardstick: what this machine allows with the fleet's own libraries and none of its code,
//! each stage alone and then every stage at once, measured in the same run as the fleet so a
//! run's rates print as ratios. `Bench` holds what the measurements share; one method each.
//! Invariant: none of the gateway's or the worker's code runs here, and every measurement ends by
//! a time bound of its own. What each measures and why: `docs/ARCHITECTURE.md` (loadgen) and
//! `docs/loadgen.md`, "The ceiling"; what they measured: `docs/benchmarks.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use flotilla_fleet::{NatsError, NatsServer};
use futures_util::StreamExt;
use http::Uri;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CeilingArgs;
use crate::net::{self, HttpClient};
use crate::numbers::thousands;

const STREAM_IN: &str = "LOADGEN_CEILING_IN";
const SUBJECT_IN: &str = "loadgen.ceiling.in";
const STREAM_OUT: &str = "LOADGEN_CEILING_OUT";
/// The largest backlog of the consumer-per-function measurement.
const PER_FUNCTION_BACKLOG_MAX: u64 = 60_000;
const SUBJECT_OUT: &str = "loadgen.ceiling.out";

/// An error that caused another, kept whole for whoever walks the chain.
type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error("cannot bind a local port: {0}")]
    Bind(#[from] std::io::Error),
    #[error("NATS at {url}: {source}")]
    Nats {
        url: String,
        #[source]
        source: Cause,
    },
    #[error("cannot start nats-server: {0}")]
    NatsServer(#[from] NatsError),
    #[error(
        "{what}: no request succeeded (first error: {})",
        .first_error.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)
    )]
    NothingSucceeded {
        what: &'static str,
        #[source]
        first_error: Option<RequestFailure>,
    },
    #[error("{what}: no request succeeded (first error: no message was processed)")]
    NothingProcessed { what: &'static str },
    #[error("{what}: {done} of {expected} messages were processed in the time allowed")]
    Incomplete {
        what: &'static str,
        done: u64,
        expected: u64,
    },
}

/// Why one request of a closed loop failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestFailure {
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    #[error("timeout")]
    Timeout,
}

fn nats_err(url: &str, source: impl Into<Cause>) -> CeilingError {
    CeilingError::Nats {
        // The URL may carry a user and password; the line must not.
        url: flotilla_runtime::redacted_urls(url),
        source: source.into(),
    }
}

/// The rates, in calls per second, and how they were measured.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// HTTP POST → JetStream publish → PubAck → 202.
    pub http_to_jetstream_per_s: f64,
    /// JetStream pull → HTTP POST → ack.
    pub pull_post_ack_per_s: f64,
    /// JetStream pull → HTTP POST → second HTTP POST of the answer → ack: a call and its
    /// callback.
    pub pull_post_post_ack_per_s: f64,
    /// Pooled hyper POSTs to a bare server.
    pub http_post_per_s: f64,
    /// JetStream publishes with their PubAcks pipelined (a window in flight), no HTTP: what
    /// batch enqueue is measured against.
    pub pipelined_publish_per_s: f64,
    /// HTTP POST → JetStream publish → PubAck → 202 and, at the same time, JetStream pull → HTTP
    /// POST → second HTTP POST of the answer → ack: calls acked per second with every stage
    /// sharing the cores, as in a run of the whole fleet with callbacks.
    pub full_pipeline_per_s: f64,
    /// JetStream pull → HTTP POST → ack with one filtered durable consumer per function, over
    /// `functions` functions sharing one stream.
    pub per_function_pull_post_ack_per_s: f64,
    /// The function count of the per-function measurement (the run's `--functions`).
    pub functions: usize,
    /// Length of each HTTP-driven measurement.
    pub duration_s: f64,
    pub concurrency: usize,
    pub body_size: usize,
    /// `file` or `memory`: the streams' storage, as the fleet's.
    pub storage: &'static str,
}

/// Runs the measurements one after another against the NATS at `nats_url`. Leaves no stream
/// behind.
pub async fn measure(nats_url: &str, args: &CeilingArgs) -> Result<Ceiling, CeilingError> {
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let bench = Bench::start(nats_url, args, &stop).await?;
    // (c) pooled POSTs.
    let http_post = bench
        .hammer(&bench.function.function)
        .await
        .rate("pooled HTTP POSTs")?;
    // (a) HTTP into JetStream, then (f) JetStream alone.
    let js = jetstream::new(bench.connect().await?);
    let (front, http_to_js) = bench.http_into_jetstream(&js, &stop).await?;
    let pipelined_publish = bench.pipelined_publish(&js, http_to_js).await?;
    let _ = js.delete_stream(STREAM_IN).await;
    // (b) pull, POST, ack over a backlog sized to last about `duration` at the HTTP rate.
    let backlog = ((http_post * args.duration.as_secs_f64()) as u64).clamp(2_000, 400_000);
    let pull_post_ack = bench.pull_then_post(&js, &bench.function, backlog).await?;
    let _ = js.delete_stream(STREAM_OUT).await;
    // (d) the same with a second POST, over a backlog sized for half the rate.
    let pull_post_post_ack = bench
        .pull_then_post(&js, &bench.with_callback, (backlog / 2).max(2_000))
        .await?;
    let _ = js.delete_stream(STREAM_OUT).await;
    // (g) (a) and (d) at once: the closed loop into JetStream through the same front server while
    // a consumer drains that stream through the function and the callback receiver.
    let full_pipeline = bench.full_pipeline(&front).await?;
    // (e) the backlog of (b) spread over the run's functions, a consumer each.
    let per_function = if args.functions > 1 {
        bench.per_function(backlog).await?
    } else {
        pull_post_ack
    };
    Ok(Ceiling {
        http_to_jetstream_per_s: http_to_js,
        pull_post_ack_per_s: pull_post_ack,
        pull_post_post_ack_per_s: pull_post_post_ack,
        http_post_per_s: http_post,
        pipelined_publish_per_s: pipelined_publish,
        full_pipeline_per_s: full_pipeline,
        per_function_pull_post_ack_per_s: per_function,
        functions: args.functions,
        duration_s: args.duration.as_secs_f64(),
        concurrency: args.concurrency,
        body_size: args.body_size,
        storage: if args.memory_streams {
            "memory"
        } else {
            "file"
        },
    })
}

/// What every measurement of one [`measure`] shares: the NATS under measurement, the flags, the
/// client and body of every request, and the two bare servers a worker's requests land on.
struct Bench<'a> {
    nats_url: &'a str,
    args: &'a CeilingArgs,
    storage: stream::StorageType,
    client: HttpClient,
    body: Bytes,
    /// What a worker does with each message without a callback: POST it to the bare function.
    function: Route,
    /// The same, then the answer POSTed to the bare callback receiver before the ack.
    with_callback: Route,
}

impl<'a> Bench<'a> {
    /// Starts the bare function and the bare callback receiver (a port each, as the sink), both
    /// serving until `stop`.
    async fn start(
        nats_url: &'a str,
        args: &'a CeilingArgs,
        stop: &CancellationToken,
    ) -> Result<Self, CeilingError> {
        let client = net::client();
        let function = Route {
            client: client.clone(),
            function: bare_server("/", stop).await?,
            callback: None,
        };
        let with_callback = Route {
            callback: Some(bare_server("/callback", stop).await?),
            ..function.clone()
        };
        Ok(Self {
            nats_url,
            args,
            storage: if args.memory_streams {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            client,
            body: Bytes::from(vec![b'c'; args.body_size]),
            function,
            with_callback,
        })
    }

    /// A connection of its own to the NATS under measurement, with the credentials and TLS of
    /// the flags.
    async fn connect(&self) -> Result<async_nats::Client, CeilingError> {
        self.args
            .auth
            .apply(async_nats::ConnectOptions::new())
            .map_err(|e| nats_err(self.nats_url, e))?
            .connect(flotilla_runtime::server_list(self.nats_url))
            .await
            .map_err(|e| nats_err(self.nats_url, e))
    }

    /// The closed loop of the flags against `uri` with the shared client.
    async fn hammer(&self, uri: &Uri) -> Hammered {
        hammer(
            &self.client,
            uri,
            &self.body,
            self.args.concurrency,
            self.args.duration,
        )
        .await
    }

    /// (a): a front server that publishes each body to a fresh `STREAM_IN` and answers 202 after
    /// the PubAck, under the closed loop. The front server's URI (it serves until `stop`) and the
    /// rate.
    async fn http_into_jetstream(
        &self,
        js: &jetstream::Context,
        stop: &CancellationToken,
    ) -> Result<(Uri, f64), CeilingError> {
        fresh_work_queue(js, STREAM_IN, SUBJECT_IN, self.storage)
            .await
            .map_err(|e| nats_err(self.nats_url, e))?;
        let front = TcpListener::bind("127.0.0.1:0").await?;
        let front_uri = uri_of(&front, "/")?;
        let publisher = js.clone();
        net::serve(front, stop.clone(), move |req| {
            publish_one(publisher.clone(), req)
        });
        let rate = self.hammer(&front_uri).await.rate("HTTP into JetStream")?;
        Ok((front_uri, rate))
    }

    /// (f): JetStream alone, publishes pipelined into `STREAM_IN`: as many as HTTP into JetStream
    /// (at `http_to_js`) took twice the time for, so the measurement lasts about as long.
    async fn pipelined_publish(
        &self,
        js: &jetstream::Context,
        http_to_js: f64,
    ) -> Result<f64, CeilingError> {
        let published =
            ((http_to_js * self.args.duration.as_secs_f64() * 2.0) as u64).clamp(5_000, 2_000_000);
        let started = Instant::now();
        fill(js, published, &self.body, |_| SUBJECT_IN.to_owned())
            .await
            .map_err(|e| nats_err(self.nats_url, e))?;
        Ok(published as f64 / started.elapsed().as_secs_f64())
    }

    /// (e): the pull backlog spread over the run's functions, a consumer each. Bounded: with
    /// many functions this drain is slow, and its rate settles long before. The yardstick beside
    /// the others: a failure of the measurement itself leaves it out (0, no ratio) rather than
    /// ending the run.
    async fn per_function(&self, backlog: u64) -> Result<f64, CeilingError> {
        let js = jetstream::new(self.connect().await?);
        let shape = PerFunction {
            backlog: backlog.min(PER_FUNCTION_BACKLOG_MAX),
            functions: self.args.functions,
            streams: 1,
            concurrency: self.args.concurrency,
        };
        let uri = &self.function.function;
        let measured =
            pull_post_ack_per_function(&js, self.storage, &self.client, uri, &self.body, shape);
        Ok(match measured.await {
            Ok(rate) => rate,
            Err(error) => {
                tracing::warn!(%error, "the consumer-per-function ceiling is left out");
                0.0
            }
        })
    }
}

/// A bare HTTP server on a port of its own that reads each body and answers 200, until `stop`;
/// its URI with `path`.
async fn bare_server(path: &str, stop: &CancellationToken) -> Result<Uri, CeilingError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let uri = uri_of(&listener, path)?;
    net::serve_bare(listener, stop.clone());
    Ok(uri)
}

/// `http://<listener's address><path>`.
fn uri_of(listener: &TcpListener, path: &str) -> Result<Uri, CeilingError> {
    Ok(format!("http://{}{path}", listener.local_addr()?)
        .parse()
        .expect("a socket address makes a valid URI"))
}

/// One request to the front server: publishes its body to `SUBJECT_IN` and answers 202 once
/// JetStream acknowledged it, 503 when it did not.
async fn publish_one(
    js: jetstream::Context,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return net::respond(400, Bytes::new()),
    };
    match js.publish(SUBJECT_IN, body).await {
        Ok(ack) => match ack.await {
            Ok(_) => net::respond(202, Bytes::new()),
            Err(_) => net::respond(503, Bytes::new()),
        },
        Err(_) => net::respond(503, Bytes::new()),
    }
}

/// What a closed loop achieved.
struct Hammered {
    ok: u64,
    elapsed: Duration,
    first_error: Option<RequestFailure>,
}

impl Hammered {
    fn rate(self, what: &'static str) -> Result<f64, CeilingError> {
        if self.ok == 0 {
            return Err(CeilingError::NothingSucceeded {
                what,
                first_error: self.first_error,
            });
        }
        Ok(self.ok as f64 / self.elapsed.as_secs_f64())
    }
}

/// `concurrency` loops POSTing `body` to `uri` for `duration`; counts 2xx answers.
async fn hammer(
    client: &HttpClient,
    uri: &Uri,
    body: &Bytes,
    concurrency: usize,
    duration: Duration,
) -> Hammered {
    let ok = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<RequestFailure>));
    let tracker = TaskTracker::new();
    let start = Instant::now();
    let deadline = start + duration;
    for _ in 0..concurrency {
        let (client, uri, body) = (client.clone(), uri.clone(), body.clone());
        let (ok, first_error) = (ok.clone(), first_error.clone());
        tracker.spawn(async move {
            while Instant::now() < deadline {
                let req = hyper::Request::post(uri.clone())
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(body.clone()))
                    .expect("static request parts are valid");
                let res = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
                let err = match res {
                    Ok(Ok(resp)) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(Ok(resp)) => RequestFailure::Status(resp.status()),
                    Ok(Err(e)) => RequestFailure::Client(e),
                    Err(_) => RequestFailure::Timeout,
                };
                if let Ok(mut f) = first_error.lock() {
                    f.get_or_insert(err);
                }
                // A failing target must not turn the loop into a busy spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    let first_error = first_error.lock().ok().and_then(|mut f| f.take());
    Hammered {
        ok: ok.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        first_error,
    }
}

/// What a worker does with a pulled message, with the fleet's libraries and none of its code.
#[derive(Debug, Clone)]
struct Route {
    client: HttpClient,
    /// Where each message's payload is POSTed: the bare function.
    function: Uri,
    /// Where the function's answer is POSTed before the ack, for calls with a callback.
    callback: Option<Uri>,
}

impl Route {
    /// POSTs the message (and its answer, with a callback), then acks it; whether it was acked.
    /// A message that fails is left unacked.
    async fn call(&self, msg: jetstream::Message) -> bool {
        let mut answered = post(&self.client, self.function.clone(), msg.payload.clone()).await;
        if let Some(callback) = &self.callback
            && let Some(answer) = answered.take()
        {
            answered = post(&self.client, callback.clone(), answer).await;
        }
        answered.is_some() && msg.ack().await.is_ok()
    }

    /// The pull measurement this route makes, as its errors name it.
    fn what(&self) -> &'static str {
        if self.callback.is_some() {
            "JetStream pull, POST, POST, ack"
        } else {
            "JetStream pull, POST, ack"
        }
    }
}

/// Messages on their way down a route: each in a task of its own, at most as many at once as
/// there are slots, the acked ones counted.
#[derive(Clone)]
struct InFlight {
    route: Route,
    slots: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    tracker: TaskTracker,
}

impl InFlight {
    fn new(route: Route, slots: usize) -> Self {
        Self {
            route,
            slots: Arc::new(Semaphore::new(slots)),
            acked: Arc::new(AtomicU64::new(0)),
            tracker: TaskTracker::new(),
        }
    }

    /// Waits for a free slot, then sends `msg` down the route in a task that holds the slot
    /// until the call ends. False when no slot can be had any more.
    async fn send(&self, msg: jetstream::Message) -> bool {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        let (route, acked) = (self.route.clone(), self.acked.clone());
        self.tracker.spawn(async move {
            let _slot = slot;
            if route.call(msg).await {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        });
        true
    }

    /// Takes no more calls and waits for those sent to end.
    async fn finish(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Messages acked so far.
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
}

/// What a pull loop achieved.
struct Drained {
    /// Messages acked after their route.
    done: u64,
    /// From the loop's start until its last call ended.
    elapsed: Duration,
}

/// Takes messages from `messages` until `total` of them were taken, each sent down `route` in a
/// task of its own, `args.concurrency` at most at once. `total` may change while the loop runs,
/// for a stream that is still being filled: the filler says how many it put in once it knows.
/// Ends, calls included, by `args.duration` × 5 + 5 s from its start: generous, since what is
/// drained is sized for about `duration`, yet a slow machine still ends.
async fn drain(
    messages: &mut pull::Stream,
    route: &Route,
    mut total: watch::Receiver<u64>,
    args: &CeilingArgs,
) -> Drained {
    let in_flight = InFlight::new(route.clone(), args.concurrency);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + args.duration * 5 + Duration::from_secs(5);
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    let mut taken = 0u64;
    while taken < *total.borrow_and_update() {
        let msg = tokio::select! {
            next = messages.next() => match next {
                Some(Ok(msg)) => msg,
                // A missed heartbeat or a pull status: the stream goes on with a new request.
                Some(Err(_)) => continue,
                None => break,
            },
            // The filler has told how many there are: look again before waiting on.
            Ok(()) = total.changed() => continue,
            () = &mut expired => break,
        };
        if !in_flight.send(msg).await {
            break;
        }
        taken += 1;
    }
    let _ = tokio::time::timeout_at(deadline, in_flight.finish()).await;
    Drained {
        done: in_flight.acked(),
        elapsed: start.elapsed(),
    }
}

impl Bench<'_> {
    /// (b) and (d): pulls `backlog` messages pre-filled into a fresh `STREAM_OUT` (from a
    /// connection of its own) and sends each down `route`. Calls per second.
    async fn pull_then_post(
        &self,
        js: &jetstream::Context,
        route: &Route,
        backlog: u64,
    ) -> Result<f64, CeilingError> {
        let stream = fresh_work_queue(js, STREAM_OUT, SUBJECT_OUT, self.storage)
            .await
            .map_err(|e| nats_err(self.nats_url, e))?;
        let filler = jetstream::new(self.connect().await?);
        fill(&filler, backlog, &self.body, |_| SUBJECT_OUT.to_owned())
            .await
            .map_err(|e| nats_err(self.nats_url, e))?;
        let mut messages = self.pull_consumer(&stream).await?;
        // The count is known and stays.
        let (_known, total) = watch::channel(backlog);
        let drained = drain(&mut messages, route, total, self.args).await;
        if drained.done == 0 {
            return Err(CeilingError::NothingProcessed { what: route.what() });
        }
        Ok(drained.done as f64 / drained.elapsed.as_secs_f64())
    }

    /// (g), the whole pipeline at once: the closed loop POSTs into JetStream through the front
    /// server at `front` (which publishes to `SUBJECT_IN`) for `args.duration` while one pull
    /// consumer on that stream, on a connection of its own as a worker's, sends each message
    /// through the function and the callback receiver. Calls acked per second, from the load's
    /// start until the last call ended; every call answered 202 must be acked within the pull
    /// loop's time.
    async fn full_pipeline(&self, front: &Uri) -> Result<f64, CeilingError> {
        const WHAT: &str = "full pipeline";
        let args = self.args;
        let js = jetstream::new(self.connect().await?);
        let stream = fresh_work_queue(&js, STREAM_IN, SUBJECT_IN, self.storage)
            .await
            .map_err(|e| nats_err(self.nats_url, e))?;
        let mut messages = self.pull_consumer(&stream).await?;
        // Unknown until the load ends; until then the loop takes whatever arrives.
        let (accepted_tx, total) = watch::channel(u64::MAX);
        let (loaded, drained) = tokio::join!(
            async {
                // A client of its own, as the load generator's is apart from the workers'.
                let client = net::client();
                let loaded = hammer(&client, front, &self.body, args.concurrency, args.duration);
                let loaded = loaded.await;
                accepted_tx.send_replace(loaded.ok);
                loaded
            },
            drain(&mut messages, &self.with_callback, total, args),
        );
        let _ = js.delete_stream(STREAM_IN).await;
        let accepted = loaded.ok;
        // Nothing accepted: the load's first error says why.
        loaded.rate(WHAT)?;
        if drained.done < accepted {
            return Err(CeilingError::Incomplete {
                what: WHAT,
                done: drained.done,
                expected: accepted,
            });
        }
        Ok(drained.done as f64 / drained.elapsed.as_secs_f64())
    }

    /// The one pull consumer of a single-consumer measurement, its messages flowing: durable,
    /// explicit acks, `args.concurrency` unacked at most.
    async fn pull_consumer(&self, stream: &stream::Stream) -> Result<pull::Stream, CeilingError> {
        stream
            .create_consumer(pull::Config {
                durable_name: Some("ceiling".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: self.args.concurrency as i64,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err(self.nats_url, e))?
            .messages()
            .await
            .map_err(|e| nats_err(self.nats_url, e))
    }
}

/// An empty work-queue stream `name` on `subject` (one left by an earlier run is deleted first).
async fn fresh_work_queue(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    storage: stream::StorageType,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage,
        ..Default::default()
    })
    .await
}

/// Publishes `backlog` copies of `body`, message `i` to `subject_of(i)`, a window of 1,024
/// PubAcks awaited at a time: the pre-filled backlog of every pull measurement.
pub async fn fill(
    js: &jetstream::Context,
    backlog: u64,
    body: &Bytes,
    subject_of: impl Fn(u64) -> String,
) -> Result<(), jetstream::context::PublishError> {
    let mut window = Vec::with_capacity(1024);
    for i in 0..backlog {
        window.push(js.publish(subject_of(i), body.clone()).await?);
        if window.len() == 1024 || i + 1 == backlog {
            for ack in window.drain(..) {
                ack.await?;
            }
        }
    }
    Ok(())
}

/// The shape of a per-function measurement.
#[derive(Debug, Clone, Copy)]
pub struct PerFunction {
    /// Messages in all, spread evenly (round robin) over the functions.
    pub backlog: u64,
    pub functions: usize,
    /// Streams the functions are spread over (function `f` on stream `f % streams`): 1 is
    /// Flotilla's shard of many functions; `functions` is a stream per function.
    pub streams: usize,
    /// Messages in flight in all, shared equally among the functions.
    pub concurrency: usize,
}

fn per_function_stream(i: usize) -> String {
    format!("LOADGEN_CEILING_FN_{i}")
}

fn per_function_subject(stream: usize, function: usize) -> String {
    format!("loadgen.ceiling.fn.{stream}.f{function}")
}

/// Fills `shape.streams` streams with `shape.backlog` messages interleaved over
/// `shape.functions` subjects, then drains them with one filtered durable consumer per function,
/// each pulling its equal share of `shape.concurrency`: every message POSTed to `uri`, then acked.
/// Calls per second. Leaves no stream behind. A consumer that waits 30 s for a message gives up;
/// then the measurement is incomplete.
pub async fn pull_post_ack_per_function(
    js: &jetstream::Context,
    storage: stream::StorageType,
    client: &HttpClient,
    uri: &Uri,
    body: &Bytes,
    shape: PerFunction,
) -> Result<f64, CeilingError> {
    let functions = shape.functions.max(1);
    let streams = shape.streams.clamp(1, functions);
    fill_per_function(js, storage, body, shape.backlog, functions, streams).await?;
    let share = (shape.concurrency / functions).max(1);
    // Consumers first: creating hundreds of them is set-up, not what a drain costs.
    let consumers = per_function_consumers(js, functions, streams, share).await?;
    let route = Route {
        client: client.clone(),
        function: uri.clone(),
        callback: None,
    };
    let in_flight = InFlight::new(route, shape.concurrency.max(1));
    let start = Instant::now();
    let pullers: Vec<_> = consumers
        .into_iter()
        .enumerate()
        .map(|(f, consumer)| {
            let expected = shape.backlog / functions as u64
                + u64::from((f as u64) < shape.backlog % functions as u64);
            tokio::spawn(pull_share(consumer, expected, share, in_flight.clone()))
        })
        .collect();
    for p in pullers {
        let _ = p.await;
    }
    in_flight.finish().await;
    let elapsed = start.elapsed();
    for s in 0..streams {
        let _ = js.delete_stream(per_function_stream(s)).await;
    }
    let done = in_flight.acked();
    if done < shape.backlog {
        return Err(CeilingError::Incomplete {
            what: "JetStream pull, POST, ack with a consumer per function",
            done,
            expected: shape.backlog,
        });
    }
    Ok(done as f64 / elapsed.as_secs_f64())
}

/// A failure of NATS in the per-function measurement.
fn per_function_failed(source: impl Into<Cause>) -> CeilingError {
    CeilingError::Nats {
        url: "(per-function measurement)".into(),
        source: source.into(),
    }
}

/// Fresh `streams` streams holding `backlog` messages, round robin over `functions` subjects
/// (function `f` on stream `f % streams`).
async fn fill_per_function(
    js: &jetstream::Context,
    storage: stream::StorageType,
    body: &Bytes,
    backlog: u64,
    functions: usize,
    streams: usize,
) -> Result<(), CeilingError> {
    for s in 0..streams {
        let subjects = format!("loadgen.ceiling.fn.{s}.>");
        fresh_work_queue(js, &per_function_stream(s), &subjects, storage)
            .await
            .map_err(per_function_failed)?;
    }
    fill(js, backlog, body, |i| {
        let f = i as usize % functions;
        per_function_subject(f % streams, f)
    })
    .await
    .map_err(per_function_failed)
}

/// One filtered durable consumer per function, each with `share` messages unacked at most.
async fn per_function_consumers(
    js: &jetstream::Context,
    functions: usize,
    streams: usize,
    share: usize,
) -> Result<Vec<jetstream::consumer::PullConsumer>, CeilingError> {
    let mut consumers = Vec::with_capacity(functions);
    for f in 0..functions {
        let consumer = js
            .get_stream(per_function_stream(f % streams))
            .await
            .map_err(per_function_failed)?
            .create_consumer(pull::Config {
                durable_name: Some(format!("f{f}")),
                filter_subject: per_function_subject(f % streams, f),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: share as i64,
                ..Default::default()
            })
            .await
            .map_err(per_function_failed)?;
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Takes `expected` messages from one function's consumer, `batch` per pull, and sends each down
/// `in_flight`. Gives up when a message takes 30 s to come.
async fn pull_share(
    consumer: jetstream::consumer::PullConsumer,
    expected: u64,
    batch: usize,
    in_flight: InFlight,
) {
    let Ok(mut messages) = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
    else {
        return;
    };
    let mut taken = 0;
    while taken < expected {
        let msg = match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(Ok(msg))) => msg,
            // A missed heartbeat or a pull status: the stream goes on with a new request.
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => return,
        };
        taken += 1;
        if !in_flight.send(msg).await {
            return;
        }
    }
}

/// POSTs `body` to `uri` through the pooled client; the answer's body, or `None` on any failure.
async fn post(client: &HttpClient, uri: Uri, body: Bytes) -> Option<Bytes> {
    let req = hyper::Request::post(uri)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .expect("static request parts are valid");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    resp.into_body().collect().await.ok().map(|b| b.to_bytes())
}

/// Starts a temporary nats-server and waits until JetStream answers; it stops when the returned
/// value is dropped.
pub async fn start_nats() -> Result<NatsServer, CeilingError> {
    let server = NatsServer::launch().await?;
    server.client().await?;
    Ok(server)
}

/// A plain-text rendering of the ceiling, for people.
pub fn render(c: &Ceiling) -> String {
    format!(
        "ceiling ({} B bodies, {} in flight, {} storage, {:.1} s each):\n  \
         HTTP → JetStream (PubAck)   {:>10}/s\n  \
         JetStream pull → POST → ack {:>10}/s\n  \
         pull → POST → POST → ack    {:>10}/s\n  \
         pull → POST → ack, {:>5} consumers {:>6}/s\n  \
         pooled HTTP POSTs           {:>10}/s\n  \
         pipelined JetStream publish {:>10}/s\n  \
         full pipeline, all at once  {:>10}/s\n",
        c.body_size,
        c.concurrency,
        c.storage,
        c.duration_s,
        thousands(c.http_to_jetstream_per_s),
        thousands(c.pull_post_ack_per_s),
        thousands(c.pull_post_post_ack_per_s),
        c.functions,
        thousands(c.per_function_pull_post_ack_per_s),
        thousands(c.http_post_per_s),
        thousands(c.pipelined_publish_per_s),
        thousands(c.full_pipeline_per_s),
    )
}

/// `flotilla-loadgen ceiling`: measure and print.
pub async fn run_command(args: &CeilingArgs) -> Result<Ceiling, CeilingError> {
    let (_server, url) = match &args.nats_url {
        Some(u) => (None, u.clone()),
        None => {
            let s = start_nats().await?;
            let u = s.url();
            (Some(s), u)
        }
    };
    let c = measure(&url, args).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&c).expect("plain data serializes")
        );
    } else {
        print!("{}", render(&c));
    }
    Ok(c)
}
