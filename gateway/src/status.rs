//! `/async-call/<id>`: what became of an asynchronous call (`GET`), its kept answer
//! (`GET .../result`) and its cancel (`DELETE`), read from and written to the status stream (see
//! `flotilla_queue::status`). Public like the invocation routes: a call id is an unguessable UUID
//! unless the client chose it.

use flotilla_queue::Priority;
use flotilla_queue::headers::X_FUNCTION_STATUS;
use flotilla_queue::status::{
    CallState, Cancel, Known, Record, ResultKept, Store, StoreError, Transition,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;

use crate::body::Body;
use crate::error::{CallError, json_response};
use crate::request::check_client_key;
use crate::state::State;
use crate::times::rfc3339;

pub const PREFIX: &str = "/async-call/";
const RESULT_SUFFIX: &str = "/result";
const ALLOW_CALL: &str = "GET, HEAD, DELETE";
const ALLOW_RESULT: &str = "GET, HEAD";

pub async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    let rest = &req.uri().path()[PREFIX.len()..];
    let (raw_id, result) = match rest.strip_suffix(RESULT_SUFFIX) {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let call_id = call_id(raw_id)?;
    let store = state.status_store()?;
    match (result, req.method()) {
        (false, &Method::GET | &Method::HEAD) => status(store, &call_id).await,
        (false, &Method::DELETE) => cancel(state, store, &call_id).await,
        (true, &Method::GET | &Method::HEAD) => kept_result(store, &call_id).await,
        (false, _) => Err(CallError::MethodNotAllowed { allow: ALLOW_CALL }),
        (true, _) => Err(CallError::MethodNotAllowed {
            allow: ALLOW_RESULT,
        }),
    }
}

/// The path segment as the call id it encodes: percent-decoded, 1 to 128 visible ASCII
/// characters like any call id the gateway accepts.
fn call_id(raw: &str) -> Result<String, CallError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| CallError::BadRequest("call id is not valid percent-encoded text".into()))?;
    check_client_key(decoded.as_bytes(), "call id")?;
    Ok(decoded.into_owned())
}

fn unavailable(e: StoreError) -> CallError {
    CallError::Status(e.into())
}

async fn status(store: &Store, call_id: &str) -> Result<Response<Body>, CallError> {
    match store.get(call_id).await.map_err(unavailable)? {
        Some(stored) => json_response(StatusCode::OK, &View::of(&stored.record)),
        None => Err(CallError::UnknownCall(call_id.to_owned())),
    }
}

/// Cancels a call that has not finished: its state becomes `cancelled` (a compare-and-set, so a
/// worker's final write and this cancel cannot both win), then the cancel is appended to the
/// stream every worker follows, so none starts it and the one running it aborts the function's
/// request. A call already cancelled answers 202 again.
async fn cancel(state: &State, store: &Store, call_id: &str) -> Result<Response<Body>, CallError> {
    let now = flotilla_queue::time::unix_nanos();
    let done = store
        .transition(call_id, Known::Unknown, |current| {
            let current = current?;
            if current.state.is_final() {
                return None;
            }
            let mut next = current.clone();
            next.state = CallState::Cancelled;
            next.updated_at = now;
            next.next_attempt_at = None;
            Some(next)
        })
        .await
        .map_err(unavailable)?;
    let record = match done {
        Transition::Written(stored) => {
            let cancel = Cancel {
                call_id: call_id.to_owned(),
                accepted_at: stored.record.accepted_at,
            };
            // A worker that never hears of it still finds the call cancelled when it writes the
            // call's next state, and then neither calls back nor records another state.
            if let Err(error) = store.announce_cancel(&cancel).await {
                tracing::warn!(%error, call_id, "cancel recorded but not announced to workers");
            }
            state.metrics.cancelled();
            if let Some(batch) = &stored.record.batch_id {
                state.status.tally.ended(batch, CallState::Cancelled);
            }
            stored.record
        }
        Transition::Declined(None) => return Err(CallError::UnknownCall(call_id.to_owned())),
        Transition::Declined(Some(stored)) if stored.record.state == CallState::Cancelled => {
            stored.record
        }
        Transition::Declined(Some(stored)) => {
            return json_response(StatusCode::CONFLICT, &View::of(&stored.record));
        }
    };
    json_response(StatusCode::ACCEPTED, &View::of(&record))
}

async fn kept_result(store: &Store, call_id: &str) -> Result<Response<Body>, CallError> {
    let Some(stored) = store.get(call_id).await.map_err(unavailable)? else {
        return Err(CallError::UnknownCall(call_id.to_owned()));
    };
    let record = stored.record;
    if !record.state.is_final() {
        return json_response(StatusCode::CONFLICT, &View::of(&record));
    }
    let not_kept = |why: String| CallError::ResultNotKept {
        call_id: call_id.to_owned(),
        why,
    };
    match record.result {
        Some(ResultKept::Yes) => {}
        Some(ResultKept::TooLarge { bytes, limit }) => {
            return Err(not_kept(format!(
                "it was {bytes} bytes, over the function's max_result_bytes of {limit}"
            )));
        }
        Some(ResultKept::No) | None if record.state == CallState::Cancelled => {
            return Err(not_kept("the call was cancelled".into()));
        }
        Some(ResultKept::No) | None => {
            return Err(not_kept(
                "the function's policy does not keep results (keep_results)".into(),
            ));
        }
    }
    let Some(kept) = store.result(call_id).await.map_err(unavailable)? else {
        return Err(not_kept("it is no longer stored".into()));
    };
    let mut resp = Response::new(Body::full(kept.body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(&X_FUNCTION_STATUS, HeaderValue::from(kept.status));
    if let Some(ct) = kept
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    Ok(resp)
}

/// A record as clients see it: RFC 3339 times, unset fields left out, a dead letter's kind at
/// the head of its reason.
#[derive(Debug, Serialize)]
struct View<'a> {
    call_id: &'a str,
    function: &'a str,
    state: CallState,
    attempts: u32,
    accepted_at: Option<String>,
    updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_id: Option<&'a str>,
    priority: Priority,
    /// `null` for a call without a key.
    fairness_key: Option<&'a str>,
}

impl<'a> View<'a> {
    fn of(r: &'a Record) -> Self {
        let time = rfc3339;
        let reason = match (&r.dead_kind, &r.reason) {
            (Some(kind), Some(reason)) => Some(format!("{kind}: {reason}")),
            (Some(kind), None) => Some(kind.clone()),
            (None, reason) => reason.clone(),
        };
        Self {
            call_id: &r.call_id,
            function: &r.function,
            state: r.state,
            attempts: r.attempts,
            accepted_at: time(r.accepted_at),
            updated_at: time(r.updated_at),
            status: r.status,
            not_before: r.not_before.and_then(time),
            next_attempt_at: r.next_attempt_at.and_then(time),
            reason,
            batch_id: r.batch_id.as_deref(),
            priority: r.priority,
            fairness_key: r.fairness_key.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decoded_and_checked() {
        assert_eq!(call_id("abc-1").unwrap(), "abc-1");
        assert_eq!(call_id("a%2Fb%20").unwrap_err().status(), 400);
        assert_eq!(call_id("a%2Fb").unwrap(), "a/b");
        assert!(call_id("").is_err());
        assert!(call_id(&"x".repeat(129)).is_err());
        assert!(call_id("%FF").is_err());
    }

    #[test]
    fn views_render_times_and_dead_kinds() {
        let mut r = Record::queued("c", "echo", 1_700_000_000_000_000_000, None);
        r.state = CallState::Dead;
        r.dead_kind = Some("exhausted".into());
        r.reason = Some("function answered 500".into());
        let v = serde_json::to_value(View::of(&r)).unwrap();
        assert_eq!(v["state"], "dead");
        assert_eq!(v["accepted_at"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(v["reason"], "exhausted: function answered 500");
        assert!(v.get("status").is_none() && v.get("batch_id").is_none());
        assert_eq!(
            v["priority"], "normal",
            "shown even when the record leaves it out"
        );
        let high =
            serde_json::to_value(View::of(&r.clone().with_priority(Priority::High))).unwrap();
        assert_eq!(high["priority"], "high");
        assert_eq!(v["fairness_key"], serde_json::Value::Null);
        let key = flotilla_queue::FairnessKey::parse("acme").unwrap();
        let keyed = serde_json::to_value(View::of(&r.clone().with_key(Some(&key)))).unwrap();
        assert_eq!(keyed["fairness_key"], "acme");
    }
}
