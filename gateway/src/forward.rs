//! The synchronous path: `/function/<name>[/<path>]` is forwarded to the function through the
//! pooled client (`http://` or `https://`), request and response bodies streamed both ways, never
//! buffered. 502 when the function cannot be reached (saying so when TLS is why), 504 when it
//! sends no response head in time, 400 when it is the client's body that broke.

use std::time::Instant;

use flotilla_queue::FunctionName;
use flotilla_queue::envelope::{self, HOP_BY_HOP};
use flotilla_queue::headers::{X_CALL_ID, X_DURATION_SECONDS, X_START_TIME};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;

use crate::body::{Body, Broken, ClientBody};
use crate::error::CallError;
use crate::request::split_name;
use crate::state::State;

pub const PREFIX: &str = "/function/";

pub async fn forward(
    state: &State,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body>, CallError> {
    let (mut parts, body) = req.into_parts();
    let (name, path) = split_name(&parts.uri.path()[PREFIX.len()..]);
    let function = FunctionName::parse(name)?;
    state.functions.check_known(&function)?;
    let url = state
        .functions
        .policies
        .url_for(&function, path, parts.uri.query().unwrap_or(""));
    let uri: Uri = match url.parse() {
        Ok(uri) => uri,
        Err(source) => return Err(CallError::BadFunctionUrl { url, source }),
    };

    let call_id = match parts.headers.get(&X_CALL_ID) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => HeaderValue::try_from(envelope::new_call_id())
            .map_err(|e| CallError::Internal(e.into()))?,
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(&X_CALL_ID, call_id.clone());
    let start = flotilla_queue::time::unix_nanos().to_string();
    if let Ok(v) = HeaderValue::try_from(start) {
        parts.headers.insert(X_START_TIME, v);
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    let broken = Broken::default();
    let body = ClientBody::new(body, broken.clone());
    let out = Request::from_parts(parts, body);

    let timeout = state
        .functions
        .sync_timeout
        .min(state.functions.policies.get(&function).timeout);
    let result = tokio::time::timeout(timeout, state.functions.http.request(out)).await;
    let seconds = started.elapsed().as_secs_f64();
    let failure = match result {
        Ok(Ok(resp)) => {
            let (mut rp, rbody) = resp.into_parts();
            state
                .metrics
                .sync_call(function.as_str(), rp.status.as_u16(), seconds);
            strip_hop_by_hop(&mut rp.headers);
            rp.headers.insert(&X_CALL_ID, call_id);
            if let Ok(v) = HeaderValue::try_from(format!("{seconds:.6}")) {
                rp.headers.insert(X_DURATION_SECONDS, v);
            }
            return Ok(Response::from_parts(rp, Body::Upstream(rbody)));
        }
        Ok(Err(error)) => {
            if let Some(reason) = broken.take() {
                tracing::debug!(function = %function, %reason, "the client's request body broke");
                CallError::BodyRead(reason.into())
            } else {
                tracing::warn!(function = %function, %error, "synchronous call failed");
                if let Some(tls) = flotilla_runtime::tls_cause(&error) {
                    CallError::FunctionTls {
                        function: function.to_string(),
                        source: tls.clone().into(),
                    }
                } else if error.is_connect() {
                    CallError::Unreachable {
                        function: function.to_string(),
                    }
                } else {
                    CallError::UpstreamBroken {
                        function: function.to_string(),
                    }
                }
            }
        }
        Err(_) => {
            tracing::warn!(function = %function, ?timeout, "synchronous call timed out");
            CallError::Timeout {
                function: function.to_string(),
                after: timeout,
            }
        }
    };
    state
        .metrics
        .sync_call(function.as_str(), failure.status().as_u16(), seconds);
    state
        .metrics
        .error(failure.status().as_u16(), failure.reason());
    let mut resp = failure.into_response(&state.admission.retry_after);
    resp.headers_mut().insert(&X_CALL_ID, call_id);
    Ok(resp)
}

/// Removes hop-by-hop headers, including any the `Connection` header names (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
