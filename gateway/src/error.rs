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
    /// The NATS client could not be created (a malformed URL, not an unreachable server: the
    /// client reconnects in the background).
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
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request is larger than a queued call may be (headers and body over NATS max_payload)")]
    MessageTooLarge,
    #[error("authentication required")]
    Unauthorized,
    #[error("queue not ready: {0}")]
    NotReady(&'static str),
    #[error("NATS is not connected")]
    NatsDown,
    #[error("enqueue failed: {0}")]
    Publish(String),
    #[error("function {function} is unreachable")]
    Unreachable { function: String },
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
    /// The gateway failed on its own (a response it could not encode).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CallError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadName(_)
            | Self::BadCallbackUrl(_)
            | Self::BadHeader { .. }
            | Self::BodyRead(_)
            | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } | Self::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotReady(_) | Self::NatsDown | Self::Publish(_) | Self::DeadLetters(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Unreachable { .. } | Self::UpstreamBroken { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadFunctionUrl(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::NotReady(_)
            | Self::NatsDown
            | Self::Publish(_)
            | Self::DeadLetters(_)
            | Self::Unreachable { .. }
            | Self::UpstreamBroken { .. }
            | Self::Timeout { .. } => Side::Upstream,
            Self::BadFunctionUrl(_) | Self::Internal(_) => Side::Internal,
            _ => Side::Downstream,
        }
    }

    /// True when the same request may succeed later (the client should retry, with the same
    /// `Idempotency-Key` for asynchronous calls).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::NotReady(_)
                | Self::NatsDown
                | Self::Publish(_)
                | Self::DeadLetters(_)
                | Self::Unreachable { .. }
                | Self::UpstreamBroken { .. }
                | Self::Timeout { .. }
        )
    }

    /// A short stable label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadName(_) => "bad_name",
            Self::BadCallbackUrl(_) => "bad_callback_url",
            Self::BadHeader { .. } => "bad_header",
            Self::BodyRead(_) => "body_read",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::MessageTooLarge => "message_too_large",
            Self::Unauthorized => "unauthorized",
            Self::NotReady(_) => "topology_unknown",
            Self::NatsDown => "nats_down",
            Self::Publish(_) => "publish_failed",
            Self::Unreachable { .. } => "function_unreachable",
            Self::UpstreamBroken { .. } => "function_broken",
            Self::Timeout { .. } => "function_timeout",
            Self::BadFunctionUrl(_) => "bad_function_url",
            Self::BadRequest(_) => "bad_request",
            Self::DeadLetters(_) => "dead_letters_unavailable",
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
            Self::NotReady(_) | Self::NatsDown | Self::Publish(_) | Self::DeadLetters(_) => {
                h.insert(header::RETRY_AFTER, retry_after.clone());
            }
            Self::BodyTooLarge { .. } | Self::MessageTooLarge => {
                // The unread body would otherwise be parsed as the next request.
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
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
