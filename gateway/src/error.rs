//! The gateway's errors: `GatewayError` ends `run`, `CallError` ends one request. Each `CallError`
//! knows its HTTP status, which side of the gateway caused it and whether a retry may help, so
//! the response, the log level and the metric label all come from one place.

use std::time::Duration;

use std::borrow::Cow;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::object_store::PutError;
use bytes::Bytes;
use flotilla_queue::batch::BatchError;
use flotilla_queue::status::StoreError;
use flotilla_queue::{NameError, TopologyError};
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::config::ConfigError;
use crate::queues::QueuesError;

/// An error as a library hands it over boxed, or one of several NATS error types a route
/// reports alike: the cause is kept (and can be downcast), its type is not spelled out.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// The NATS client could not be created: a `--nats-url` it cannot use (checked already by
    /// `Config::check`), never an unreachable server (the client keeps trying to connect in the
    /// background). An operator must act; `main` exits 64, as the worker does.
    #[error("--nats-url {url}: {source}")]
    Connect {
        /// The URLs without any user or password.
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// True for problems the operator fixes in the configuration (exit 64).
    pub fn is_config(&self) -> bool {
        match self {
            Self::Config(_) | Self::Topology(_) | Self::Connect { .. } => true,
            Self::Io(_) => false,
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
    /// The client's body broke off or was malformed; the cause is hyper's error, boxed as
    /// `http_body_util::Limited` hands it over.
    #[error("request body could not be read: {0}")]
    BodyRead(#[source] BoxError),
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
    Publish(#[source] EnqueueError),
    #[error("function {function} is unreachable")]
    Unreachable { function: String },
    /// The TLS handshake with an `https://` function failed: its certificate is not trusted, has
    /// expired or does not cover the URL's host, or the function refused ours. `source` is
    /// rustls's error (as `flotilla_runtime::tls_cause` finds it), boxed: the gateway names no
    /// rustls type.
    #[error("function {function} is unreachable over TLS: {source}")]
    FunctionTls {
        function: String,
        #[source]
        source: BoxError,
    },
    #[error("function {function} failed before answering")]
    UpstreamBroken { function: String },
    #[error("function {function} timed out after {after:?}")]
    Timeout { function: String, after: Duration },
    #[error("function URL is invalid: {url}: {source}")]
    BadFunctionUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A request's parameters, JSON body or batch line are not acceptable.
    #[error(transparent)]
    BadRequest(#[from] Invalid),
    /// JetStream did not answer a dead-letter request (timeout, stream missing, API error):
    /// `doing` says what the route was doing, `source` is NATS's error (one of several types).
    #[error("dead letters unavailable: {doing}: {source}")]
    DeadLetters {
        doing: &'static str,
        #[source]
        source: BoxError,
    },
    /// JetStream did not answer while reading the queues.
    #[error("queues unavailable: {0}")]
    Queues(#[from] QueuesError),
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
    Status(#[source] StatusError),
    /// The gateway failed on its own (a response it could not encode).
    #[error("internal error: {0}")]
    Internal(#[source] InternalError),
}

/// What is wrong with a request's parameters, a JSON body or a batch line: the gateway's own
/// words, or what a parser said after naming what it parsed.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Said(Cow<'static, str>),
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Base64 {
        what: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

impl From<String> for Invalid {
    fn from(said: String) -> Self {
        Self::Said(said.into())
    }
}

impl From<&'static str> for Invalid {
    fn from(said: &'static str) -> Self {
        Self::Said(said.into())
    }
}

/// Why JetStream did not take a call (or its large body).
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("no stream for shard {shard} ({stream})")]
    NoStream {
        shard: u32,
        stream: String,
        #[source]
        source: PublishError,
    },
    #[error("no PubAck from JetStream in time")]
    NoAck(#[source] PublishError),
    #[error("too many calls awaiting JetStream's PubAck")]
    AckWindowFull(#[source] PublishError),
    #[error(transparent)]
    Other(PublishError),
    #[error("storing a {bytes} byte body: {source}")]
    Body {
        bytes: usize,
        #[source]
        source: PutError,
    },
}

/// Why a call's status, or a batch's progress, could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// How the gateway failed on its own.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// A response it could not encode.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A call id it made that is no header value.
    #[error(transparent)]
    CallId(#[from] http::header::InvalidHeaderValue),
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
            | Self::DeadLetters { .. }
            | Self::Queues(_)
            | Self::Status(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unreachable { .. } | Self::UpstreamBroken { .. } | Self::FunctionTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadFunctionUrl { .. } | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
            | Self::DeadLetters { .. }
            | Self::Queues(_)
            | Self::Status(_)
            | Self::Unreachable { .. }
            | Self::UpstreamBroken { .. }
            | Self::Timeout { .. } => (Side::Upstream, true),
            // A broken function URL or a gateway failure stays broken until someone fixes it.
            Self::BadFunctionUrl { .. } | Self::Internal(_) => (Side::Internal, false),
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
            Self::BadFunctionUrl { .. } => "bad_function_url",
            Self::BadRequest(_) => "bad_request",
            Self::DeadLetters { .. } => "dead_letters_unavailable",
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
            | Self::DeadLetters { .. }
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
            | Self::BadFunctionUrl { .. }
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
    let bytes = serde_json::to_vec(value).map_err(|e| CallError::Internal(e.into()))?;
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
mod tests;
