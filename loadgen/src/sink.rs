//! The built-in callback sink: the end of the line for every call. It records only what the audit
//! and the end-to-end latency need (call id, arrival, status, the fleet's acceptance stamp) and
//! answers 200 at once, so it never becomes the bottleneck it is measuring.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use flotilla_queue::headers::{X_CALL_ID, X_FUNCTION_STATUS, X_START_TIME};
use http::HeaderName;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::net::{self, Clock};

/// One callback as it arrived (or, with `--no-callbacks`, one call as it reached the built-in
/// function).
#[derive(Debug, Clone)]
pub struct Callback {
    pub call_id: String,
    /// Nanoseconds since the run's clock origin.
    pub arrived_ns: u64,
    /// `X-Function-Status` (the status the built-in function answered, with `--no-callbacks`); 0
    /// when absent or unreadable.
    pub status: u16,
    /// `X-Start-Time`: Unix nanoseconds at which the gateway accepted the call.
    pub start_unix_ns: Option<u128>,
}

#[derive(Debug, Default)]
pub struct SinkState {
    callbacks: Mutex<Vec<Callback>>,
    count: AtomicU64,
}

impl SinkState {
    /// Callbacks received so far (duplicates included).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Records one arrival.
    pub fn record(&self, cb: Callback) {
        if let Ok(mut v) = self.callbacks.lock() {
            v.push(cb);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets every callback so far (the warm-up's).
    pub fn reset(&self) {
        if let Ok(mut v) = self.callbacks.lock() {
            v.clear();
            self.count.store(0, Ordering::Relaxed);
        }
    }

    /// Every callback so far.
    pub fn take(&self) -> Vec<Callback> {
        self.callbacks.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// The sink, listening until `stop`.
#[derive(Debug)]
pub struct CallbackSink {
    pub addr: SocketAddr,
    pub state: Arc<SinkState>,
    task: JoinHandle<()>,
}

pub(crate) fn header<'a>(h: &'a http::HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl CallbackSink {
    pub fn start(
        listener: TcpListener,
        clock: Clock,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(SinkState::default());
        let st = state.clone();
        let task = net::serve(
            listener,
            stop,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let st = st.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    // Drain the body so the connection can be reused; its content is not needed.
                    let _ = body.collect().await;
                    let arrived_ns = clock.now_ns();
                    let Some(call_id) = header(&parts.headers, &X_CALL_ID) else {
                        return net::respond(400, Bytes::from_static(b"X-Call-Id missing\n"));
                    };
                    let cb = Callback {
                        call_id: call_id.to_owned(),
                        arrived_ns,
                        status: header(&parts.headers, &X_FUNCTION_STATUS)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        start_unix_ns: header(&parts.headers, &X_START_TIME)
                            .and_then(|s| s.parse().ok()),
                    };
                    st.record(cb);
                    net::respond(200, Bytes::new())
                }
            },
        );
        Ok(Self { addr, state, task })
    }

    /// Waits for the server loop to end after its token fired.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}
