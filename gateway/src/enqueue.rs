//! The asynchronous hot path: `/async-function/<name>[/<path>]` becomes one JetStream message on
//! the function's shard, and the client hears 202 only once JetStream acknowledged it. No JSON,
//! one body buffer (a single-chunk body is not copied), one context shared by every request.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use flotilla_queue::envelope::H_RETRY_AT;
use flotilla_queue::envelope::{self, Control, is_dropped_header};
use flotilla_queue::headers::{
    self, IDEMPOTENCY_KEY, X_CALL_ID, X_CALLBACK_URL, X_DELAY, X_NOT_BEFORE, spelled,
};
use flotilla_queue::status::{self, Record};
use flotilla_queue::{FunctionName, subjects};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::CallError;
use crate::hot::Hot;
use crate::routes::{header_text, split_name};
use crate::state::State;

pub const PREFIX: &str = "/async-function/";
pub const ALLOW: &str = "GET, POST, PUT, PATCH, DELETE";

/// Longest client-chosen call id or idempotency key.
pub const MAX_KEY_LEN: usize = 128;

/// Request headers that travel as envelope control fields (or are set again by the worker), so
/// they are not copied among the forwarded headers.
static CONTROL_HEADERS: [HeaderName; 5] = [
    X_CALL_ID,
    X_CALLBACK_URL,
    headers::X_START_TIME,
    headers::X_DELAY,
    headers::X_NOT_BEFORE,
];

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
    let hot = state.hot.get(name);
    // Only a function that passed every check becomes hot.
    let parsed = match hot {
        Some(_) => None,
        None => {
            let f = FunctionName::parse(name)?;
            state.check_known(&f)?;
            Some(f)
        }
    };
    let headers = &parts.headers;

    let callback_url = callback_header(state, headers).await?;
    let client_call_id = client_key(headers, &X_CALL_ID, spelled::X_CALL_ID)?;
    let idempotency_key = client_key(headers, &IDEMPOTENCY_KEY, spelled::IDEMPOTENCY_KEY)?;

    // Up to the flag; a body larger than one NATS message holds goes to the object store.
    let limit = state.max_body_bytes;
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(CallError::BodyTooLarge { limit });
    }
    let Some((_, shards)) = state.topology.get() else {
        return Err(CallError::NotReady("shard topology not agreed yet"));
    };
    if !state.nats_connected() {
        return Err(CallError::NatsDown);
    }
    let hot = match (hot, &parsed) {
        (Some(hot), _) => hot,
        (None, Some(function)) => state.hot.make(function, shards),
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
                    None => state.call_ids.next(),
                };
                let value = HeaderValue::from_str(&id).map_err(|_| CallError::BadHeader {
                    header: spelled::X_CALL_ID,
                    reason: "is not a valid header value",
                })?;
                (id.into(), value)
            }
        };

    let accepted_at = flotilla_queue::time::unix_nanos();
    let not_before = not_before(headers, accepted_at, state.max_delay)?;
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

/// When a call asks to start later (`X-Delay` or `X-Not-Before`): its start time in Unix
/// nanoseconds, or `None` to start at once (no header, or a time already past). A start further
/// than `max` from now is refused.
fn not_before(
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
            let text = text.map_err(|()| bad())?;
            let at = match time::OffsetDateTime::parse(
                text,
                &time::format_description::well_known::Rfc3339,
            ) {
                Ok(t) => u128::try_from(t.unix_timestamp_nanos()).unwrap_or(0),
                Err(_) => httpdate::parse_http_date(text)
                    .map_err(|_| bad())?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            };
            (at, spelled::X_NOT_BEFORE)
        }
    };
    let ahead =
        Duration::from_nanos(u64::try_from(asked.saturating_sub(accepted_at)).unwrap_or(u64::MAX));
    delayed(accepted_at, ahead, max, shown)
}

/// The start time of a call accepted at `accepted_at` that asks to wait `ahead` (`None`: at
/// once); refused beyond `max` (`--max-delay`), naming the field that asked (`shown`).
pub(crate) fn delayed(
    accepted_at: u128,
    ahead: Duration,
    max: Duration,
    shown: &str,
) -> Result<Option<u128>, CallError> {
    if ahead.is_zero() {
        return Ok(None);
    }
    if ahead > max {
        return Err(CallError::BadRequest(format!(
            "{shown} asks for a start {}s from now; at most {}s (--max-delay)",
            ahead.as_secs(),
            max.as_secs()
        )));
    }
    Ok(Some(accepted_at + ahead.as_nanos()))
}

/// Writes `queued` over the record an earlier call with the same id left, unless a worker
/// already wrote this call's own.
async fn requeue_status(
    state: &State,
    call_id: &str,
    function: &str,
    accepted_at: u128,
    batch_id: Option<&str>,
) {
    let Some(store) = state.keeps_status() else {
        return;
    };
    let written = store
        .transition(call_id, status::Known::Unknown, |current| match current {
            Some(r) if r.accepted_at == accepted_at => None,
            _ => Some(Record::queued(call_id, function, accepted_at, batch_id)),
        })
        .await;
    if let Err(error) = written {
        state.metrics.status_write_failed();
        tracing::warn!(%error, function, call_id, "queued status of a reused call id not stored");
    }
}

/// Room kept in the header block for `Flotilla-Status-Rev`, added once the status is stored.
const STATUS_HEADER_ROOM: usize = 48;

/// One call on its way in: what `accept` stores.
pub(crate) struct Accepting<'a> {
    pub function: &'a str,
    /// The envelope's control fields; `start_time` is the acceptance time.
    pub control: Control<'a>,
    /// `Nats-Msg-Id`, from the client's key, so a retried request enqueues once.
    pub dedup_key: Option<&'a str>,
    /// When a delayed call may start (Unix nanoseconds).
    pub not_before: Option<u128>,
    pub batch_id: Option<&'a str>,
}

/// Stores one accepted call: its `queued` status first (so the call carries the record's
/// sequence and no worker reads it), then the call itself, awaiting JetStream's PubAck. Shared
/// by the single call and every line of a batch. A call JetStream would not take leaves no
/// status behind.
pub(crate) async fn accept<K: AsRef<str>, V: AsRef<str>>(
    state: &State,
    hot: &Hot,
    a: Accepting<'_>,
    forwarded: impl IntoIterator<Item = (K, V)>,
    body: Bytes,
) -> Result<PublishAck, CallError> {
    let (name, call_id, accepted_at) = (a.function, a.control.call_id, a.control.start_time);
    let mut nats_headers = a.control.to_nats_headers(a.dedup_key, forwarded);
    if let Some(batch) = a.batch_id {
        nats_headers.insert(headers::FLOTILLA_BATCH, batch);
    }
    // A body larger than one message holds is stored first, in the object store; the call
    // carries its name. Removed again if the call is not accepted after all.
    let (body, object) = if body.len() > state.inline_limit() {
        let object = store_body(state, &body).await?;
        nats_headers.insert(headers::FLOTILLA_BODY_OBJECT, object.as_str());
        (Bytes::new(), Some(object))
    } else {
        (body, None)
    };
    let forget_body = || async {
        if let (Some(object), Some(bodies)) = (&object, state.bodies.get())
            && let Err(error) = bodies.delete(object).await
        {
            tracing::warn!(%error, object, "body of a call not accepted left in the object store until it expires");
        }
    };
    let size = nats_header_bytes(&nats_headers) + STATUS_HEADER_ROOM;
    if size > MAX_NATS_HEADER_BYTES {
        forget_body().await;
        return Err(CallError::HeadersTooLarge {
            size,
            limit: MAX_NATS_HEADER_BYTES,
        });
    }

    // A numbered call's `queued` record goes to its page while the call is published, the two
    // awaited together. Any other id's record is stored first, so the call can carry its
    // sequence and the worker never has to read it; created only where no record exists: a
    // retried POST finds its own, and the call then goes without a sequence (JetStream drops
    // the repeated call anyway).
    let mut status_taken = false;
    let kept = state.keeps_status().map(|store| {
        let mut queued = Record::queued(call_id, name, accepted_at, a.batch_id);
        queued.not_before = a.not_before;
        (store, queued)
    });
    let paged = kept
        .as_ref()
        .and_then(|(store, queued)| Some((*store, status::pages::page_of(call_id)?, queued)));
    let status = match &kept {
        Some((store, queued)) if paged.is_none() => match store.write(queued, 0).await {
            Ok(Some(revision)) => {
                nats_headers.insert(status::REVISION_HEADER, revision.to_string().as_str());
                Some((store, revision))
            }
            Ok(None) => {
                status_taken = true;
                None
            }
            Err(error) => {
                state.metrics.status_write_failed();
                tracing::warn!(%error, function = %name, call_id = %call_id, "queued status not stored; enqueueing the call without it");
                None
            }
        },
        _ => None,
    };

    // A delayed call waits where retries wait, due at its start time: durable, holding no slot,
    // moved to its function's wait subject when due (see `docs/delivery.md`).
    let subject = match a.not_before {
        None => hot.subject.clone(),
        Some(at) => {
            nats_headers.insert(H_RETRY_AT, at.to_string().as_str());
            subjects::retry_subject(hot.shard, &hot.function).into()
        }
    };
    // No timer of our own: the context's timeout bounds the send and the PubAck, and a full
    // ack window fails at once (MaxAckPending) instead of waiting.
    let publish = async {
        state
            .js
            .publish_with_headers(subject, nats_headers, body)
            .await?
            .await
    };
    let published = match paged {
        // A fresh id: nothing can repeat it, so its record goes with the call.
        Some((store, page, queued)) if a.dedup_key.is_none() => {
            tokio::join!(publish, record_queued(state, store, page, queued)).0
        }
        // A key the client sent again (a retried POST) must not record a second acceptance:
        // the record follows the call, and only when JetStream took it as new.
        Some((store, page, queued)) => {
            let published = publish.await;
            if published.as_ref().is_ok_and(|ack| !ack.duplicate) {
                record_queued(state, store, page, queued).await;
            }
            published
        }
        None => publish.await,
    };
    let ack = match published {
        Ok(ack) => ack,
        Err(e) => {
            if e.kind() == PublishErrorKind::StreamNotFound {
                state.stream_missing();
            }
            if let Some((store, revision)) = status {
                // Not accepted: no status may say it was. A record left behind only shows a
                // call that never ran, for the status retention.
                store.forget(revision).await;
            }
            forget_body().await;
            return Err(publish_error(e.kind(), &e.to_string(), hot.shard));
        }
    };
    if ack.duplicate {
        // The call it repeats carries its own body.
        forget_body().await;
    }
    if status_taken && !ack.duplicate {
        // The id names an earlier call, past the duplicate window: this new call takes its
        // record over.
        Box::pin(requeue_status(
            state,
            call_id,
            name,
            accepted_at,
            a.batch_id,
        ))
        .await;
    }
    if ack.duplicate {
        state.metrics.duplicate(name);
        tracing::debug!(function = %name, call_id = %call_id, "duplicate call dropped by JetStream");
    }
    Ok(ack)
}

/// Writes a numbered call's `queued` record to its status page; a failure is logged and counted,
/// and the call goes on without it.
async fn record_queued(
    state: &State,
    store: &status::Store,
    page: status::pages::Page,
    queued: &Record,
) {
    let write = store.write_paged(page, queued, status::pages::Guard::None);
    match tokio::time::timeout(QUEUED_RECORD_WAIT, write).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            state.metrics.status_write_failed();
            tracing::warn!(%error, function = %queued.function, call_id = %queued.call_id, "queued status not stored; the call is enqueued without it");
        }
        // The record is still on its way (a status stream electing its leader): the 202 does
        // not wait for it, and the call's later states do not need it.
        Err(_) => {
            tracing::debug!(call_id = %queued.call_id, "queued status not stored yet; answering without waiting for it");
        }
    }
}

/// How long a 202 waits for the call's `queued` record. It takes milliseconds; when a status
/// stream has no leader for a while, the call (already stored) is answered without it.
const QUEUED_RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Stores a large body in the object store under a new name, which it returns.
async fn store_body(state: &State, body: &Bytes) -> Result<String, CallError> {
    let Some(bodies) = state.bodies.get() else {
        return Err(CallError::NotReady(
            "object store of large bodies not opened yet",
        ));
    };
    let name = format!("body-{}", envelope::new_call_id());
    let mut reader: &[u8] = body;
    bodies
        .put(name.as_str(), &mut reader)
        .await
        .map_err(|e| CallError::Publish(format!("storing a {} byte body: {e}", body.len())))?;
    Ok(name)
}

/// The largest header block JetStream stores with a message (its length is kept in 16 bits).
/// Beyond it a publish fails as if JetStream were unavailable, so the gateway refuses first.
pub const MAX_NATS_HEADER_BYTES: usize = 65_535;

/// The size of `headers` as NATS sends them: `NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`.
fn nats_header_bytes(headers: &async_nats::HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

fn publish_error(kind: PublishErrorKind, text: &str, shard: u32) -> CallError {
    match kind {
        PublishErrorKind::MaxPayloadExceeded => CallError::MessageTooLarge,
        PublishErrorKind::StreamNotFound => CallError::Publish(format!(
            "no stream for shard {shard} ({})",
            subjects::call_stream(shard)
        )),
        PublishErrorKind::TimedOut => CallError::Publish("no PubAck from JetStream in time".into()),
        PublishErrorKind::MaxAckPending => {
            CallError::Publish("too many calls awaiting JetStream's PubAck".into())
        }
        _ => CallError::Publish(text.to_owned()),
    }
}

/// Reads the whole body, refusing it once it passes `limit`.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, CallError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(CallError::BodyTooLarge { limit })
        }
        Err(e) => Err(CallError::BodyRead(e.to_string())),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A client-chosen call id or idempotency key: 1 to 128 visible ASCII characters, as it is
/// echoed in a header and stored in a NATS header.
fn client_key<'a>(
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
pub(crate) fn check_client_key(
    key: impl AsRef<[u8]>,
    shown: &'static str,
) -> Result<(), CallError> {
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

/// Whether a request header is one the gateway consumes itself (call id, callback, delay, start
/// time) rather than forwards.
pub(crate) fn is_control_header(name: &HeaderName) -> bool {
    CONTROL_HEADERS.contains(name)
}

/// The request's `X-Callback-Url`, checked: well formed and a target the callback policy allows.
pub(crate) async fn callback_header<'a>(
    state: &State,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, CallError> {
    match header_text(headers, &X_CALLBACK_URL) {
        None => Ok(None),
        Some(Ok(url)) => {
            check_callback(state, url).await?;
            Ok(Some(url))
        }
        Some(Err(())) => Err(CallError::BadCallbackUrl("is not valid text")),
    }
}

/// Refuses a callback URL that is malformed or whose target the callback policy refuses.
pub(crate) async fn check_callback(state: &State, url: &str) -> Result<(), CallError> {
    let host = check_callback_url(url)?;
    state
        .callback_guard
        .check(&host)
        .await
        .map_err(CallError::CallbackRefused)
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

/// The request's headers that travel to the function: not hop-by-hop, not reserved for the
/// envelope, not a control field. Values that are not UTF-8 are carried lossily.
fn forwarded_headers(headers: &HeaderMap) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    headers.iter().filter_map(|(name, value)| {
        if is_control_header(name) || is_dropped_header(name.as_str()) {
            return None;
        }
        Some((name.as_str(), String::from_utf8_lossy(value.as_bytes())))
    })
}

/// The `Nats-Msg-Id` of a call with a client's key: JetStream's de-duplication map is per
/// stream, so the key is scoped by function and two functions of one shard may use the same key.
/// Single calls and batch lines share it, so a key repeats across both.
pub(crate) fn dedup_key(function: &str, key: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
