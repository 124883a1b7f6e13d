//! What one attempt of a call came to: which attempt it was, the function's answer or why there
//! was none. Its own module because pull, call, retry, dead letters, reports and callbacks all
//! read it, and none of them should need another to do so.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};

/// Which attempt of a call this is. A retry policy reads it to decide whether another
/// attempt is allowed.
///
/// Attempts are counted from the envelope (its attempt field, set when a failed attempt is
/// stored as a retry), never from JetStream's delivery count: a redelivery after a worker crash
/// or a hand-back repeats the interrupted attempt instead of starting a new one. So a crash never
/// uses up the retry budget, and `X-Retry` never exceeds `X-Retry-Max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts made before this message was published (the envelope's attempt: a re-published
    /// retry carries its count; a fresh or replayed call 0).
    pub earlier: u32,
    /// JetStream deliveries of this message, this one included (1 on the first).
    pub delivered: u32,
}

impl Attempt {
    /// The attempt number under the retry policy, starting at 1.
    pub fn number(&self) -> u32 {
        self.earlier.saturating_add(1)
    }

    /// Attempts made before this one (`X-Retry`).
    pub fn retries(&self) -> u32 {
        self.earlier
    }

    /// True when JetStream delivered this message before: an interrupted run of this same
    /// attempt may have reached the function.
    pub fn is_redelivery(&self) -> bool {
        self.delivered > 1
    }
}

/// Why a function gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection, a reset, or a broken response.
    #[error("function unreachable: {0}")]
    Unreachable(String),
    #[error("function did not answer within {0:?}")]
    Timeout(Duration),
    /// The envelope's method or URL cannot form a request; trying again cannot help.
    #[error("invalid request: {0}")]
    InvalidRequest(#[source] crate::http1::RequestError),
    /// JetStream delivered the message this many times and no run settled it (`--max-deliveries`):
    /// the function was not called again.
    #[error("delivered {0} times without settling: the worker crashed or lost the ack each time")]
    Redelivered(u32),
    /// Not started within the function's `max_age` of being accepted: the function was not
    /// called.
    #[error("not started within max_age {max_age:?} of being accepted ({age:?} ago)")]
    Expired { age: Duration, max_age: Duration },
}

impl CallError {
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::InvalidRequest(_) | Self::Redelivered(_) | Self::Expired { .. }
        )
    }

    /// The status the outcome reports: 504 for a timeout, 410 for an expired call, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Expired { .. } => StatusCode::GONE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The worker's own trouble: it could not make a call for want of a local resource. Never the
/// function's fault, so it uses no attempt and never leads to a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("out of file descriptors")]
    FileDescriptors,
    #[error("out of memory")]
    Memory,
    #[error("out of local ports")]
    Ports,
}

impl Exhausted {
    /// The local resource that an error, or any error in its chain of causes, says ran out.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        use rustix::io::Errno;
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(errno) = e
                .downcast_ref::<std::io::Error>()
                .and_then(Errno::from_io_error)
            {
                return match errno {
                    Errno::MFILE | Errno::NFILE => Some(Self::FileDescriptors),
                    Errno::NOMEM | Errno::NOBUFS => Some(Self::Memory),
                    Errno::ADDRNOTAVAIL => Some(Self::Ports),
                    _ => None,
                };
            }
            cause = e.source();
        }
        None
    }

    /// The `resource` label of `worker_resource_exhausted_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::FileDescriptors => "file_descriptors",
            Self::Memory => "memory",
            Self::Ports => "ports",
        }
    }
}

/// How one attempt of a call ended: what the callback receives and what a retry policy inspects.
#[derive(Debug)]
pub struct Outcome {
    /// The function's status, or 502/504 when it was unreachable or timed out.
    pub status: StatusCode,
    /// The function's response headers (empty when it gave no answer).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set when the function gave no answer.
    pub error: Option<CallError>,
    /// Time from sending the request to the end of the response body.
    pub duration: Duration,
    pub attempt: Attempt,
}

impl Outcome {
    pub(crate) fn failed(error: CallError, duration: Duration, attempt: Attempt) -> Self {
        let body = Bytes::from(error.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Self {
            status: error.status(),
            headers,
            body,
            error: Some(error),
            duration,
            attempt,
        }
    }

    /// Whether the function was called in this attempt: not for a crash loop (not called again)
    /// or an expired call (never called).
    pub fn ran(&self) -> bool {
        !matches!(
            self.error,
            Some(CallError::Redelivered(_) | CallError::Expired { .. })
        )
    }

    /// Attempts made once this one is counted: an expired call made none.
    pub fn attempts_made(&self) -> u32 {
        match self.error {
            Some(CallError::Expired { .. }) => self.attempt.earlier,
            _ => self.attempt.number(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.status.is_success()
    }

    /// The function's `Retry-After`, in seconds or as an HTTP date (a past date is zero).
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(v, std::time::SystemTime::now())
    }

    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.headers.get(CONTENT_TYPE)
    }
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date (a date in the past is zero).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_from_the_envelope_not_redeliveries() {
        let a = Attempt {
            earlier: 0,
            delivered: 1,
        };
        assert_eq!((a.number(), a.retries(), a.is_redelivery()), (1, 0, false));
        // Redelivered twice after crashes: still the third attempt.
        let a = Attempt {
            earlier: 2,
            delivered: 3,
        };
        assert_eq!((a.number(), a.retries(), a.is_redelivery()), (3, 2, true));
    }

    #[test]
    fn failed_outcomes_report_502_and_504() {
        let a = Attempt {
            earlier: 0,
            delivered: 1,
        };
        let o = Outcome::failed(
            CallError::Timeout(Duration::from_secs(1)),
            Duration::ZERO,
            a,
        );
        assert_eq!(o.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(!o.is_success());
        let o = Outcome::failed(CallError::Unreachable("x".into()), Duration::ZERO, a);
        assert_eq!(o.status, StatusCode::BAD_GATEWAY);
        assert_eq!(o.content_type().unwrap(), "text/plain");
        assert!(o.body.starts_with(b"function unreachable"));
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut o = Outcome::failed(
            CallError::Unreachable("x".into()),
            Duration::ZERO,
            Attempt {
                earlier: 0,
                delivered: 1,
            },
        );
        assert_eq!(o.retry_after(), None);
        o.headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(o.retry_after(), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(later);
        o.headers
            .insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let d = o.retry_after().unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn resource_errors_are_recognised_through_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Wrapper(#[source] std::io::Error);
        let emfile = Wrapper(std::io::Error::from_raw_os_error(24));
        assert_eq!(Exhausted::of(&emfile), Some(Exhausted::FileDescriptors));
        let ports = std::io::Error::from_raw_os_error(99);
        assert_eq!(Exhausted::of(&ports), Some(Exhausted::Ports));
        let nomem = std::io::Error::from_raw_os_error(12);
        assert_eq!(Exhausted::of(&nomem), Some(Exhausted::Memory));
        // A refused connection is the function's (or its host's) trouble.
        let refused = Wrapper(std::io::Error::from_raw_os_error(111));
        assert_eq!(Exhausted::of(&refused), None);
    }
}
