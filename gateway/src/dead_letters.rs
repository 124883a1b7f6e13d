//! The dead-letter API: `GET /system/dead-letters` lists the letters in `FLOTILLA_DEAD` a page at
//! a time, and `POST /system/dead-letters/replay` puts selected calls back on their function's
//! shard with a fresh retry budget, then removes the letters. Operator routes, behind the
//! `/system` auth; they speak JSON and may allocate, but a page never reads more of the stream
//! than it shows, and one replay request does bounded work.
//!
//! Invariant: a letter is deleted only after JetStream acknowledged its replayed call, and the
//! replayed call carries a `Nats-Msg-Id` derived from the letter, so a retried or concurrent
//! replay of the same letter enqueues the call once (within the shard's duplicate window).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::stream::{
    DeleteMessageErrorKind, RawMessageErrorKind, Stream as JsStream,
};
use flotilla_queue::dead_letter as dl;
use flotilla_queue::envelope::{self, Envelope};
use flotilla_queue::{FunctionName, ShardMap, subjects};
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::enqueue::read_body;
use crate::error::CallError;
use crate::state::State;

pub const LIST_PATH: &str = "/system/dead-letters";
pub const REPLAY_PATH: &str = "/system/dead-letters/replay";

/// Letters on a page when the client names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page. Above it the request is refused (400) rather than clamped, so a client never
/// mistakes a short page for the end of the list.
pub const MAX_LIMIT: usize = 1000;
/// Most letters one replay request handles; the client repeats with the returned `next` cursor.
/// Bounds the time and the JetStream traffic of one request.
pub const MAX_REPLAY: usize = 10_000;
/// A replay selector is a small JSON document: 10,000 sequences fit well within this.
const MAX_SELECTOR_BYTES: usize = 1024 * 1024;
/// Letters replayed at once: enough to hide round trips, few enough to leave the publish ack
/// window to the asynchronous calls that share it.
const REPLAY_CONCURRENCY: usize = 32;
/// Letters fetched per pull request while scanning.
const SCAN_BATCH: usize = 1000;
/// A scan deletes its consumer when done; should the gateway die first, JetStream drops the
/// consumer after this much inactivity.
const SCAN_INACTIVE: Duration = Duration::from_secs(30);
/// Header JetStream adds to a headers-only delivery: the size of the payload it left out.
const NATS_MSG_SIZE: &str = "Nats-Msg-Size";

const LIST_ALLOW: &str = "GET, HEAD";
const REPLAY_ALLOW: &str = "POST";

/// Routes a `/system/*` path other than `/system/info` (auth already checked).
pub async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    match req.uri().path() {
        LIST_PATH => {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return Err(CallError::MethodNotAllowed { allow: LIST_ALLOW });
            }
            list(state, req.uri().query()).await
        }
        REPLAY_PATH => {
            if req.method() != Method::POST {
                return Err(CallError::MethodNotAllowed {
                    allow: REPLAY_ALLOW,
                });
            }
            replay(state, req).await
        }
        _ => Err(CallError::NotFound),
    }
}

// ---------------------------------------------------------------------------------------------
// Listing

/// `?function=<name>&after=<seq>&limit=<n>`, all optional.
#[derive(Debug, PartialEq)]
struct ListQuery {
    /// The dead-letter subject token: a function name, or `subjects::UNNAMED_DEAD_TOKEN`.
    function: Option<String>,
    after: u64,
    limit: usize,
}

fn parse_list_query(query: Option<&str>) -> Result<ListQuery, CallError> {
    let mut q = ListQuery {
        function: None,
        after: 0,
        limit: DEFAULT_LIMIT,
    };
    let mut seen = [false; 3];
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(raw).ok_or_else(|| {
            bad(format!(
                "query parameter {key} is not valid percent-encoded text"
            ))
        })?;
        let slot = match key {
            "function" => 0,
            "after" => 1,
            "limit" => 2,
            // Refused rather than ignored: a misspelt `function` would otherwise list everything.
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {key:?} (expected function, after, limit)"
                )));
            }
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(bad(format!("query parameter {key} is given twice")));
        }
        match slot {
            0 => q.function = Some(dead_filter(&value)?),
            1 => {
                q.after = value
                    .parse()
                    .map_err(|_| bad("after must be a dead-letter sequence number".into()))?;
            }
            _ => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("limit must be between 1 and {MAX_LIMIT}")))?;
            }
        }
    }
    Ok(q)
}

/// One dead letter as the API shows it. Fields the letter does not carry are `null` (a poison
/// message may lack any of the envelope's headers).
#[derive(Debug, Serialize)]
struct Item {
    /// Sequence in `FLOTILLA_DEAD`: the letter's identity for replay and the paging cursor.
    sequence: u64,
    /// The function of the dead-letter subject (`~invalid` when the message named none).
    function: String,
    call_id: Option<String>,
    /// `poison` or `exhausted`.
    kind: Option<String>,
    reason: Option<String>,
    attempts: Option<u32>,
    last_status: Option<u16>,
    /// When the call was dead-lettered, RFC 3339 in UTC with nanoseconds.
    time: Option<String>,
    origin_stream: Option<String>,
    origin_sequence: Option<u64>,
    origin_subject: Option<String>,
    method: Option<String>,
    path: Option<String>,
    query: Option<String>,
    callback_url: Option<String>,
    /// Size of the stored body (the request body of the call).
    body_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Page {
    dead_letters: Vec<Item>,
    /// Pass as `after` for the next page; `null` when this page reached the end.
    next: Option<u64>,
    /// Letters matching the filter in the whole stream, at the time of the request.
    total: u64,
}

async fn list(state: &State, query: Option<&str>) -> Result<Response<Body>, CallError> {
    let q = parse_list_query(query)?;
    if !state.nats_connected() {
        return Err(CallError::NatsDown);
    }
    let stream = dead_stream(state).await?;
    let filter = filter_subject(q.function.as_deref());
    let total = match &q.function {
        None => stream.cached_info().state.messages,
        Some(_) => count_subject(&stream, &filter).await?,
    };
    let scan = scan(&stream, &filter, q.after, q.limit).await?;
    let next = scan.next();
    let page = Page {
        dead_letters: scan.letters.iter().map(Letter::item).collect(),
        next,
        total,
    };
    json_response(&page)
}

/// Letters stored under one function's dead-letter subject.
async fn count_subject(stream: &JsStream, subject: &str) -> Result<u64, CallError> {
    let mut counts = stream
        .info_with_subjects(subject)
        .await
        .map_err(|e| unavailable("counting dead letters", e))?;
    let mut total = 0u64;
    while let Some(entry) = counts.next().await {
        let (_, n) = entry.map_err(|e| unavailable("counting dead letters", e))?;
        total += n as u64;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Scanning

/// A dead letter's headers as a headers-only delivery carries them.
#[derive(Debug)]
struct Letter {
    sequence: u64,
    subject: String,
    headers: HeaderMap,
}

impl Letter {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.header(name).and_then(|v| v.parse().ok())
    }

    fn item(&self) -> Item {
        let text = |name: &str| self.header(name).map(str::to_owned);
        // A poison letter may have no readable control fields; it is listed without them.
        let call = envelope::Control::of(&self.headers).ok();
        let call = call.as_ref();
        let owned = |v: Option<&str>| v.map(str::to_owned);
        let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
        Item {
            sequence: self.sequence,
            function: function_of_dead_subject(&self.subject).to_owned(),
            call_id: owned(call.map(|c| c.call_id)),
            kind: text(dl::H_KIND),
            reason: text(dl::H_REASON),
            attempts: self.parsed(dl::H_ATTEMPTS),
            last_status: self.parsed(dl::H_LAST_STATUS),
            time: self.parsed::<u128>(dl::H_TIME).and_then(rfc3339),
            origin_stream: text(dl::H_STREAM),
            origin_sequence: self.parsed(dl::H_SEQUENCE),
            origin_subject: text(dl::H_SUBJECT),
            method: owned(call.map(|c| c.method)),
            path: nonempty(call.map(|c| c.path)),
            query: nonempty(call.map(|c| c.query)),
            callback_url: owned(call.and_then(|c| c.callback_url)),
            body_bytes: self.parsed(NATS_MSG_SIZE),
        }
    }
}

#[derive(Debug)]
struct Scan {
    letters: Vec<Letter>,
    /// True when letters matching the filter remain after the last one returned.
    more: bool,
}

impl Scan {
    /// The cursor to continue from, when there is more.
    fn next(&self) -> Option<u64> {
        self.letters
            .last()
            .filter(|_| self.more)
            .map(|l| l.sequence)
    }
}

/// Up to `max` letters on `filter` with a sequence above `after`, oldest first. An ephemeral
/// consumer starting at `after + 1` delivers only headers (JetStream adds the body size), in
/// batches: a page costs a few JetStream requests whatever the stream's size, and bodies never
/// travel.
async fn scan(stream: &JsStream, filter: &str, after: u64, max: usize) -> Result<Scan, CallError> {
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            ack_policy: AckPolicy::None,
            headers_only: true,
            memory_storage: true,
            inactive_threshold: SCAN_INACTIVE,
            description: Some("flotilla-gateway dead-letter scan".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("reading dead letters", e))?;
    let name = consumer.cached_info().name.clone();
    let result = read_scan(&consumer, max).await;
    if let Err(error) = stream.delete_consumer(&name).await {
        tracing::debug!(%error, consumer = %name, "scan consumer not deleted; it expires on its own");
    }
    result
}

async fn read_scan(consumer: &PullConsumer, max: usize) -> Result<Scan, CallError> {
    let mut pending = consumer.cached_info().num_pending;
    let mut letters = Vec::new();
    while letters.len() < max && pending > 0 {
        let want = (max - letters.len()).min(SCAN_BATCH);
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(|e| unavailable("reading dead letters", e))?;
        let before = letters.len();
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| unavailable("reading dead letters", e))?;
            let info = msg
                .info()
                .map_err(|e| unavailable("reading dead letters", e))?;
            pending = info.pending;
            let sequence = info.stream_sequence;
            let (msg, _) = msg.split();
            letters.push(Letter {
                sequence,
                subject: msg.subject.to_string(),
                headers: msg.headers.unwrap_or_default(),
            });
        }
        if letters.len() == before {
            // Nothing available although some was pending: deleted meanwhile.
            pending = 0;
        }
    }
    Ok(Scan {
        letters,
        more: pending > 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Replay

/// The replay request body. Exactly one selector: `sequences`, `function` or `all: true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorBody {
    sequences: Option<Vec<u64>>,
    function: Option<String>,
    #[serde(default)]
    all: bool,
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, PartialEq)]
enum Selection {
    /// These letters, in this order (repeats dropped).
    Sequences(Vec<u64>),
    /// Letters of one function (or of all, `None`) above `after`, at most `limit`.
    Filter {
        function: Option<String>,
        after: u64,
        limit: usize,
    },
}

fn parse_selector(body: &[u8]) -> Result<Selection, CallError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(SELECT_HINT.into()));
    }
    let s: SelectorBody = serde_json::from_slice(body)
        .map_err(|e| bad(format!("replay selector is not valid: {e}")))?;
    let chosen =
        usize::from(s.sequences.is_some()) + usize::from(s.function.is_some()) + usize::from(s.all);
    if chosen != 1 {
        return Err(bad(SELECT_HINT.into()));
    }
    if let Some(sequences) = s.sequences {
        if s.after.is_some() || s.limit.is_some() {
            return Err(bad(
                "after and limit apply to function and all, not to sequences".into(),
            ));
        }
        if sequences.is_empty() || sequences.len() > MAX_REPLAY {
            return Err(bad(format!(
                "sequences must list 1 to {MAX_REPLAY} dead-letter sequences"
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(sequences.len());
        let unique = sequences.into_iter().filter(|s| seen.insert(*s)).collect();
        return Ok(Selection::Sequences(unique));
    }
    let function = s.function.as_deref().map(dead_filter).transpose()?;
    let limit = match s.limit {
        None => MAX_REPLAY,
        Some(n) if (1..=MAX_REPLAY).contains(&n) => n,
        Some(_) => return Err(bad(format!("limit must be between 1 and {MAX_REPLAY}"))),
    };
    Ok(Selection::Filter {
        function,
        after: s.after.unwrap_or(0),
        limit,
    })
}

const SELECT_HINT: &str = "select what to replay with exactly one of {\"sequences\":[..]}, \
                           {\"function\":\"<name>\"} or {\"all\":true}";

#[derive(Debug, Default, Serialize)]
struct ReplayReport {
    /// Calls now on their shard (including ones JetStream recognised as an earlier replay).
    replayed: u64,
    /// Letters left alone: not found, or not replayable (kept in the stream).
    skipped: Vec<Skipped>,
    /// Letters whose replay failed; repeating the request retries them.
    failed: Vec<Failed>,
    /// For `function` and `all`: pass as `after` to continue; `null` when the selection is done.
    next: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    sequence: u64,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Failed {
    sequence: u64,
    reason: String,
    /// True when the call was enqueued but the letter could not be removed: repeating the
    /// request within the duplicate window removes it without enqueuing again.
    enqueued: bool,
}

/// What became of one letter.
#[derive(Debug, thiserror::Error)]
enum LetterError {
    #[error("no dead letter with this sequence (already replayed, deleted or expired)")]
    NotFound,
    #[error("not replayable: {0}")]
    Poison(#[from] flotilla_queue::EnvelopeError),
    #[error("not replayable: its subject names no valid function")]
    NoFunction,
    #[error("dead letter could not be read: {0}")]
    Read(String),
    #[error("enqueue failed: {0}")]
    Publish(String),
    #[error("enqueued, but the dead letter could not be removed: {0}")]
    Delete(String),
}

impl LetterError {
    /// Skipped letters need no retry; failed ones may succeed when asked again.
    fn is_skip(&self) -> bool {
        matches!(self, Self::NotFound | Self::Poison(_) | Self::NoFunction)
    }
}

async fn replay(state: &State, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    let body = read_body(req.into_body(), MAX_SELECTOR_BYTES).await?;
    let selection = parse_selector(&body)?;
    let Some((_, shards)) = state.topology.get() else {
        return Err(CallError::NotReady("shard topology not agreed yet"));
    };
    if !state.nats_connected() {
        return Err(CallError::NatsDown);
    }
    let stream = &dead_stream(state).await?;
    let (sequences, next) = match selection {
        Selection::Sequences(s) => (s, None),
        Selection::Filter {
            function,
            after,
            limit,
        } => {
            let scan = scan(stream, &filter_subject(function.as_deref()), after, limit).await?;
            let next = scan.next();
            (scan.letters.iter().map(|l| l.sequence).collect(), next)
        }
    };

    let mut outcomes = futures_util::stream::iter(sequences)
        .map(|sequence| async move {
            let outcome = replay_one(state, stream, shards, sequence).await;
            (sequence, outcome)
        })
        .buffered(REPLAY_CONCURRENCY);
    let mut report = ReplayReport {
        next,
        ..Default::default()
    };
    while let Some((sequence, (function, outcome))) = outcomes.next().await {
        match outcome {
            Ok(duplicate) => {
                report.replayed += 1;
                state
                    .metrics
                    .replay(&function, if duplicate { "duplicate" } else { "replayed" });
            }
            Err(e) if e.is_skip() => {
                state.metrics.replay(&function, "skipped");
                report.skipped.push(Skipped {
                    sequence,
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                state.metrics.replay(&function, "failed");
                tracing::warn!(sequence, %function, error = %e, "dead letter not replayed");
                report.failed.push(Failed {
                    sequence,
                    enqueued: matches!(e, LetterError::Delete(_)),
                    reason: e.to_string(),
                });
            }
        }
    }
    tracing::info!(
        replayed = report.replayed,
        skipped = report.skipped.len(),
        failed = report.failed.len(),
        "dead letters replayed"
    );
    json_response(&report)
}

/// Replays one letter: read it, rebuild the call with its attempts reset, publish it to the
/// function's shard and await the PubAck, then delete the letter. Returns the function (for the
/// metric) and whether JetStream reported the call as a duplicate of an earlier replay.
async fn replay_one(
    state: &State,
    stream: &JsStream,
    shards: &ShardMap,
    sequence: u64,
) -> (String, Result<bool, LetterError>) {
    let letter = match stream.get_raw_message(sequence).await {
        Ok(m) => m,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
            return ("unknown".into(), Err(LetterError::NotFound));
        }
        Err(e) => return ("unknown".into(), Err(LetterError::Read(e.to_string()))),
    };
    let msg_id = replay_msg_id(sequence, &letter.headers);
    // The dead-letter subject names the function (`~invalid` when the message named none).
    let named = function_of_dead_subject(letter.subject.as_str());
    let decoded = FunctionName::parse(named)
        .map_err(|_| LetterError::NoFunction)
        .and_then(|function| {
            Envelope::from_nats(function, Some(&letter.headers), letter.payload)
                .map_err(LetterError::from)
        });
    let mut call = match decoded {
        Ok(call) => call,
        Err(e) => return (named.to_owned(), Err(e)),
    };
    // A fresh retry budget; everything else (call id, callback URL, start time, headers, body)
    // is the original call's. `to_nats` writes no `Flotilla-Dead-*` header.
    call.attempt = 0;
    let function = call.function.to_string();
    let shard = shards.shard_of(call.function.as_str());
    let (headers, payload) = call.to_nats(Some(&msg_id));
    let publish = async {
        state
            .js
            .publish_with_headers(
                subjects::call_subject(shard, &call.function),
                headers,
                payload,
            )
            .await?
            .await
    };
    let duplicate = match publish.await {
        Ok(ack) => ack.duplicate,
        Err(e) => {
            if e.kind() == PublishErrorKind::StreamNotFound {
                state.stream_missing();
            }
            return (function, Err(LetterError::Publish(e.to_string())));
        }
    };
    match stream.delete_message(sequence).await {
        Ok(_) => {}
        // A concurrent replay of the same letter deleted it first.
        Err(e)
            if matches!(e.kind(), DeleteMessageErrorKind::JetStream(ref j)
                if matches!(j.error_code(), ErrorCode::SEQUENCE_NOT_FOUND | ErrorCode::NO_MESSAGE_FOUND)) =>
            {}
        Err(e) => return (function, Err(LetterError::Delete(e.to_string()))),
    }
    (function, Ok(duplicate))
}

/// `Nats-Msg-Id` of a replayed call: the letter's sequence plus the time it was dead-lettered
/// (so a re-created dead stream reusing sequences cannot collide within the window). No ':', so
/// it never equals a client key, which the gateway stores as `<function>:<key>`.
fn replay_msg_id(sequence: u64, headers: &HeaderMap) -> String {
    let time = headers.get(dl::H_TIME).map_or("", |v| v.as_str());
    format!("replay-{}-{sequence}-{time}", subjects::DEAD_STREAM)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// The dead-letter stream, with its info. A missing stream has the topology task re-create it.
async fn dead_stream(state: &State) -> Result<JsStream, CallError> {
    state
        .js
        .get_stream(subjects::DEAD_STREAM)
        .await
        .map_err(|e| {
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
            {
                state.stream_missing();
            }
            unavailable("opening the dead-letter stream", e)
        })
}

/// A `function` filter: a valid function name, or `~invalid` for poison that named none.
fn dead_filter(value: &str) -> Result<String, CallError> {
    if value == subjects::UNNAMED_DEAD_TOKEN {
        return Ok(value.to_owned());
    }
    Ok(FunctionName::parse(value)?.to_string())
}

fn filter_subject(token: Option<&str>) -> String {
    token.map_or_else(subjects::dead_wildcard, subjects::dead_subject)
}

/// `flotilla.dead.<function>` → `<function>`.
fn function_of_dead_subject(subject: &str) -> &str {
    subjects::dead_token_of_subject(subject).unwrap_or(subject)
}

fn bad(reason: String) -> CallError {
    CallError::BadRequest(reason)
}

fn unavailable(doing: &str, e: impl std::fmt::Display) -> CallError {
    CallError::DeadLetters(format!("{doing}: {e}"))
}

fn json_response(value: &impl Serialize) -> Result<Response<Body>, CallError> {
    let bytes = serde_json::to_vec(value).map_err(|e| CallError::Internal(e.to_string()))?;
    let mut resp = Response::new(Body::full(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Decodes `%XX` escapes (and `+` as a space, as forms send it); `None` when an escape is broken
/// or the result is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Unix nanoseconds as RFC 3339 in UTC (`2024-05-01T12:00:00.123456789Z`); `None` past 9999.
fn rfc3339(unix_nanos: u128) -> Option<String> {
    let secs = u64::try_from(unix_nanos / 1_000_000_000).ok()?;
    let nanos = unix_nanos % 1_000_000_000;
    let days = i64::try_from(secs / 86_400).ok()?;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return None;
    }
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is 1..=31 and m 1..=12 by construction.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001).unwrap(),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789).unwrap(),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399_000_000_000).unwrap(),
            "2100-02-28T23:59:59.000000000Z"
        );
        assert!(rfc3339(u128::MAX).is_none());
    }

    #[test]
    fn list_queries() {
        assert_eq!(
            parse_list_query(None).unwrap(),
            ListQuery {
                function: None,
                after: 0,
                limit: DEFAULT_LIMIT
            }
        );
        let q = parse_list_query(Some("function=fn.ns&after=7&limit=1000")).unwrap();
        assert_eq!(q.function.unwrap().as_str(), "fn.ns");
        assert_eq!((q.after, q.limit), (7, 1000));
        assert_eq!(
            parse_list_query(Some("function=a%2Db"))
                .unwrap()
                .function
                .unwrap()
                .as_str(),
            "a-b"
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "after=-1",
            "function=a*b",
            "function=",
            "function=a&function=b",
            "fn=a",
            "function=%zz",
        ] {
            let e = parse_list_query(Some(bad)).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn selectors() {
        let p = |s: &str| parse_selector(s.as_bytes());
        assert_eq!(
            p(r#"{"sequences":[3,1,3]}"#).unwrap(),
            Selection::Sequences(vec![3, 1])
        );
        assert_eq!(
            p(r#"{"all":true}"#).unwrap(),
            Selection::Filter {
                function: None,
                after: 0,
                limit: MAX_REPLAY
            }
        );
        assert!(matches!(
            p(r#"{"function":"echo","after":5,"limit":10}"#).unwrap(),
            Selection::Filter { function: Some(f), after: 5, limit: 10 } if f.as_str() == "echo"
        ));
        for bad in [
            "",
            "  ",
            "{}",
            "[]",
            "null",
            r#"{"all":false}"#,
            r#"{"sequences":[]}"#,
            r#"{"sequences":[1],"all":true}"#,
            r#"{"function":"a","all":true}"#,
            r#"{"sequences":[1],"after":1}"#,
            r#"{"function":"a b"}"#,
            r#"{"all":true,"limit":0}"#,
            r#"{"all":true,"limit":10001}"#,
            r#"{"everything":true}"#,
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let many = format!(
            "{{\"sequences\":[{}]}}",
            (1..=MAX_REPLAY as u64 + 1)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(p(&many).is_err());
    }

    #[test]
    fn dead_subjects_name_their_function() {
        assert_eq!(function_of_dead_subject("flotilla.dead.fn.ns"), "fn.ns");
        assert_eq!(
            function_of_dead_subject("flotilla.dead.~invalid"),
            "~invalid"
        );
        assert_eq!(filter_subject(None), "flotilla.dead.>");
    }

    #[test]
    fn replay_ids_carry_no_colon() {
        let mut h = HeaderMap::new();
        h.insert(dl::H_TIME, "123");
        let id = replay_msg_id(9, &h);
        assert_eq!(id, "replay-FLOTILLA_DEAD-9-123");
        assert!(!id.contains(':'));
    }
}
