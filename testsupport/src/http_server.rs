//! A recording HTTP server: plays a scripted function (status, headers, body, delay per request)
//! or a callback sink, and keeps every request it saw, how many ran at once, and the peak. It
//! serves `http://`, or `https://` behind a tokio-rustls acceptor ([`RecordingServer::start_tls`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A test client that connects and sends no request head is dropped after this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    /// A header's value as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// What to answer, and after how long.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Decides the reply to each request. Closures may keep their own state (counters, scripts).
pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    count: AtomicUsize,
    /// Requests whose client went away before the answer was sent.
    aborted: AtomicUsize,
    /// TLS handshakes that failed (the client refused the certificate, or showed none).
    handshake_failures: AtomicUsize,
}

/// Counts a request in flight while it is answered; dropped early (the client closed the
/// connection and hyper dropped the handler), it counts the request as aborted.
struct Answering<'a> {
    st: &'a State,
    done: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.st.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.st.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The server; it stops, with every connection, when dropped.
pub struct RecordingServer {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RecordingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingServer")
            .field("addr", &self.addr)
            .field("count", &self.count())
            .finish()
    }
}

impl RecordingServer {
    pub async fn start(handler: Handler) -> Self {
        Self::listen(handler, None, (std::net::Ipv4Addr::LOCALHOST, 0).into()).await
    }

    /// [`RecordingServer::start`] on `addr` (a lab host's address, in its namespace's runtime).
    pub async fn start_at(handler: Handler, addr: SocketAddr) -> Self {
        Self::listen(handler, None, addr).await
    }

    /// [`RecordingServer::start`] over TLS with `tls` (see `crate::tls::Certificates`): its URL
    /// is `https://127.0.0.1:port`. A failed handshake ends that connection and is counted.
    pub async fn start_tls(handler: Handler, tls: Arc<rustls::ServerConfig>) -> Self {
        let localhost = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        Self::listen(handler, Some(TlsAcceptor::from(tls)), localhost).await
    }

    async fn listen(handler: Handler, tls: Option<TlsAcceptor>, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            // Dropped with the task, which aborts every connection still open.
            let mut conns = JoinSet::new();
            let serve_one = |stream: TcpStream, _| {
                let (st, handler, tls) = (st.clone(), handler.clone(), tls.clone());
                conns.spawn(async move {
                    let svc = {
                        let st = st.clone();
                        service_fn(move |req| serve(req, st.clone(), handler.clone()))
                    };
                    let conn = flotilla_runtime::http1_server(HEADER_READ_TIMEOUT);
                    match tls {
                        None => {
                            let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        // The handshake runs in the connection's task, so a slow one never
                        // holds up the accept loop.
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                            }
                            Err(_) => {
                                st.handshake_failures.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
                while conns.try_join_next().is_some() {}
            };
            flotilla_runtime::accept_until(&listener, std::future::pending::<()>(), serve_one)
                .await;
        });
        Self {
            addr,
            scheme,
            state,
            task,
        }
    }

    /// Answers 200 with the request's body and content type (a function that echoes).
    pub async fn echo() -> Self {
        Self::start(Arc::new(|r: &Recorded| {
            let mut reply = Reply::status(200).body(r.body.clone());
            if let Some(ct) = r.headers.get("content-type").and_then(|v| v.to_str().ok()) {
                reply = reply.header("content-type", ct);
            }
            reply
        }))
        .await
    }

    /// Answers every request with `status` and an empty body (a callback sink).
    pub async fn answering(status: u16) -> Self {
        Self::start(Arc::new(move |_: &Recorded| Reply::status(status))).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>:port` (`https://` when started with TLS) with no trailing slash.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// TLS handshakes that failed so far: the client refused the certificate, or did not show
    /// one when asked.
    pub fn handshake_failures(&self) -> usize {
        self.state.handshake_failures.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Requests answered or being answered so far.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Requests whose client closed the connection before the answer was sent.
    pub fn aborted(&self) -> usize {
        self.state.aborted.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have fully arrived, or panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) {
        crate::wait::wait_until(timeout, &format!("{n} requests at {}", self.addr), || {
            self.state.requests.lock().expect("lock").len() >= n
        })
        .await;
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: Request<Incoming>,
    st: Arc<State>,
    handler: Handler,
) -> Result<Response<Full<Bytes>>, Infallible> {
    st.count.fetch_add(1, Ordering::SeqCst);
    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut answering = Answering {
        st: &st,
        done: false,
    };
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let reply = handler(&rec);
    st.requests.lock().expect("lock").push(rec);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    answering.done = true;
    drop(answering);
    let mut resp = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    Ok(resp
        .body(Full::new(reply.body))
        .expect("valid scripted response"))
}
