//! The envelope: how an asynchronous call travels through JetStream. The call's control fields
//! travel packed in one NATS header, `Flotilla-Call`; the request's own headers travel as NATS
//! headers under their own names; the body is the raw NATS payload; the function is the subject's
//! last token (`flotilla.call.<shard>.<function>`), so it is not repeated. No JSON, no copy of the
//! body (measured against the alternatives: `docs/benchmarks.md`).
//!
//! `Flotilla-Call` (version 2) is
//! `2 <start> <attempt> <call-id> <path> <query> <callback> <method>`, one space between fields:
//! `<start>` (Unix nanoseconds) and `<attempt>` (attempts already made) in decimal; `<call-id>`,
//! `<path>`, `<query>` and `<callback>` each as `<byte length>:<bytes>`, so any value (spaces
//! included) is unambiguous; `<callback>` is `-` when there is none; `<method>` last, letters
//! only, so the value never ends in whitespace (NATS trims it). Values never hold CR or LF (they
//! cannot reach an `http` header or URI). `Flotilla-Retry-At` stays a header of its own: only
//! waiting retries carry it, and the retry consumer reads it before decoding. So do
//! `Flotilla-Batch`, `Flotilla-Priority` and `Flotilla-Fairness-Key` (only on calls that have
//! them: a `normal` call without a key carries neither, so it is stored as before priorities and
//! keys existed).
//!
//! Version 1 (one `Flotilla-*` header per field, `Flotilla-Version: 1`) is still read, so calls
//! and dead letters stored before an upgrade run and replay; it is never written.
//!
//! Invariant: request headers named `Nats-*` or `Flotilla-*`, and hop-by-hop headers, never enter
//! the envelope; the first would steer JetStream, the second would forge control fields.

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::fairness::FairnessKey;
use crate::headers;
use crate::names::FunctionName;
use crate::priority::Priority;

/// The envelope's header names, declared with every other in `headers`.
pub use crate::headers::{FLOTILLA_CALL as H_CALL, FLOTILLA_RETRY_AT as H_RETRY_AT, v1};

/// The version `to_nats` writes, first field of `Flotilla-Call`.
pub const VERSION: &str = "2";

const CALL: HeaderName = HeaderName::from_static(H_CALL);

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
        || starts_with_ignore_case(name, headers::NATS_PREFIX)
        || starts_with_ignore_case(name, headers::FLOTILLA_PREFIX)
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// One asynchronous call as the worker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub call_id: String,
    /// From the subject the message was published to; not stored in the headers.
    pub function: FunctionName,
    pub method: String,
    /// Path suffix after `/async-function/<name>`, starting with '/' or empty.
    pub path: String,
    /// Raw query string without '?', or empty.
    pub query: String,
    pub callback_url: Option<String>,
    /// Unix nanoseconds at which the gateway accepted the call (`X-Start-Time`).
    pub start_time: u128,
    /// Attempts already made before this message was published (0 for a fresh call); a retry
    /// waiting in the retry subject carries its count here.
    pub attempt: u32,
    /// The request's forwardable headers, repeated names kept in order (NATS keeps the order of
    /// one name's values, not the order between names).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The batch the call was enqueued in (`POST /async-batch/<name>`), carried in
    /// `Flotilla-Batch`.
    pub batch_id: Option<String>,
    /// Where a body too large for one NATS message is kept (an object of `FLOTILLA_BODIES`),
    /// carried in `Flotilla-Body-Object`; `body` is then empty until the worker fetches it.
    pub body_object: Option<String>,
    /// The call's priority within its function, carried in `Flotilla-Priority` when not normal.
    pub priority: Priority,
    /// The call's fairness key within its function, carried in `Flotilla-Fairness-Key`.
    pub fairness_key: Option<FairnessKey>,
}

/// Why a message is not a valid envelope; the worker dead-letters it with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message has no headers")]
    NoHeaders,
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// A version 1 header that does not parse.
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    /// `Flotilla-Call` does not parse; the text names the field.
    #[error("header Flotilla-Call is malformed: {0}")]
    Control(&'static str),
    #[error("envelope version {0} is not understood by this worker")]
    Version(String),
}

/// The control fields of a call, borrowed: what `Flotilla-Call` holds. The gateway encodes a
/// call straight from its request with it, and listing dead letters reads it without decoding
/// the whole envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control<'a> {
    pub call_id: &'a str,
    pub method: &'a str,
    /// Path suffix after `/async-function/<name>`, starting with '/' or empty.
    pub path: &'a str,
    /// Raw query string without '?', or empty.
    pub query: &'a str,
    pub callback_url: Option<&'a str>,
    /// Unix nanoseconds at which the gateway accepted the call.
    pub start_time: u128,
    /// Attempts already made.
    pub attempt: u32,
}

impl Control<'_> {
    /// The control fields of the message with `headers`, version 2 or 1.
    pub fn of(headers: &HeaderMap) -> Result<Control<'_>, EnvelopeError> {
        parse(headers).map(|(c, _)| c)
    }

    /// The NATS headers of a call with these control fields: `Flotilla-Call`, `Nats-Msg-Id` from
    /// `dedup_key` when present (JetStream then drops a second publish within its window), and
    /// the request's forwardable `headers`. The subject must be the function's
    /// (`subjects::call_subject` or `subjects::retry_subject`): it is where the function travels.
    pub fn to_nats_headers<K, V>(
        &self,
        dedup_key: Option<&str>,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> HeaderMap
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut h = HeaderMap::new();
        h.insert(CALL, self.packed());
        if let Some(key) = dedup_key {
            h.insert(headers::NATS_MESSAGE_ID, key);
        }
        for (k, v) in headers {
            h.append(k.as_ref(), v.as_ref());
        }
        h
    }

    /// The value of `Flotilla-Call`. Numbers are written by hand: `write!` cost more than the
    /// rest of the encoding.
    pub fn packed(&self) -> String {
        let cb_len = self.callback_url.map_or(1, str::len);
        let mut s = String::with_capacity(
            80 + self.call_id.len() + self.path.len() + self.query.len() + cb_len,
        );
        s.push_str(VERSION);
        s.push(' ');
        push_decimal(&mut s, self.start_time);
        s.push(' ');
        push_decimal(&mut s, u128::from(self.attempt));
        s.push(' ');
        push_sized(&mut s, self.call_id);
        s.push(' ');
        push_sized(&mut s, self.path);
        s.push(' ');
        push_sized(&mut s, self.query);
        s.push(' ');
        match self.callback_url {
            Some(url) => push_sized(&mut s, url),
            None => s.push('-'),
        }
        s.push(' ');
        s.push_str(self.method);
        s
    }
}

impl Envelope {
    /// The control fields, borrowed.
    pub fn control(&self) -> Control<'_> {
        Control {
            call_id: &self.call_id,
            method: &self.method,
            path: &self.path,
            query: &self.query,
            callback_url: self.callback_url.as_deref(),
            start_time: self.start_time,
            attempt: self.attempt,
        }
    }

    /// NATS headers and payload for this call; see [`Control::to_nats_headers`].
    pub fn to_nats(&self, dedup_key: Option<&str>) -> (HeaderMap, Bytes) {
        let headers = self.headers.iter().map(|(k, v)| (k, v));
        let mut h = self.control().to_nats_headers(dedup_key, headers);
        if let Some(batch) = &self.batch_id {
            h.insert(crate::headers::FLOTILLA_BATCH, batch.as_str());
        }
        self.priority.mark(&mut h);
        if let Some(key) = &self.fairness_key {
            key.mark(&mut h);
        }
        match &self.body_object {
            // The body stays in the object store; the message carries its name.
            Some(object) => {
                h.insert(crate::headers::FLOTILLA_BODY_OBJECT, object.as_str());
                (h, Bytes::new())
            }
            None => (h, self.body.clone()),
        }
    }

    /// Reads a message back; `function` is the one its subject names. Fails, with a reason fit
    /// for a dead letter, on anything malformed.
    pub fn from_nats(
        function: FunctionName,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Self, EnvelopeError> {
        let h = headers.ok_or(EnvelopeError::NoHeaders)?;
        let (c, v1_function) = parse(h)?;
        if v1_function.is_some_and(|f| f != function.as_str()) {
            return Err(EnvelopeError::Malformed(v1::H_FUNCTION));
        }
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
            call_id: c.call_id.to_owned(),
            function,
            method: c.method.to_owned(),
            path: c.path.to_owned(),
            query: c.query.to_owned(),
            callback_url: c.callback_url.map(str::to_owned),
            start_time: c.start_time,
            attempt: c.attempt,
            headers,
            body: payload,
            batch_id: h
                .get(crate::headers::FLOTILLA_BATCH)
                .map(|v| v.as_str().to_owned()),
            body_object: h
                .get(crate::headers::FLOTILLA_BODY_OBJECT)
                .map(|v| v.as_str().to_owned()),
            priority: Priority::of_headers(Some(h)),
            fairness_key: FairnessKey::of_headers(Some(h)),
        })
    }
}

fn push_sized(s: &mut String, value: &str) {
    push_decimal(s, value.len() as u128);
    s.push(':');
    s.push_str(value);
}

fn push_decimal(s: &mut String, n: u128) {
    // u128 division is a library call per digit; every real value fits a u64.
    let Ok(mut n) = u64::try_from(n) else {
        s.push_str(&n.to_string());
        return;
    };
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits are UTF-8.
    if let Ok(text) = std::str::from_utf8(&digits[i..]) {
        s.push_str(text);
    }
}

/// The control fields, version 2 or 1, and a version 1 message's `Flotilla-Function`.
type Parsed<'a> = (Control<'a>, Option<&'a str>);

fn parse(headers: &HeaderMap) -> Result<Parsed<'_>, EnvelopeError> {
    match headers.get(H_CALL) {
        Some(packed) => parse_packed(packed.as_str()).map(|c| (c, None)),
        None => parse_v1(headers),
    }
}

/// Reads `Flotilla-Call`, strictly: every field present and well formed, nothing left over.
fn parse_packed(packed: &str) -> Result<Control<'_>, EnvelopeError> {
    let mut p = Packed(packed);
    let version = p.token();
    if version != VERSION {
        return Err(EnvelopeError::Version(version.to_owned()));
    }
    let start_time = decimal(p.token()).ok_or(EnvelopeError::Control("start time"))?;
    let attempt = decimal(p.token()).ok_or(EnvelopeError::Control("attempt"))?;
    let call_id = p.sized().ok_or(EnvelopeError::Control("call id"))?;
    if call_id.is_empty() {
        return Err(EnvelopeError::Control("call id"));
    }
    let path = p.sized().ok_or(EnvelopeError::Control("path"))?;
    check_path(path).ok_or(EnvelopeError::Control("path"))?;
    let query = p.sized().ok_or(EnvelopeError::Control("query"))?;
    let callback_url = if p.0.starts_with("- ") {
        p.0 = &p.0[2..];
        None
    } else {
        Some(p.sized().ok_or(EnvelopeError::Control("callback URL"))?)
    };
    // The rest is the method: nothing may follow it.
    let method = p.0;
    check_method(method).ok_or(EnvelopeError::Control("method"))?;
    Ok(Control {
        call_id,
        method,
        path,
        query,
        callback_url,
        start_time,
        attempt,
    })
}

/// A cursor over `Flotilla-Call`.
struct Packed<'a>(&'a str);

impl<'a> Packed<'a> {
    /// Up to the next space (consumed), or the rest.
    fn token(&mut self) -> &'a str {
        match self.0.split_once(' ') {
            Some((t, rest)) => {
                self.0 = rest;
                t
            }
            None => std::mem::take(&mut self.0),
        }
    }

    /// `<length>:<bytes>` followed by a space (consumed).
    fn sized(&mut self) -> Option<&'a str> {
        let (len, rest) = self.0.split_once(':')?;
        let len: usize = decimal(len)?;
        let value = rest.get(..len)?;
        self.0 = rest[len..].strip_prefix(' ')?;
        Some(value)
    }
}

/// Digits only (no sign, no space), fitting `T`.
fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn check_path(path: &str) -> Option<()> {
    (path.is_empty() || path.starts_with('/')).then_some(())
}

fn check_method(method: &str) -> Option<()> {
    (!method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic())).then_some(())
}

/// Reads the one-header-per-field layout of version 1.
fn parse_v1(h: &HeaderMap) -> Result<Parsed<'_>, EnvelopeError> {
    let get = |name: &'static str| h.get(name).map(|v| v.as_str());
    let need = |name: &'static str| get(name).ok_or(EnvelopeError::Missing(name));
    let Some(version) = get(v1::H_VERSION) else {
        return Err(EnvelopeError::Missing(H_CALL));
    };
    if version != v1::VERSION {
        return Err(EnvelopeError::Version(version.to_owned()));
    }
    let call_id = need(v1::H_CALL_ID)?;
    if call_id.is_empty() {
        return Err(EnvelopeError::Malformed(v1::H_CALL_ID));
    }
    let v1_function = need(v1::H_FUNCTION)?;
    let method = need(v1::H_METHOD)?;
    check_method(method).ok_or(EnvelopeError::Malformed(v1::H_METHOD))?;
    let path = get(v1::H_PATH).unwrap_or("");
    check_path(path).ok_or(EnvelopeError::Malformed(v1::H_PATH))?;
    let start_time = need(v1::H_START_TIME)?
        .parse()
        .map_err(|_| EnvelopeError::Malformed(v1::H_START_TIME))?;
    let attempt = match get(v1::H_ATTEMPT) {
        None => 0,
        Some(a) => a
            .parse()
            .map_err(|_| EnvelopeError::Malformed(v1::H_ATTEMPT))?,
    };
    let control = Control {
        call_id,
        method,
        path,
        query: get(v1::H_QUERY).unwrap_or(""),
        callback_url: get(v1::H_CALLBACK_URL),
        start_time,
        attempt,
    };
    Ok((control, Some(v1_function)))
}

thread_local! {
    /// Operating-system randomness fetched 64 ids at a time: a `getrandom` call per id was a
    /// measurable share of an enqueue. The bytes are as good as `Uuid::new_v4`'s.
    static RANDOM: std::cell::RefCell<([u8; RANDOM_BYTES], usize)> =
        const { std::cell::RefCell::new(([0; RANDOM_BYTES], RANDOM_BYTES)) };
}
const RANDOM_BYTES: usize = 16 * 64;

/// Sixteen bytes of operating-system randomness, taken from a buffer filled 64 ids at a time.
pub fn random_bytes() -> [u8; 16] {
    let bytes = RANDOM.with_borrow_mut(|(buf, used)| {
        if *used == RANDOM_BYTES {
            if getrandom::fill(buf).is_err() {
                // No OS randomness is fatal elsewhere too; uuid reports it the same way.
                return None;
            }
            *used = 0;
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&buf[*used..*used + 16]);
        *used += 16;
        Some(b)
    });
    bytes.unwrap_or_else(|| uuid::Uuid::new_v4().into_bytes())
}

/// A fresh random id (UUID v4, as OpenFaaS issues): batch ids, object names, and the call ids of
/// a process that does not number its calls (`status::pages::CallIds` does).
pub fn new_call_id() -> String {
    let uuid = uuid::Builder::from_random_bytes(random_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> FunctionName {
        FunctionName::parse("echo.ns").unwrap()
    }

    fn sample() -> Envelope {
        Envelope {
            call_id: "c-1".into(),
            function: echo(),
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
            batch_id: None,
            body_object: None,
            priority: Priority::Normal,
            fairness_key: None,
        }
    }

    /// `e` with its headers sorted: a NATS header map keeps the order of one name's values, not
    /// the order between names.
    fn sorted(mut e: Envelope) -> Envelope {
        e.headers.sort();
        e
    }

    fn decode(h: &HeaderMap) -> Result<Envelope, EnvelopeError> {
        Envelope::from_nats(echo(), Some(h), Bytes::new())
    }

    /// Headers holding only `Flotilla-Call: <packed>`.
    fn packed(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_CALL, value);
        h
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let (h, body) = e.to_nats(Some("key"));
        assert_eq!(h.get(headers::NATS_MESSAGE_ID).unwrap().as_str(), "key");
        let back = Envelope::from_nats(echo(), Some(&h), body).unwrap();
        assert_eq!(sorted(back), sorted(e));
    }

    #[test]
    fn round_trips_empty_and_awkward_values() {
        let mut e = sample();
        e.path = String::new();
        e.query = String::new();
        e.callback_url = None;
        e.attempt = 0;
        e.headers.clear();
        let (h, body) = e.to_nats(None);
        assert_eq!(
            sorted(Envelope::from_nats(echo(), Some(&h), body).unwrap()),
            sorted(e)
        );

        // Separators, length-like text and multi-byte characters inside values.
        let mut e = sample();
        e.call_id = "id with spaces 3:x -".into();
        e.path = "/p q/1:2".into();
        e.query = "a= b&é=ü".into();
        e.callback_url = Some(String::new());
        e.method = "PATCH".into();
        e.start_time = u128::MAX;
        e.attempt = u32::MAX;
        let (h, body) = e.to_nats(None);
        assert_eq!(
            sorted(Envelope::from_nats(echo(), Some(&h), body).unwrap()),
            sorted(e)
        );
    }

    #[test]
    fn a_batch_id_travels_in_its_own_header() {
        let mut e = sample();
        e.batch_id = Some("b-1".into());
        let (h, body) = e.to_nats(None);
        assert_eq!(
            h.get(crate::headers::FLOTILLA_BATCH).unwrap().as_str(),
            "b-1"
        );
        let back = Envelope::from_nats(echo(), Some(&h), body).unwrap();
        assert_eq!(back.batch_id.as_deref(), Some("b-1"));
        assert!(
            back.headers
                .iter()
                .all(|(k, _)| !k.starts_with("Flotilla-"))
        );
    }

    #[test]
    fn a_priority_travels_only_when_it_is_not_normal() {
        let (h, _) = sample().to_nats(None);
        assert!(h.get(headers::FLOTILLA_PRIORITY).is_none());
        let mut e = sample();
        e.priority = Priority::High;
        let (h, body) = e.to_nats(None);
        assert_eq!(h.get(headers::FLOTILLA_PRIORITY).unwrap().as_str(), "high");
        let back = Envelope::from_nats(echo(), Some(&h), body).unwrap();
        assert_eq!(sorted(back), sorted(e));
    }

    #[test]
    fn a_fairness_key_travels_in_its_own_header() {
        let (h, _) = sample().to_nats(None);
        assert!(h.get(headers::FLOTILLA_FAIRNESS_KEY).is_none());
        let mut e = sample();
        e.fairness_key = Some(FairnessKey::parse("tenant 7").unwrap());
        let (h, body) = e.to_nats(None);
        assert_eq!(
            h.get(headers::FLOTILLA_FAIRNESS_KEY).unwrap().as_str(),
            "tenant 7"
        );
        let back = Envelope::from_nats(echo(), Some(&h), body).unwrap();
        assert_eq!(sorted(back), sorted(e));
    }

    #[test]
    fn wire_form_is_one_control_header() {
        let (h, _) = sample().to_nats(Some("k"));
        assert_eq!(
            h.get(H_CALL).unwrap().as_str(),
            "2 1700000000123456789 2 3:c-1 4:/a/b 7:x=1&y=2 21:http://127.0.0.1:9/cb POST"
        );
        let names: Vec<String> = h.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let mut e = sample();
        e.callback_url = None;
        let (h, _) = e.to_nats(None);
        assert_eq!(
            h.get(H_CALL).unwrap().as_str(),
            "2 1700000000123456789 2 3:c-1 4:/a/b 7:x=1&y=2 - POST"
        );
    }

    #[test]
    fn refuses_poison() {
        assert_eq!(
            Envelope::from_nats(echo(), None, Bytes::new()),
            Err(EnvelopeError::NoHeaders)
        );
        assert_eq!(
            decode(&HeaderMap::new()),
            Err(EnvelopeError::Missing(H_CALL))
        );
        assert_eq!(
            decode(&packed("9 1 0 1:c 0: 0: - POST")),
            Err(EnvelopeError::Version("9".into()))
        );
        let bad = [
            ("2", "start time"),
            ("2 x 0 1:c 0: 0: - POST", "start time"),
            ("2 +1 0 1:c 0: 0: - POST", "start time"),
            ("2 1 -1 1:c 0: 0: - POST", "attempt"),
            ("2 1 4294967296 1:c 0: 0: - POST", "attempt"),
            ("2 1 0 0: 0: 0: - POST", "call id"),
            ("2 1 0 c 0: 0: - POST", "call id"),
            ("2 1 0 99:c 0: 0: - POST", "call id"),
            ("2 1 0 1:cc 0: 0: - POST", "call id"),
            ("2 1 0 99999999999999999999999:c 0: 0: - POST", "call id"),
            ("2 1 0 1:c 1:a 0: - POST", "path"),
            ("2 1 0 1:c 0: 0:  - POST", "callback URL"),
            ("2 1 0 1:c 0: 0: -", "callback URL"),
            ("2 1 0 1:c 0: 1:é - POST", "query"),
            ("2 1 0 1:c 0: 0: - ", "method"),
            ("2 1 0 1:c 0: 0: - POST ", "method"),
            ("2 1 0 1:c 0: 0: - POST x", "method"),
            ("2 1 0 1:c 0: 0: - P0ST", "method"),
            ("2 1 0 1:c 0: 0: 30:x - POST", "callback URL"),
        ];
        for (value, field) in bad {
            assert_eq!(
                decode(&packed(value)),
                Err(EnvelopeError::Control(field)),
                "{value:?}"
            );
        }
        assert_eq!(
            decode(&packed("2 1 0 1:c 0: 0: - POST")).unwrap().call_id,
            "c"
        );
        // A reason fit for a dead letter names the header and the field.
        assert_eq!(
            EnvelopeError::Control("path").to_string(),
            "header Flotilla-Call is malformed: path"
        );
    }

    fn v1_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(v1::H_VERSION, "1");
        h.insert(v1::H_CALL_ID, "c-1");
        h.insert(v1::H_FUNCTION, "echo.ns");
        h.insert(v1::H_METHOD, "POST");
        h.insert(v1::H_PATH, "/a/b");
        h.insert(v1::H_QUERY, "x=1&y=2");
        h.insert(v1::H_CALLBACK_URL, "http://127.0.0.1:9/cb");
        h.insert(v1::H_START_TIME, "1700000000123456789");
        h.insert(v1::H_ATTEMPT, "2");
        h.append("Content-Type", "text/plain");
        h.append("X-Multi", "1");
        h.append("X-Multi", "2");
        h
    }

    #[test]
    fn reads_version_1() {
        let h = v1_headers();
        let e = Envelope::from_nats(echo(), Some(&h), Bytes::from_static(b"hello")).unwrap();
        assert_eq!(sorted(e.clone()), sorted(sample()));
        // Written back as version 2.
        let (h2, _) = e.to_nats(None);
        assert!(h2.get(v1::H_VERSION).is_none() && h2.get(H_CALL).is_some());

        let other = FunctionName::parse("other").unwrap();
        assert_eq!(
            Envelope::from_nats(other, Some(&h), Bytes::new()),
            Err(EnvelopeError::Malformed(v1::H_FUNCTION))
        );
        let mut h = v1_headers();
        h.insert(v1::H_METHOD, "P T");
        assert_eq!(decode(&h), Err(EnvelopeError::Malformed(v1::H_METHOD)));
        let mut h = v1_headers();
        h.insert(v1::H_VERSION, "7");
        assert_eq!(decode(&h), Err(EnvelopeError::Version("7".into())));
        let mut h = HeaderMap::new();
        h.insert(v1::H_VERSION, "1");
        assert_eq!(decode(&h), Err(EnvelopeError::Missing(v1::H_CALL_ID)));
    }

    #[test]
    fn control_fields_read_without_decoding_the_rest() {
        let (mut h, _) = sample().to_nats(None);
        h.insert("Flotilla-Dead-Reason", "boom");
        let c = Control::of(&h).unwrap();
        assert_eq!(
            (c.call_id, c.method, c.path, c.query, c.callback_url),
            (
                "c-1",
                "POST",
                "/a/b",
                "x=1&y=2",
                Some("http://127.0.0.1:9/cb")
            )
        );
        assert_eq!((c.start_time, c.attempt), (1_700_000_000_123_456_789, 2));
        assert_eq!(Control::of(&v1_headers()).unwrap().call_id, "c-1");
    }

    #[test]
    fn decimals_match_display() {
        for n in [
            0,
            7,
            10,
            99,
            1_700_000_000_123_456_789,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            let mut s = String::new();
            push_decimal(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn call_ids_are_distinct_uuid_v4() {
        // More than one batch of buffered randomness.
        let ids: std::collections::HashSet<String> = (0..200).map(|_| new_call_id()).collect();
        assert_eq!(ids.len(), 200);
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, &u.hyphenated().to_string());
        }
    }

    #[test]
    fn reserved_headers_are_dropped() {
        for n in [
            "Nats-Msg-Id",
            "nats-expected-stream",
            "FLOTILLA-Call-Id",
            "flotilla-call",
            "Connection",
            "te",
        ] {
            assert!(is_dropped_header(n), "{n}");
        }
        assert!(!is_dropped_header("Content-Type"));
        assert!(!is_dropped_header("X-Nats"));
    }
}
