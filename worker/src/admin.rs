//! The admin server: `/healthz`, `/readyz` and `/metrics` on the injected listener. It is the
//! only HTTP the worker serves; calls never come in this way.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_runtime::Telemetry;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics::Gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Readiness;

/// A client that has not sent its request headers within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin server while it runs; stopped when dropped.
pub(crate) struct AdminServer {
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Serves `/healthz`, `/readyz` and `/metrics` (this worker's `telemetry`) on `listener`
    /// until stopped or dropped.
    pub(crate) fn start(
        listener: TcpListener,
        ready: Arc<Readiness>,
        telemetry: &Telemetry,
    ) -> Self {
        let metrics = Scrape {
            handle: telemetry.handle().clone(),
            nats_connected: crate::metrics::nats_connected(telemetry),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, ready, metrics, stop.clone()));
        Self {
            stop: stop.drop_guard(),
            task,
        }
    }

    /// Stops serving and waits until the listener is closed.
    pub(crate) async fn stop(self) {
        self.stop.disarm().cancel();
        let _ = self.task.await;
    }
}

/// What `/metrics` reads: the recorder's handle, and the gauge set from readiness first.
#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    nats_connected: Gauge,
}

/// Serves until `stop` fires, then drops every open connection.
async fn serve(
    listener: TcpListener,
    ready: Arc<Readiness>,
    metrics: Scrape,
    stop: CancellationToken,
) {
    // Dropped on return, which drops every connection still open.
    let mut conns = JoinSet::new();
    let serve_one = |stream: TcpStream, _| {
        let (ready, metrics) = (ready.clone(), metrics.clone());
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let (ready, metrics) = (ready.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(route(&req, &ready, &metrics)) }
            });
            let _ = flotilla_runtime::http1_server(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    };
    flotilla_runtime::accept_until(&listener, stop.cancelled(), serve_one).await;
}

fn route(req: &Request<Incoming>, ready: &Readiness, metrics: &Scrape) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match ready.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why.into_owned()),
        },
        "/metrics" => {
            let up = ready.nats_connected();
            metrics.nats_connected.set(if up { 1.0 } else { 0.0 });
            let body = flotilla_runtime::render(&metrics.handle, "flotilla-worker");
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}
