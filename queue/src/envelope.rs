//! The envelope: how an asynchronous call travels through JetStream. Control fields are NATS
//! headers named `Flotilla-*`; the request's own headers travel as NATS headers under their own
//! names; the body is the raw NATS payload. No JSON, no copy of the body: `benches/` measured this
//! against a JSON envelope (see `docs/benchmarks.md`).
//!
//! Invariant: request headers named `Nats-*` or `Flotilla-*`, and hop-by-hop headers, never enter
//! the envelope; the first would steer JetStream, the second would forge control fields.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::names::FunctionName;

pub const H_VERSION: &str = "Flotilla-Version";
pub const H_CALL_ID: &str = "Flotilla-Call-Id";
pub const H_FUNCTION: &str = "Flotilla-Function";
pub const H_METHOD: &str = "Flotilla-Method";
pub const H_PATH: &str = "Flotilla-Path";
pub const H_QUERY: &str = "Flotilla-Query";
pub const H_CALLBACK_URL: &str = "Flotilla-Callback-Url";
pub const H_START_TIME: &str = "Flotilla-Start-Time";
/// Attempts already made before this message was published (0 for a fresh call); a replay or a
/// retry re-published elsewhere carries its count here.
pub const H_ATTEMPT: &str = "Flotilla-Attempt";
/// Unix nanoseconds at which a waiting retry is due. Only on messages under the retry subjects;
/// like every `Flotilla-*` header it never reaches a function.
pub const H_RETRY_AT: &str = "Flotilla-Retry-At";
/// JetStream's de-duplication id.
pub const H_NATS_MSG_ID: &str = "Nats-Msg-Id";

pub const VERSION: &str = "1";

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those the transport recomputes.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// True for a request header that is not forwarded: hop-by-hop, or reserved for the envelope.
pub fn is_dropped_header(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || starts_with_ignore_case(name, "nats-")
        || starts_with_ignore_case(name, "flotilla-")
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// One asynchronous call as the worker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub call_id: String,
    pub function: FunctionName,
    pub method: String,
    /// Path suffix after `/async-function/<name>`, starting with '/' or empty.
    pub path: String,
    /// Raw query string without '?', or empty.
    pub query: String,
    pub callback_url: Option<String>,
    /// Unix nanoseconds at which the gateway accepted the call (`X-Start-Time`).
    pub start_time: u128,
    pub attempt: u32,
    /// The request's forwardable headers, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Why a message is not a valid envelope; the worker dead-letters it with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message has no headers")]
    NoHeaders,
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    #[error("envelope version {0} is not understood by this worker")]
    Version(String),
}

impl Envelope {
    /// NATS headers and payload for this call. `dedup_key`, when present, becomes `Nats-Msg-Id`
    /// so JetStream drops a second publish within its window.
    pub fn to_nats(&self, dedup_key: Option<&str>) -> (HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        h.insert(H_VERSION, VERSION);
        h.insert(H_CALL_ID, self.call_id.as_str());
        h.insert(H_FUNCTION, self.function.as_str());
        h.insert(H_METHOD, self.method.as_str());
        if !self.path.is_empty() {
            h.insert(H_PATH, self.path.as_str());
        }
        if !self.query.is_empty() {
            h.insert(H_QUERY, self.query.as_str());
        }
        if let Some(cb) = &self.callback_url {
            h.insert(H_CALLBACK_URL, cb.as_str());
        }
        h.insert(H_START_TIME, self.start_time.to_string().as_str());
        if self.attempt > 0 {
            h.insert(H_ATTEMPT, self.attempt.to_string().as_str());
        }
        if let Some(key) = dedup_key {
            h.insert(H_NATS_MSG_ID, key);
        }
        for (k, v) in &self.headers {
            h.append(k.as_str(), v.as_str());
        }
        (h, self.body.clone())
    }

    /// Reads a message back. Fails, with a reason fit for a dead letter, on anything malformed.
    pub fn from_nats(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Self, EnvelopeError> {
        let h = headers.ok_or(EnvelopeError::NoHeaders)?;
        let get = |name: &'static str| h.get(name).map(|v| v.as_str());
        let need = |name: &'static str| get(name).ok_or(EnvelopeError::Missing(name));
        let version = need(H_VERSION)?;
        if version != VERSION {
            return Err(EnvelopeError::Version(version.to_owned()));
        }
        let call_id = need(H_CALL_ID)?;
        if call_id.is_empty() {
            return Err(EnvelopeError::Malformed(H_CALL_ID));
        }
        let function = FunctionName::parse(need(H_FUNCTION)?)
            .map_err(|_| EnvelopeError::Malformed(H_FUNCTION))?;
        let method = need(H_METHOD)?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(EnvelopeError::Malformed(H_METHOD));
        }
        let path = get(H_PATH).unwrap_or("");
        if !(path.is_empty() || path.starts_with('/')) {
            return Err(EnvelopeError::Malformed(H_PATH));
        }
        let start_time = need(H_START_TIME)?
            .parse()
            .map_err(|_| EnvelopeError::Malformed(H_START_TIME))?;
        let attempt = match get(H_ATTEMPT) {
            None => 0,
            Some(a) => a.parse().map_err(|_| EnvelopeError::Malformed(H_ATTEMPT))?,
        };
        let mut headers = Vec::new();
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            if is_dropped_header(name) {
                continue;
            }
            for v in values {
                headers.push((name.to_owned(), v.as_str().to_owned()));
            }
        }
        Ok(Self {
            call_id: call_id.to_owned(),
            function,
            method: method.to_owned(),
            path: path.to_owned(),
            query: get(H_QUERY).unwrap_or("").to_owned(),
            callback_url: get(H_CALLBACK_URL).map(str::to_owned),
            start_time,
            attempt,
            headers,
            body: payload,
        })
    }
}

/// A fresh call id (UUID v4, as OpenFaaS issues).
pub fn new_call_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            call_id: "c-1".into(),
            function: FunctionName::parse("echo.ns").unwrap(),
            method: "POST".into(),
            path: "/a/b".into(),
            query: "x=1&y=2".into(),
            callback_url: Some("http://127.0.0.1:9/cb".into()),
            start_time: 1_700_000_000_123_456_789,
            attempt: 2,
            headers: vec![
                ("Content-Type".into(), "text/plain".into()),
                ("X-Multi".into(), "1".into()),
                ("X-Multi".into(), "2".into()),
            ],
            body: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let (h, body) = e.to_nats(Some("key"));
        assert_eq!(h.get(H_NATS_MSG_ID).unwrap().as_str(), "key");
        let back = Envelope::from_nats(Some(&h), body).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn refuses_poison() {
        assert_eq!(
            Envelope::from_nats(None, Bytes::new()),
            Err(EnvelopeError::NoHeaders)
        );
        let (mut h, _) = sample().to_nats(None);
        h.insert(H_FUNCTION, "a b");
        assert_eq!(
            Envelope::from_nats(Some(&h), Bytes::new()),
            Err(EnvelopeError::Malformed(H_FUNCTION))
        );
        let (mut h, _) = sample().to_nats(None);
        h.insert(H_VERSION, "9");
        assert!(matches!(
            Envelope::from_nats(Some(&h), Bytes::new()),
            Err(EnvelopeError::Version(_))
        ));
        let mut h = HeaderMap::new();
        h.insert(H_VERSION, VERSION);
        assert_eq!(
            Envelope::from_nats(Some(&h), Bytes::new()),
            Err(EnvelopeError::Missing(H_CALL_ID))
        );
    }

    #[test]
    fn reserved_headers_are_dropped() {
        for n in [
            "Nats-Msg-Id",
            "nats-expected-stream",
            "FLOTILLA-Call-Id",
            "Connection",
            "te",
        ] {
            assert!(is_dropped_header(n), "{n}");
        }
        assert!(!is_dropped_header("Content-Type"));
        assert!(!is_dropped_header("X-Nats"));
    }
}
