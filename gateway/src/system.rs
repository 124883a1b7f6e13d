//! The operator's routes: `/healthz`, `/readyz`, `/metrics` and `/system/*` (basic auth when
//! configured, and state changes only from the same site; the dead-letter routes live in
//! `dead_letters.rs`, the console in `console.rs`). None of them is on the hot
//! path; they may allocate and speak JSON.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::{CallError, json_response, text_response};
use crate::state::{NoQueues, State};
use crate::{console, dead_letters};

const GET_ONLY: &str = "GET, HEAD";

pub async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    let path = req.uri().path();
    let is_system = path == "/system" || path.starts_with("/system/");
    if !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/system/info") && !is_system {
        return Err(CallError::NotFound);
    }
    if is_system {
        state.auth.check(req.headers())?;
    }
    if is_system && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        console::check_same_site(req.headers())?;
    }
    if path == console::PREFIX || path.starts_with("/system/ui/") {
        return console::serve(req.method(), path);
    }
    if path == "/system/queues" {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(CallError::MethodNotAllowed { allow: GET_ONLY });
        }
        return queues(state).await;
    }
    if path != "/system/info" && is_system {
        return dead_letters::route(state, req).await;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(CallError::MethodNotAllowed { allow: GET_ONLY });
    }
    Ok(match path {
        "/healthz" => text_response(StatusCode::OK, "ok\n".into()),
        "/readyz" => match state.readiness().await {
            Ok(()) => text_response(StatusCode::OK, "ready\n".into()),
            Err(reason) => {
                let mut resp = text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{reason}\n").into(),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, state.admission.retry_after.clone());
                resp
            }
        },
        "/metrics" => {
            state.metrics.nats_connected(state.nats.connected());
            refresh_queue_gauges(state).await;
            let mut resp = Response::new(Body::full(state.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => info(state),
    })
}

/// OpenFaaS's `/system/info` shape, plus the shard count, stream names, and `warnings`: what the
/// operator should know of the streams (settings that differ from the flags), empty when none.
fn info(state: &State) -> Response<Body> {
    let topology = state.streams.topology.get().map(|(t, _)| *t);
    let streams: Vec<String> = topology
        .map(|t| {
            (0..t.shards)
                .map(flotilla_queue::subjects::call_stream)
                .chain(std::iter::once(
                    flotilla_queue::subjects::DEAD_STREAM.to_owned(),
                ))
                .collect()
        })
        .unwrap_or_default();
    let release = env!("CARGO_PKG_VERSION");
    let sha = option_env!("FLOTILLA_GIT_SHA").unwrap_or("unknown");
    let doc = serde_json::json!({
        "provider": {
            "provider": "flotilla",
            "orchestration": "nats-jetstream",
            "version": { "release": release, "sha": sha },
        },
        "version": { "release": release, "sha": sha },
        "arch": std::env::consts::ARCH,
        "shards": topology.map(|t| t.shards),
        "streams": streams,
        "nats": { "connected": state.nats.connected() },
        "warnings": state.streams.warnings.get().cloned().unwrap_or_default(),
    });
    let mut resp = Response::new(Body::full(doc.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET /system/queues`: every function's queue, read from NATS (at most [`SNAPSHOT_TTL`] old).
///
/// [`SNAPSHOT_TTL`]: crate::queues::SNAPSHOT_TTL
async fn queues(state: &State) -> Result<Response<Body>, CallError> {
    let rows = state.queue_rows().await?;
    let limits = state.limits.summaries();
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(l) = limits.get(&r.function) {
                r.concurrency_limit = Some(l.limit);
                r.adaptive = Some(l.adaptive);
                r.refusals = Some(l.refusals);
                r.completed = Some(l.settled);
            }
            r
        })
        .collect();
    json_response(StatusCode::OK, &rows.as_slice())
}

/// Brings the `flotilla_queue_*` gauges up to date before a scrape. Before the topology is
/// agreed or while NATS is down there is nothing to read; a failed read leaves the gauges at
/// their last values (and the log says why).
async fn refresh_queue_gauges(state: &State) {
    match state.queue_rows().await {
        Ok(_) | Err(NoQueues::NatsDown | NoQueues::NotAgreed) => {}
        Err(NoQueues::Read(e)) => {
            let error = CallError::Queues(e);
            tracing::warn!(%error, "queue gauges not refreshed");
        }
    }
}
