//! `/system/dead-letters/<sequence>`: `GET` shows one letter with every header it carries and a
//! preview of its body (text as text, anything else as hex); `DELETE` removes it, and its body
//! from the object store when the call's body lives there.

use async_nats::jetstream::object_store::GetErrorKind;
use async_nats::jetstream::stream::RawMessageErrorKind;
use flotilla_queue::envelope;
use http::{Method, Response, StatusCode};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::common::{already_gone, dead_stream, unavailable};
use super::list::Item;
use super::scan::Letter;
use crate::body::Body;
use crate::error::{CallError, json_response};
use crate::state::State;

/// The most of a body a preview shows.
pub const PREVIEW_BYTES: usize = 4096;

const ALLOW: &str = "GET, HEAD, DELETE";

/// Routes `/system/dead-letters/<rest>` other than `replay` (auth already checked).
pub(super) async fn route(
    state: &State,
    method: &Method,
    rest: &str,
) -> Result<Response<Body>, CallError> {
    let sequence = rest
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0 && rest.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            CallError::BadRequest(
                format!("{rest:?} is not a dead-letter sequence (a positive integer)").into(),
            )
        })?;
    if !state.nats.connected() {
        return Err(CallError::NatsDown);
    }
    match *method {
        Method::GET | Method::HEAD => show(state, sequence).await,
        Method::DELETE => delete(state, sequence).await,
        _ => Err(CallError::MethodNotAllowed { allow: ALLOW }),
    }
}

/// One letter as `GET` shows it: the list's fields, every header, and the body's preview.
#[derive(Debug, Serialize)]
struct Detail {
    #[serde(flatten)]
    item: Item,
    headers: Vec<Header>,
    body: Preview,
}

#[derive(Debug, Serialize)]
struct Header {
    name: String,
    value: String,
}

/// The start of a body, in a form that shows it faithfully.
#[derive(Debug, PartialEq, Serialize)]
struct Preview {
    /// The whole body's size.
    bytes: u64,
    /// How much of it the preview shows.
    preview_bytes: usize,
    truncated: bool,
    /// `text` when the shown bytes are UTF-8 without control characters (tab and line breaks
    /// aside), else `hex`.
    encoding: &'static str,
    /// The text, or the bytes as two hex digits each, space separated.
    preview: String,
    /// True when the body is kept in the object store (the call's body was larger than one
    /// NATS message).
    in_object_store: bool,
}

impl Preview {
    fn of(shown: &[u8], bytes: u64, in_object_store: bool) -> Self {
        let shown = &shown[..shown.len().min(PREVIEW_BYTES)];
        let truncated = (shown.len() as u64) < bytes;
        let (encoding, preview) = match as_text(shown, truncated) {
            Some(text) => ("text", text.to_owned()),
            None => ("hex", hex(shown)),
        };
        Self {
            bytes,
            preview_bytes: shown.len(),
            truncated,
            encoding,
            preview,
            in_object_store,
        }
    }
}

/// `bytes` as text, when they are UTF-8 (a character cut by the preview's end aside) without
/// control characters other than tab, CR and LF.
fn as_text(bytes: &[u8], truncated: bool) -> Option<&str> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // Cut inside a character by the preview's end: the complete characters before it.
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let printable = |c: char| !c.is_control() || matches!(c, '\t' | '\n' | '\r');
    text.chars().all(printable).then_some(text)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

async fn show(state: &State, sequence: u64) -> Result<Response<Body>, CallError> {
    let stream = dead_stream(state).await?;
    let raw = read(&stream, sequence).await?;
    let object = body_object(&raw.headers);
    let body = match &object {
        None => Preview::of(&raw.payload, raw.payload.len() as u64, false),
        Some(object) => object_preview(state, object).await?,
    };
    let mut headers: Vec<Header> = raw
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values.iter().map(move |v| Header {
                name: name.to_string(),
                value: v.as_str().to_owned(),
            })
        })
        .collect();
    // NATS keeps no order across names: sorted, a letter reads the same every time.
    headers.sort_by_cached_key(|h| h.name.to_ascii_lowercase());
    let mut item = Item::of(&Letter {
        sequence,
        subject: raw.subject.to_string(),
        headers: raw.headers,
    });
    item.body_bytes = Some(body.bytes);
    json_response(
        StatusCode::OK,
        &Detail {
            item,
            headers,
            body,
        },
    )
}

/// The letter stored at `sequence`, with its headers and body.
async fn read(
    stream: &async_nats::jetstream::stream::Stream,
    sequence: u64,
) -> Result<async_nats::jetstream::message::StreamMessage, CallError> {
    match stream.get_raw_message(sequence).await {
        Ok(m) => Ok(m),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
            Err(CallError::UnknownLetter(sequence))
        }
        Err(e) => Err(unavailable("reading the dead letter", e)),
    }
}

/// The object holding the call's body, when the letter's envelope names one.
fn body_object(headers: &async_nats::HeaderMap) -> Option<String> {
    headers
        .get(flotilla_queue::headers::FLOTILLA_BODY_OBJECT)
        .map(|v| v.as_str().to_owned())
        .filter(|_| envelope::Control::of(headers).is_ok())
}

/// The first [`PREVIEW_BYTES`] of a body kept in the object store; an object already gone
/// previews as empty (the letter can then not be replayed, and says so when it is).
async fn object_preview(state: &State, object: &str) -> Result<Preview, CallError> {
    let Some(bodies) = state.streams.bodies.get() else {
        return Err(CallError::NotReady("the bodies store is not open yet"));
    };
    let mut reader = match bodies.get(object).await {
        Ok(r) => r,
        Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(Preview::of(&[], 0, true)),
        Err(e) => return Err(unavailable("reading the dead letter's body", e)),
    };
    let size = reader.info().size as u64;
    let mut shown = Vec::with_capacity(PREVIEW_BYTES);
    (&mut reader)
        .take(PREVIEW_BYTES as u64)
        .read_to_end(&mut shown)
        .await
        .map_err(|e| unavailable("reading the dead letter's body", e))?;
    Ok(Preview::of(&shown, size, true))
}

#[derive(Debug, Serialize)]
struct Deleted {
    deleted: u64,
}

/// Removes the letter, then its body object: the call is gone for good (its status stays
/// `dead`). The object goes second, so a failure between the two leaves a body without a letter,
/// which the bucket's maximum age removes, never a letter without its body.
async fn delete(state: &State, sequence: u64) -> Result<Response<Body>, CallError> {
    let stream = dead_stream(state).await?;
    let object = body_object(&read(&stream, sequence).await?.headers);
    match stream.delete_message(sequence).await {
        Ok(_) => {}
        Err(e) if already_gone(&e) => return Err(CallError::UnknownLetter(sequence)),
        Err(e) => return Err(unavailable("deleting the dead letter", e)),
    }
    if let (Some(object), Some(bodies)) = (object, state.streams.bodies.get())
        && let Err(error) = bodies.delete(&object).await
    {
        tracing::debug!(%error, object, "body of a deleted dead letter left in the object store until it expires");
    }
    tracing::info!(sequence, "dead letter deleted");
    json_response(StatusCode::OK, &Deleted { deleted: sequence })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_shows_as_text_and_anything_else_as_hex() {
        let p = Preview::of(b"<script>alert(1)</script>\n", 26, false);
        assert_eq!(
            (p.encoding, p.preview.as_str()),
            ("text", "<script>alert(1)</script>\n")
        );
        assert!(!p.truncated);
        let p = Preview::of(&[0, 0xff, 0x1a], 3, false);
        assert_eq!((p.encoding, p.preview.as_str()), ("hex", "00 ff 1a"));
        // A control character makes it binary, a tab does not.
        assert_eq!(Preview::of(b"a\x07b", 3, false).encoding, "hex");
        assert_eq!(Preview::of(b"a\tb", 3, false).encoding, "text");
    }

    #[test]
    fn a_long_body_is_cut_and_a_character_cut_in_two_dropped() {
        let mut body = "a".repeat(PREVIEW_BYTES - 1).into_bytes();
        body.extend_from_slice("é and more".as_bytes());
        let p = Preview::of(&body, body.len() as u64, false);
        assert!(p.truncated);
        assert_eq!(p.preview_bytes, PREVIEW_BYTES);
        assert_eq!(p.encoding, "text");
        assert_eq!(p.preview.len(), PREVIEW_BYTES - 1);
        // Invalid UTF-8 in the middle is binary, truncated or not.
        let mut bad = vec![b'a'; 10];
        bad.push(0xc3);
        bad.extend_from_slice(b"zz");
        assert_eq!(Preview::of(&bad, 10_000, false).encoding, "hex");
    }
}
