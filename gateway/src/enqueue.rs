//! The asynchronous hot path: `/async-function/<name>[/<path>]` becomes one JetStream message on
//! the function's shard, and the client hears 202 only once JetStream acknowledged it. No JSON,
//! one body buffer (a single-chunk body is not copied), one context shared by every request.

use std::borrow::Cow;
use std::time::Instant;

use flotilla_queue::FunctionName;
use flotilla_queue::envelope::Control;
use flotilla_queue::headers::{IDEMPOTENCY_KEY, X_CALL_ID, spelled};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::accept::{Accepting, accept};
use crate::body::Body;
use crate::error::CallError;
use crate::request::{
    callback_header, client_key, content_length, dedup_key, derived_call_id, fairness_key,
    forwarded_headers, not_before, priority, read_body, split_name,
};
use crate::state::State;

pub const PREFIX: &str = "/async-function/";
pub const ALLOW: &str = "GET, POST, PUT, PATCH, DELETE";

pub async fn enqueue(
    state: &State,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body>, CallError> {
    let (parts, body) = req.into_parts();
    if !matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::GET
    ) {
        return Err(CallError::MethodNotAllowed { allow: ALLOW });
    }
    let (name, path) = split_name(&parts.uri.path()[PREFIX.len()..]);
    // A function seen before has a valid name and its subject and metrics ready.
    let hot = state.functions.hot.get(name);
    // Only a function that passed every check becomes hot.
    let parsed = match hot {
        Some(_) => None,
        None => {
            let f = FunctionName::parse(name)?;
            state.functions.check_known(&f)?;
            Some(f)
        }
    };
    let headers = &parts.headers;

    let callback_url = callback_header(&state.admission.callback_guard, headers).await?;
    let client_call_id = client_key(headers, &X_CALL_ID, spelled::X_CALL_ID)?;
    let idempotency_key = client_key(headers, &IDEMPOTENCY_KEY, spelled::IDEMPOTENCY_KEY)?;
    let priority = priority(headers)?;
    let fairness_key = fairness_key(headers)?;

    // Up to the flag; a body larger than one NATS message holds goes to the object store.
    let limit = state.admission.max_body_bytes;
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(CallError::BodyTooLarge { limit });
    }
    let Some((_, shards)) = state.streams.topology.get() else {
        return Err(CallError::NotReady("shard topology not agreed yet"));
    };
    if !state.nats.connected() {
        return Err(CallError::NatsDown);
    }
    let hot = match (hot, &parsed) {
        (Some(hot), _) => hot,
        (None, Some(function)) => state.functions.hot.make(function, shards),
        (None, None) => unreachable!("a name not in the cache was parsed"),
    };

    let body = read_body(body, limit).await?;

    let dedup = idempotency_key
        .or(client_call_id)
        .map(|key| dedup_key(name, key));
    let (call_id, call_id_header): (Cow<'_, str>, HeaderValue) =
        match (client_call_id, idempotency_key) {
            // Checked as visible ASCII: the request's own value is echoed as it is.
            (Some(id), _) => (id.into(), headers[&X_CALL_ID].clone()),
            (None, key) => {
                let id = match key {
                    Some(key) => derived_call_id(name, key),
                    None => state.status.ids.next(),
                };
                let value = HeaderValue::from_str(&id).map_err(|_| CallError::BadHeader {
                    header: spelled::X_CALL_ID,
                    reason: "is not a valid header value",
                })?;
                (id.into(), value)
            }
        };

    let accepted_at = flotilla_queue::time::unix_nanos();
    let not_before = not_before(headers, accepted_at, state.admission.max_delay)?;
    accept(
        state,
        &hot,
        Accepting {
            function: name,
            control: Control {
                call_id: &call_id,
                method: parts.method.as_str(),
                path,
                query: parts.uri.query().unwrap_or(""),
                callback_url,
                start_time: accepted_at,
                attempt: 0,
            },
            dedup_key: dedup.as_deref(),
            not_before,
            batch_id: None,
            priority,
            fairness_key: fairness_key.as_ref(),
        },
        forwarded_headers(headers),
        body,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    state.metrics.accepted(&hot.accepted, seconds);

    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp.headers_mut().insert(&X_CALL_ID, call_id_header);
    Ok(resp)
}
