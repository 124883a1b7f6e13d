//! The built-in function server of `--local`: one port, routed by path (`/<function>/...`), with a
//! configurable latency distribution, failure rate and response size. It stands in for real
//! functions so a run measures the fleet, not someone's business logic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::headers::{X_CALL_ID, X_START_TIME};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::capacity::Capacity;
use crate::dist::LatencyDist;
use crate::net::{self, Clock};
use crate::sink::{Callback, SinkState, header};

/// How the built-in function behaves.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub latency: LatencyDist,
    /// Share of calls answered 500.
    pub failure_rate: f64,
    /// Bytes in every response body.
    pub response_size: usize,
    pub seed: u64,
    /// Calls taken at once; beyond it the function answers 429 at once. `None`: no limit.
    pub capacity: Option<Capacity>,
    /// Answer each call with its own request body instead of `response_size` bytes.
    pub echo: bool,
    /// Record every call's `X-Call-Id` as it arrives (`--no-callbacks`: the function's arrivals
    /// are what the audit counts, as the sink's callbacks are otherwise).
    pub record_arrivals: bool,
    /// Record every call as it starts (before its latency), for start latency by priority.
    pub record_starts: bool,
}

#[derive(Debug, Default)]
pub struct FunctionStats {
    /// Calls answered (retries included).
    pub calls: AtomicU64,
    /// Calls answered 500 on purpose.
    pub failures: AtomicU64,
    /// Calls answered 429 because the function was at its capacity.
    pub refused: AtomicU64,
    /// Calls being served now (those within capacity).
    active: AtomicU32,
    /// When the capacity schedule began, in nanoseconds of the run's clock; 0 until
    /// [`FunctionServer::start_capacity_clock`].
    capacity_epoch_ns: AtomicU64,
}

/// Takes a call within the function's capacity; gives the place back when dropped.
struct Taken<'a>(&'a AtomicU32);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FunctionStats {
    /// A place for one call within `capacity` now, or `None` when the function is full.
    fn take(&self, capacity: Option<&Capacity>, clock: &Clock) -> Option<Taken<'_>> {
        let now = self.active.fetch_add(1, Ordering::Relaxed);
        let taken = Taken(&self.active);
        let Some(capacity) = capacity else {
            return Some(taken);
        };
        let now_ns = clock.now_ns().max(1);
        // The first call starts the schedule unless the run started it already.
        let epoch = match self.capacity_epoch_ns.compare_exchange(
            0,
            now_ns,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_ns,
            Err(e) => e,
        };
        let since = Duration::from_nanos(now_ns.saturating_sub(epoch));
        (now < capacity.at(since)).then_some(taken)
    }
}

#[derive(Debug)]
pub struct FunctionServer {
    pub addr: SocketAddr,
    pub stats: Arc<FunctionStats>,
    /// Calls as they arrived, when `record_arrivals`.
    pub arrivals: Arc<SinkState>,
    /// Calls as they started (taken within capacity), when `record_starts`.
    pub starts: Arc<SinkState>,
    task: JoinHandle<()>,
}

impl FunctionServer {
    pub fn start(
        listener: TcpListener,
        spec: FunctionSpec,
        clock: Clock,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(FunctionStats::default());
        let arrivals = Arc::new(SinkState::default());
        let arr = arrivals.clone();
        let starts = Arc::new(SinkState::default());
        let started = starts.clone();
        let body = Bytes::from(vec![b'r'; spec.response_size]);
        // One generator for the whole server: a mutex held for a few nanoseconds per call keeps
        // the run repeatable from its seed.
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(spec.seed)));
        let st = stats.clone();
        let task = net::serve(
            listener,
            stop,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (st, rng, body, arr) = (st.clone(), rng.clone(), body.clone(), arr.clone());
                let started = started.clone();
                let (latency, failure_rate, record) =
                    (spec.latency, spec.failure_rate, spec.record_arrivals);
                let capacity = spec.capacity.clone();
                let (echo, record_start) = (spec.echo, spec.record_starts);
                async move {
                    let (parts, req_body) = req.into_parts();
                    let sent = req_body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let Some(_taken) = st.take(capacity.as_ref(), &clock) else {
                        st.refused.fetch_add(1, Ordering::Relaxed);
                        return net::respond(429, Bytes::from_static(b"at capacity\n"));
                    };
                    if record_start && let Some(call_id) = header(&parts.headers, &X_CALL_ID) {
                        started.record(Callback {
                            call_id: call_id.to_owned(),
                            arrived_ns: clock.now_ns(),
                            status: 0,
                            start_unix_ns: header(&parts.headers, &X_START_TIME)
                                .and_then(|s| s.parse().ok()),
                        });
                    }
                    let (delay, fail) = match rng.lock() {
                        Ok(mut r) => (latency.sample(&mut r), r.f64() < failure_rate),
                        Err(_) => (Duration::ZERO, false),
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    st.calls.fetch_add(1, Ordering::Relaxed);
                    if record && let Some(call_id) = header(&parts.headers, &X_CALL_ID) {
                        arr.record(Callback {
                            call_id: call_id.to_owned(),
                            arrived_ns: clock.now_ns(),
                            status: if fail { 500 } else { 200 },
                            start_unix_ns: header(&parts.headers, &X_START_TIME)
                                .and_then(|s| s.parse().ok()),
                        });
                    }
                    if fail {
                        st.failures.fetch_add(1, Ordering::Relaxed);
                        return net::respond(500, Bytes::from_static(b"injected failure\n"));
                    }
                    net::respond(200, if echo { sent } else { body })
                }
            },
        );
        Ok(Self {
            addr,
            stats,
            arrivals,
            starts,
            task,
        })
    }

    /// The capacity schedule's time starts now (the load, or the drain, begins).
    pub fn start_capacity_clock(&self, clock: &Clock) {
        self.stats
            .capacity_epoch_ns
            .store(clock.now_ns().max(1), Ordering::Relaxed);
    }

    /// The URL template that routes `{name}` to this server.
    pub fn url_template(&self) -> String {
        format!("http://{}/{{name}}", self.addr)
    }

    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// `flotilla-loadgen function`: the built-in function alone, answering every call with its own
/// body after `args.latency`, until SIGTERM or Ctrl-C.
pub async fn serve_alone(args: &crate::config::FunctionArgs) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let stop = CancellationToken::new();
    let spec = FunctionSpec {
        latency: args.latency,
        failure_rate: 0.0,
        response_size: 0,
        seed: 1,
        record_arrivals: false,
        record_starts: false,
        capacity: None,
        echo: true,
    };
    let server = FunctionServer::start(listener, spec, Clock::new(), stop.clone())?;
    eprintln!(
        "flotilla-loadgen: function listening on http://{}/{{name}} (each call takes {})",
        server.addr, args.latency
    );
    flotilla_runtime::shutdown_signal().await;
    stop.cancel();
    server.stopped().await;
    Ok(())
}
