//! Reading a request: its path, headers, body, client keys, callback URL and start time, each
//! turned into a typed value or the `CallError` the client hears. Shared by every route.
//! Invariant: a leaf; it imports no route module, so routes import it and never each other.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::envelope::is_dropped_header;
use flotilla_queue::headers::{self, X_CALL_ID, X_CALLBACK_URL, X_DELAY, X_NOT_BEFORE, spelled};
use flotilla_queue::{FairnessKey, Priority};
use http::header::AsHeaderName;
use http::{HeaderMap, HeaderName, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::callback_guard::CallbackGuard;
use crate::error::CallError;

/// Longest client-chosen call id or idempotency key.
pub const MAX_KEY_LEN: usize = 128;

/// Request headers that travel as envelope control fields (or are set again by the worker), so
/// they are not copied among the forwarded headers.
static CONTROL_HEADERS: [HeaderName; 7] = [
    X_CALL_ID,
    X_CALLBACK_URL,
    headers::X_START_TIME,
    headers::X_DELAY,
    headers::X_NOT_BEFORE,
    headers::X_PRIORITY,
    headers::X_FAIRNESS_KEY,
];

/// Splits `<name>[/<path>]` into the name and the path suffix (empty or starting with '/').
pub fn split_name(rest: &str) -> (&str, &str) {
    match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    }
}

/// A header's value as text: `None` when absent, `Err` when it is not UTF-8.
pub fn header_text(headers: &HeaderMap, name: impl AsHeaderName) -> Option<Result<&str, ()>> {
    headers
        .get(name)
        .map(|v| std::str::from_utf8(v.as_bytes()).map_err(|_| ()))
}

/// The request's `Content-Length`, when it carries a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body, refusing it once it passes `limit`.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, CallError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(CallError::BodyTooLarge { limit })
        }
        Err(e) => Err(CallError::BodyRead(e)),
    }
}

/// A client-chosen call id or idempotency key: 1 to 128 visible ASCII characters, as it is
/// echoed in a header and stored in a NATS header.
pub fn client_key<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    shown: &'static str,
) -> Result<Option<&'a str>, CallError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let bytes = v.as_bytes();
    check_client_key(bytes, shown)?;
    // Visible ASCII is valid UTF-8.
    Ok(std::str::from_utf8(bytes).ok())
}

/// Refuses a call id or idempotency key that is not 1 to 128 visible ASCII characters.
pub fn check_client_key(key: impl AsRef<[u8]>, shown: &'static str) -> Result<(), CallError> {
    let bytes = key.as_ref();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
        return Err(CallError::BadHeader {
            header: shown,
            reason: "must be 1 to 128 characters long",
        });
    }
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(CallError::BadHeader {
            header: shown,
            reason: "may only hold visible ASCII characters",
        });
    }
    Ok(())
}

/// The `Nats-Msg-Id` of a call with a client's key: JetStream's de-duplication map is per
/// stream, so the key is scoped by function and two functions of one shard may use the same key.
/// Single calls and batch lines share it, so a key repeats across both.
pub fn dedup_key(function: &str, key: &str) -> String {
    format!("{function}:{key}")
}

/// The call id of a call that carries only an `Idempotency-Key`: the same (function, key) always
/// gives the same id, so a retried POST is answered with the id of the call it repeats. FNV-1a
/// 128 is spelled out here so the id survives a gateway upgrade within the de-duplication window.
pub fn derived_call_id(function: &str, key: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    let parts: [&[u8]; 5] = [
        b"flotilla-idempotency",
        b"\0",
        function.as_bytes(),
        b"\0",
        key.as_bytes(),
    ];
    for part in parts {
        for &b in part {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    uuid::Builder::from_u128(h)
        .with_version(uuid::Version::Custom)
        .with_variant(uuid::Variant::RFC4122)
        .into_uuid()
        .to_string()
}

/// The request's `X-Priority`: `normal` when absent, 400 naming the allowed values when it is
/// none of them.
pub fn priority(headers: &HeaderMap) -> Result<Priority, CallError> {
    let parsed = parsed_header(
        headers,
        &headers::X_PRIORITY,
        spelled::X_PRIORITY,
        flotilla_queue::priority::ALLOWED,
        Priority::parse,
    )?;
    Ok(parsed.unwrap_or_default())
}

/// The request's `X-Fairness-Key`: none when absent, 400 when it is not 1 to 64 printable
/// ASCII bytes.
pub fn fairness_key(headers: &HeaderMap) -> Result<Option<FairnessKey>, CallError> {
    parsed_header(
        headers,
        &headers::X_FAIRNESS_KEY,
        spelled::X_FAIRNESS_KEY,
        flotilla_queue::fairness::ALLOWED,
        FairnessKey::parse,
    )
}

/// Header `name` parsed by `parse`: `None` when absent, 400 `<spelled> <reason>` when it is not
/// UTF-8 or does not parse.
fn parsed_header<T, E>(
    headers: &HeaderMap,
    name: &HeaderName,
    spelled: &'static str,
    reason: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, CallError> {
    let bad = || CallError::BadHeader {
        header: spelled,
        reason,
    };
    match header_text(headers, name) {
        None => Ok(None),
        Some(Ok(text)) => parse(text).map(Some).map_err(|_| bad()),
        Some(Err(())) => Err(bad()),
    }
}

/// Whether a request header is one the gateway consumes itself (call id, callback, delay, start
/// time, priority, fairness key) rather than forwards.
pub fn is_control_header(name: &HeaderName) -> bool {
    CONTROL_HEADERS.contains(name)
}

/// The request's headers that travel to the function: not hop-by-hop, not reserved for the
/// envelope, not a control field. Values that are not UTF-8 are carried lossily.
pub fn forwarded_headers(headers: &HeaderMap) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    headers.iter().filter_map(|(name, value)| {
        if is_control_header(name) || is_dropped_header(name.as_str()) {
            return None;
        }
        Some((name.as_str(), String::from_utf8_lossy(value.as_bytes())))
    })
}

/// The request's `X-Callback-Url`, checked: well formed and a target the callback policy allows.
pub async fn callback_header<'a>(
    guard: &CallbackGuard,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, CallError> {
    match header_text(headers, &X_CALLBACK_URL) {
        None => Ok(None),
        Some(Ok(url)) => {
            check_callback(guard, url).await?;
            Ok(Some(url))
        }
        Some(Err(())) => Err(CallError::BadCallbackUrl("is not valid text")),
    }
}

/// Refuses a callback URL that is malformed or whose target the callback policy refuses.
pub async fn check_callback(guard: &CallbackGuard, url: &str) -> Result<(), CallError> {
    let host = check_callback_url(url)?;
    guard.check(&host).await.map_err(CallError::CallbackRefused)
}

/// An absolute `http://` or `https://` URL with a host: returns the host.
pub fn check_callback_url(raw: &str) -> Result<String, CallError> {
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| CallError::BadCallbackUrl("is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(CallError::BadCallbackUrl("must use http:// or https://")),
        None => {
            return Err(CallError::BadCallbackUrl(
                "must be an absolute http:// or https:// URL",
            ));
        }
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(host.to_owned()),
        _ => Err(CallError::BadCallbackUrl("has no host")),
    }
}

/// When a call asks to start later (`X-Delay` or `X-Not-Before`): its start time in Unix
/// nanoseconds, or `None` to start at once (no header, or a time already past). A start further
/// than `max` from now is refused.
pub fn not_before(
    headers: &HeaderMap,
    accepted_at: u128,
    max: Duration,
) -> Result<Option<u128>, CallError> {
    let delay = header_text(headers, &X_DELAY);
    let at = header_text(headers, &X_NOT_BEFORE);
    let (asked, shown) = match (delay, at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(CallError::BadRequest(
                "give X-Delay or X-Not-Before, not both".into(),
            ));
        }
        (Some(text), None) => {
            let bad = || CallError::BadHeader {
                header: spelled::X_DELAY,
                reason: "must be a duration such as 90s, 1m30s or 2h",
            };
            let delay =
                flotilla_queue::parse_duration(text.map_err(|()| bad())?).map_err(|_| bad())?;
            (accepted_at + delay.as_nanos(), spelled::X_DELAY)
        }
        (None, Some(text)) => {
            let bad = || CallError::BadHeader {
                header: spelled::X_NOT_BEFORE,
                reason: "must be an RFC 3339 time or an HTTP date",
            };
            let at = crate::times::parse(text.map_err(|()| bad())?).ok_or_else(bad)?;
            (at, spelled::X_NOT_BEFORE)
        }
    };
    let ahead =
        Duration::from_nanos(u64::try_from(asked.saturating_sub(accepted_at)).unwrap_or(u64::MAX));
    delayed(accepted_at, ahead, max, shown)
}

/// The start time of a call accepted at `accepted_at` that asks to wait `ahead` (`None`: at
/// once); refused beyond `max` (`--max-delay`), naming the field that asked (`shown`).
pub fn delayed(
    accepted_at: u128,
    ahead: Duration,
    max: Duration,
    shown: &str,
) -> Result<Option<u128>, CallError> {
    if ahead.is_zero() {
        return Ok(None);
    }
    if ahead > max {
        return Err(CallError::BadRequest(
            format!(
                "{shown} asks for a start {}s from now; at most {}s (--max-delay)",
                ahead.as_secs(),
                max.as_secs()
            )
            .into(),
        ));
    }
    Ok(Some(accepted_at + ahead.as_nanos()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn names_and_suffixes() {
        assert_eq!(split_name("echo"), ("echo", ""));
        assert_eq!(split_name("echo/"), ("echo", "/"));
        assert_eq!(split_name("echo.ns/a/b"), ("echo.ns", "/a/b"));
        assert_eq!(split_name(""), ("", ""));
    }

    #[test]
    fn callback_urls() {
        for ok in [
            "http://cb.example/x",
            "https://cb.example:8443/a?b=1",
            "http://127.0.0.1:9",
        ] {
            assert!(check_callback_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "cb.example/x",
            "/relative",
            "ftp://cb.example/x",
            "http://",
            "http:// space",
            "not a url",
        ] {
            assert!(check_callback_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_scoped() {
        let a = derived_call_id("echo", "k1");
        assert_eq!(a, derived_call_id("echo", "k1"));
        assert_ne!(a, derived_call_id("echo", "k2"));
        assert_ne!(a, derived_call_id("other", "k1"));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 8);
        // Pinned: changing it breaks de-duplication across an upgrade.
        assert_eq!(a, "246043c4-b847-85b6-97ce-cb1f7837c9c1");
    }

    #[test]
    fn control_and_reserved_headers_stay_out() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-call-id", HeaderValue::from_static("c"));
        h.insert("x-callback-url", HeaderValue::from_static("http://a/"));
        h.insert("nats-msg-id", HeaderValue::from_static("forged"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let got: Vec<(String, String)> = forwarded_headers(&h)
            .map(|(k, v)| (k.to_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("x-multi".to_owned(), "1".to_owned()),
                ("x-multi".to_owned(), "2".to_owned()),
            ]
        );
    }
}
