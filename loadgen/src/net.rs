//! The bare HTTP plumbing every part of the loadgen shares: a hyper/1 server over an injected
//! listener (the fleet's one accept loop, `flotilla_runtime::accept_until`) that stops on a token,
//! a pooled client, and a shared clock. The ceiling uses the very same pieces, so the fleet and
//! its yardstick pay the same HTTP costs.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The pooled client all loadgen requests go through.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client with as many idle connections as the load keeps in flight.
pub fn client() -> HttpClient {
    flotilla_runtime::pooled_client(flotilla_runtime::PoolSettings {
        max_idle_per_host: 100_000,
        ..Default::default()
    })
}

/// How long a connection may take to send a request head before it is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `handler` on `listener` until `stop` fires; connections still open then are dropped.
pub fn serve<F, Fut>(listener: TcpListener, stop: CancellationToken, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        flotilla_runtime::accept_until(&listener, stop.cancelled(), |stream, _peer| {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(stream, handler.clone(), stop.clone()));
        })
        .await;
    })
}

/// Serves the barest HTTP server on `listener` until `stop` fires: each request's body is read
/// and answered 200 with an empty body. What the ceiling and the examples POST to.
pub fn serve_bare(listener: TcpListener, stop: CancellationToken) -> JoinHandle<()> {
    serve(listener, stop, |req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        respond(200, Bytes::new())
    })
}

/// One connection of [`serve`]: its requests go to `handler` until the client closes it or
/// `stop` fires.
async fn serve_connection<F, Fut>(stream: TcpStream, handler: Arc<F>, stop: CancellationToken)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let svc = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let conn = flotilla_runtime::http1_server(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = stop.cancelled() => {}
    }
}

/// A response with a status and a body.
pub fn respond(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r
}

/// One time origin for the whole run: monotonic offsets for measuring, plus the wall clock at
/// the origin to compare with the `X-Start-Time` stamps the fleet writes.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_unix_ns: u128,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            origin_unix_ns: flotilla_queue::time::unix_nanos(),
        }
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The Unix time, in nanoseconds, of an offset from the origin.
    pub fn unix_ns_of(&self, offset_ns: u64) -> u128 {
        self.origin_unix_ns + u128::from(offset_ns)
    }

    /// Nanoseconds since the origin of a Unix time (0 before the origin).
    pub fn ns_of_unix(&self, unix_ns: u128) -> u64 {
        u64::try_from(unix_ns.saturating_sub(self.origin_unix_ns)).unwrap_or(u64::MAX)
    }
}
