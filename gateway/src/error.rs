//! The gateway's errors: `GatewayError` ends `run`, `CallError` ends one request. Each `CallError`
//! knows its HTTP status, which side of the gateway caused it and whether a retry may help, so
//! the response, the log level and the metric label all come from one place.

use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::{NameError, TopologyError};
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::config::ConfigError;

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work: a bad flag, password file or policy file. An operator must
    /// act; `main` exits 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The shard count disagrees with the one stored in NATS, or the stored one is unreadable.
    /// An operator must act; `main` exits 64.
    #[error(transparent)]
    Topology(TopologyError),
    /// The NATS client could not be created although `--nats-url` passed `Config::check` (an
    /// unreachable server is not this: the client reconnects in the background).
    #[error("NATS: {0}")]
    Nats(#[from] async_nats::ConnectError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// True for problems the operator fixes in the configuration (exit 64).
    pub fn is_config(&self) -> bool {
        match self {
            Self::Config(_) | Self::Topology(_) => true,
            Self::Nats(_) | Self::Io(_) => false,
        }
    }
}

/// Which side of the gateway a request failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something the gateway refuses.
    Downstream,
    /// NATS or the function failed.
    Upstream,
    /// The gateway itself failed.
    Internal,
}

/// Why one request was not served as asked.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no route for this path")]
    NotFound,
    /// `--known-functions-only` and the policy file does not name the function.
    #[error("function {0} not found")]
    UnknownFunction(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    BadName(#[from] NameError),
    #[error("X-Callback-Url {0}")]
    BadCallbackUrl(&'static str),
    #[error("{header} {reason}")]
    BadHeader {
        header: &'static str,
        reason: &'static str,
    },
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    /// The callback policy refuses the `X-Callback-Url` target.
    #[error("X-Callback-Url refused: {0}")]
    CallbackRefused(#[source] flotilla_runtime::Refused),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The headers a queued call carries would not fit in a JetStream message's header block.
    #[error("request headers take {size} bytes in a queued call; at most {limit} fit")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("request is larger than a queued call may be (headers and body over NATS max_payload)")]
    MessageTooLarge,
    #[error("authentication required")]
    Unauthorized,
    /// A request that changes state on an operator route came from another site (its `Origin`
    /// or `Sec-Fetch-Site` says so): refused, so a page elsewhere cannot use the operator's
    /// credentials that the browser holds.
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
    #[error("queue not ready: {0}")]
    NotReady(&'static str),
    #[error("NATS is not connected")]
    NatsDown,
    #[error("enqueue failed: {0}")]
    Publish(String),
    #[error("function {function} is unreachable")]
    Unreachable { function: String },
    /// The TLS handshake with an `https://` function failed: its certificate is not trusted, has
    /// expired or does not cover the URL's host, or the function refused ours. `reason` is
    /// rustls's own words.
    #[error("function {function} is unreachable over TLS: {reason}")]
    FunctionTls { function: String, reason: String },
    #[error("function {function} failed before answering")]
    UpstreamBroken { function: String },
    #[error("function {function} timed out after {after:?}")]
    Timeout { function: String, after: Duration },
    #[error("function URL is invalid: {0}")]
    BadFunctionUrl(String),
    /// An operator route's parameters or JSON body are not acceptable.
    #[error("{0}")]
    BadRequest(String),
    /// JetStream did not answer a dead-letter request (timeout, stream missing, API error).
    #[error("dead letters unavailable: {0}")]
    DeadLetters(String),
    /// JetStream did not answer while reading the queues.
    #[error("queues unavailable: {0}")]
    Queues(String),
    /// A request body in a media type the route does not take.
    #[error("Content-Type must be {0}")]
    UnsupportedMediaType(&'static str),
    /// No progress is stored for this batch id (unknown, still being submitted, or older than
    /// the status retention).
    #[error("batch {0} not found (or its request has not ended)")]
    UnknownBatch(String),
    /// No dead letter has this sequence (replayed, deleted or expired).
    #[error("no dead letter with sequence {0} (replayed, deleted or expired)")]
    UnknownLetter(u64),
    /// No status is stored for this call id (unknown, or older than the status retention).
    #[error("call {0} not found")]
    UnknownCall(String),
    /// The call finished but its answer was not kept.
    #[error("result of call {call_id} is not kept: {why}")]
    ResultNotKept { call_id: String, why: String },
    /// This gateway keeps no call status (`--call-status=false`).
    #[error("call status is turned off on this gateway (--call-status=false)")]
    StatusOff,
    /// JetStream did not answer while reading or writing a call's status.
    #[error("call status unavailable: {0}")]
    Status(String),
    /// The gateway failed on its own (a response it could not encode).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CallError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound
            | Self::UnknownFunction(_)
            | Self::UnknownCall(_)
            | Self::UnknownBatch(_)
            | Self::UnknownLetter(_)
            | Self::ResultNotKept { .. }
            | Self::StatusOff => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadName(_)
            | Self::BadCallbackUrl(_)
            | Self::BadHeader { .. }
            | Self::BodyRead(_)
            | Self::CallbackRefused(_)
            | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } | Self::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::CrossSite(_) => StatusCode::FORBIDDEN,
            Self::NotReady(_)
            | Self::NatsDown
            | Self::Publish(_)
            | Self::DeadLetters(_)
            | Self::Queues(_)
            | Self::Status(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unreachable { .. } | Self::UpstreamBroken { .. } | Self::FunctionTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadFunctionUrl(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn side(&self) -> Side {
        self.class().0
    }

    /// True when the same request may succeed later (the client should retry, with the same
    /// `Idempotency-Key` for asynchronous calls).
    pub fn is_retryable(&self) -> bool {
        self.class().1
    }

    /// Which side failed and whether asking again may help: one table, so a new variant is
    /// classified on both counts at once.
    fn class(&self) -> (Side, bool) {
        match self {
            Self::NotFound
            | Self::UnknownFunction(_)
            | Self::MethodNotAllowed { .. }
            | Self::BadName(_)
            | Self::BadCallbackUrl(_)
            | Self::BadHeader { .. }
            | Self::BodyRead(_)
            | Self::CallbackRefused(_)
            | Self::BodyTooLarge { .. }
            | Self::HeadersTooLarge { .. }
            | Self::MessageTooLarge
            | Self::Unauthorized
            | Self::CrossSite(_)
            | Self::UnknownCall(_)
            | Self::UnknownBatch(_)
            | Self::UnknownLetter(_)
            | Self::ResultNotKept { .. }
            | Self::StatusOff
            | Self::UnsupportedMediaType(_)
            | Self::BadRequest(_) => (Side::Downstream, false),
            Self::NotReady(_)
            | Self::NatsDown
            | Self::Publish(_)
            | Self::DeadLetters(_)
            | Self::Queues(_)
            | Self::Status(_)
            | Self::Unreachable { .. }
            | Self::UpstreamBroken { .. }
            | Self::Timeout { .. } => (Side::Upstream, true),
            // A broken function URL or a gateway failure stays broken until someone fixes it.
            Self::BadFunctionUrl(_) | Self::Internal(_) => (Side::Internal, false),
            // So does a certificate the gateway refuses (or one the function refuses).
            Self::FunctionTls { .. } => (Side::Upstream, false),
        }
    }

    /// A short stable label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::UnknownFunction(_) => "function_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadName(_) => "bad_name",
            Self::BadCallbackUrl(_) => "bad_callback_url",
            Self::BadHeader { .. } => "bad_header",
            Self::BodyRead(_) => "body_read",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::CallbackRefused(_) => "callback_refused",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::MessageTooLarge => "message_too_large",
            Self::Unauthorized => "unauthorized",
            Self::CrossSite(_) => "cross_site",
            Self::NotReady(_) => "topology_unknown",
            Self::NatsDown => "nats_down",
            Self::Publish(_) => "publish_failed",
            Self::Unreachable { .. } => "function_unreachable",
            Self::UpstreamBroken { .. } => "function_broken",
            Self::FunctionTls { .. } => "function_tls",
            Self::Timeout { .. } => "function_timeout",
            Self::BadFunctionUrl(_) => "bad_function_url",
            Self::BadRequest(_) => "bad_request",
            Self::DeadLetters(_) => "dead_letters_unavailable",
            Self::Queues(_) => "queues_unavailable",
            Self::UnknownCall(_) => "call_not_found",
            Self::UnknownBatch(_) => "batch_not_found",
            Self::UnknownLetter(_) => "dead_letter_not_found",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::ResultNotKept { .. } => "result_not_kept",
            Self::StatusOff => "status_off",
            Self::Status(_) => "status_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The response: the status, a one-line text body, and the headers the status calls for.
    pub fn into_response(self, retry_after: &HeaderValue) -> Response<Body> {
        let status = self.status();
        let mut text = self.to_string();
        text.push('\n');
        let mut resp = text_response(status, Bytes::from(text));
        let h = resp.headers_mut();
        match &self {
            Self::MethodNotAllowed { allow } => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"flotilla\""),
                );
            }
            Self::NotReady(_)
            | Self::NatsDown
            | Self::Publish(_)
            | Self::DeadLetters(_)
            | Self::Queues(_)
            | Self::Status(_) => {
                h.insert(header::RETRY_AFTER, retry_after.clone());
            }
            Self::BodyTooLarge { .. } | Self::MessageTooLarge | Self::HeadersTooLarge { .. } => {
                // The unread body would otherwise be parsed as the next request.
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // The status and the text say it all.
            Self::NotFound
            | Self::UnknownFunction(_)
            | Self::BadName(_)
            | Self::BadCallbackUrl(_)
            | Self::BadHeader { .. }
            | Self::BodyRead(_)
            | Self::CallbackRefused(_)
            | Self::BadRequest(_)
            | Self::Unreachable { .. }
            | Self::UpstreamBroken { .. }
            | Self::FunctionTls { .. }
            | Self::Timeout { .. }
            | Self::BadFunctionUrl(_)
            | Self::CrossSite(_)
            | Self::UnknownCall(_)
            | Self::UnknownBatch(_)
            | Self::UnknownLetter(_)
            | Self::ResultNotKept { .. }
            | Self::StatusOff
            | Self::UnsupportedMediaType(_)
            | Self::Internal(_) => {}
        }
        resp
    }
}

/// An `application/json` response of `value`.
pub fn json_response(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> Result<Response<Body>, CallError> {
    let bytes = serde_json::to_vec(value).map_err(|e| CallError::Internal(e.to_string()))?;
    let mut resp = Response::new(Body::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A `text/plain` response.
pub fn text_response(status: StatusCode, text: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use flotilla_queue::FunctionName;

    use super::*;

    /// One error of every kind, with the status, side and retryability it must have.
    fn every_kind() -> Vec<(CallError, u16, Side, bool)> {
        let name_error = FunctionName::parse("no/slash").unwrap_err();
        let function = || "echo".to_owned();
        vec![
            (CallError::NotFound, 404, Side::Downstream, false),
            (
                CallError::CrossSite("Origin is another site"),
                403,
                Side::Downstream,
                false,
            ),
            (CallError::UnknownLetter(7), 404, Side::Downstream, false),
            (
                CallError::UnknownFunction(function()),
                404,
                Side::Downstream,
                false,
            ),
            (
                CallError::MethodNotAllowed { allow: "GET" },
                405,
                Side::Downstream,
                false,
            ),
            (CallError::BadName(name_error), 400, Side::Downstream, false),
            (
                CallError::BadCallbackUrl("is not a URL"),
                400,
                Side::Downstream,
                false,
            ),
            (
                CallError::BadHeader {
                    header: "X-Call-Id",
                    reason: "is too long",
                },
                400,
                Side::Downstream,
                false,
            ),
            (
                CallError::BodyRead("reset".into()),
                400,
                Side::Downstream,
                false,
            ),
            (
                CallError::BodyTooLarge { limit: 10 },
                413,
                Side::Downstream,
                false,
            ),
            (CallError::MessageTooLarge, 413, Side::Downstream, false),
            (
                CallError::CallbackRefused(flotilla_runtime::Refused::BuiltIn {
                    target: "169.254.169.254".into(),
                    why: "link-local",
                }),
                400,
                Side::Downstream,
                false,
            ),
            (
                CallError::HeadersTooLarge {
                    size: 70_000,
                    limit: 65_535,
                },
                431,
                Side::Downstream,
                false,
            ),
            (CallError::Unauthorized, 401, Side::Downstream, false),
            (
                CallError::BadRequest("limit".into()),
                400,
                Side::Downstream,
                false,
            ),
            (
                CallError::NotReady("topology not agreed"),
                503,
                Side::Upstream,
                true,
            ),
            (CallError::NatsDown, 503, Side::Upstream, true),
            (
                CallError::UnknownCall("c1".into()),
                404,
                Side::Downstream,
                false,
            ),
            (
                CallError::ResultNotKept {
                    call_id: "c1".into(),
                    why: "not kept".into(),
                },
                404,
                Side::Downstream,
                false,
            ),
            (CallError::StatusOff, 404, Side::Downstream, false),
            (
                CallError::UnknownBatch("b1".into()),
                404,
                Side::Downstream,
                false,
            ),
            (
                CallError::UnsupportedMediaType("application/x-ndjson"),
                415,
                Side::Downstream,
                false,
            ),
            (
                CallError::Status("timed out".into()),
                503,
                Side::Upstream,
                true,
            ),
            (
                CallError::Publish("timed out".into()),
                503,
                Side::Upstream,
                true,
            ),
            (
                CallError::DeadLetters("timed out".into()),
                503,
                Side::Upstream,
                true,
            ),
            (
                CallError::Unreachable {
                    function: function(),
                },
                502,
                Side::Upstream,
                true,
            ),
            (
                CallError::UpstreamBroken {
                    function: function(),
                },
                502,
                Side::Upstream,
                true,
            ),
            (
                CallError::FunctionTls {
                    function: function(),
                    reason: "invalid peer certificate: certificate expired".into(),
                },
                502,
                Side::Upstream,
                false,
            ),
            (
                CallError::Timeout {
                    function: function(),
                    after: Duration::from_secs(1),
                },
                504,
                Side::Upstream,
                true,
            ),
            (
                CallError::BadFunctionUrl("no host".into()),
                500,
                Side::Internal,
                false,
            ),
            (
                CallError::Internal("encoding".into()),
                500,
                Side::Internal,
                false,
            ),
        ]
    }

    #[test]
    fn every_error_has_its_status_side_and_retryability() {
        for (error, status, side, retryable) in every_kind() {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.side(), side, "{error:?}");
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
        }
    }

    #[test]
    fn classifications_agree_with_each_other() {
        let mut reasons = HashSet::new();
        for (error, ..) in every_kind() {
            let status = error.status();
            match error.side() {
                Side::Downstream => assert!(status.is_client_error(), "{error:?}"),
                Side::Upstream | Side::Internal => assert!(status.is_server_error(), "{error:?}"),
            }
            assert!(reasons.insert(error.reason()), "reason reused: {error:?}");
            let resp = error.into_response(&HeaderValue::from_static("7"));
            // Retry-After exactly where the gateway (not the function) is briefly unavailable.
            assert_eq!(
                resp.headers().contains_key(header::RETRY_AFTER),
                resp.status() == StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                resp.status()
            );
        }
    }
}
