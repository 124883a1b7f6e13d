//! `/async-batch/<name>`: `POST` stores many asynchronous calls to one function, one JSON object
//! a line (NDJSON), each as a single call is stored (`accept::accept`), at most [`OUTSTANDING`]
//! at once, and streams one result a line back in the lines' order; `GET` reads its progress.
//! Invariant: a batch is never held whole in memory, in either direction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use flotilla_queue::batch::{self, Meta};
use flotilla_queue::envelope::{self, Control, is_dropped_header};
use flotilla_queue::headers::X_BATCH_ID;
use flotilla_queue::{FairnessKey, FunctionName, Priority, parse_duration};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::accept::{Accepting, accept};
use crate::body::Body;
use crate::error::{CallError, Invalid, json_response};
use crate::hot::Hot;
use crate::request::{
    callback_header, check_callback, check_client_key, dedup_key, delayed, derived_call_id,
    is_control_header,
};
use crate::state::State;

pub const PREFIX: &str = "/async-batch/";
const ALLOW: &str = "GET, HEAD, POST";
/// The media type of a batch (one JSON object a line).
pub const NDJSON: &str = "application/x-ndjson";
/// Lines being stored at once: enough to hide the round trips to JetStream, few enough that a
/// batch cannot crowd out single calls (`--max-publish-inflight` bounds them all).
const OUTSTANDING: usize = 256;
/// Room on a line for its fields beside the body (whose base64 takes 4/3 of its size).
const LINE_OVERHEAD: usize = 64 * 1024;

pub async fn route(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    match *req.method() {
        Method::POST => submit(state, req).await,
        Method::GET | Method::HEAD => progress(&state, &req.uri().path()[PREFIX.len()..]).await,
        _ => Err(CallError::MethodNotAllowed { allow: ALLOW }),
    }
}

/// `GET /async-batch/<id>`: the batch's calls by state, summed from the counters.
async fn progress(state: &State, batch_id: &str) -> Result<Response<Body>, CallError> {
    if !state.nats.connected() {
        return Err(CallError::NatsDown);
    }
    match batch::read(&state.nats.js, batch_id).await {
        Ok(Some((_, progress))) => json_response(StatusCode::OK, &progress),
        Ok(None) => Err(CallError::UnknownBatch(batch_id.to_owned())),
        Err(e) => Err(CallError::Status(e.into())),
    }
}

/// One line of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    body: Option<String>,
    body_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    path: String,
    #[serde(default)]
    query: String,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
    delay: Option<String>,
    priority: Option<String>,
    fairness_key: Option<String>,
}

impl Line {
    /// The call's body, from `body` or `body_base64` (not both), at most `limit` bytes.
    fn take_body(&mut self, limit: usize) -> Result<Bytes, CallError> {
        let body = match (self.body.take(), self.body_base64.take()) {
            (Some(_), Some(_)) => {
                return Err(CallError::BadRequest(
                    "give body or body_base64, not both".into(),
                ));
            }
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => decode_base64(&b64)?,
            (None, None) => Bytes::new(),
        };
        if body.len() > limit {
            return Err(CallError::BodyTooLarge { limit });
        }
        Ok(body)
    }

    /// Refuses a path or query that a call cannot carry.
    fn check_target(&self) -> Result<(), CallError> {
        if !(self.path.is_empty() || self.path.starts_with('/'))
            || !visible(&self.path)
            || self.path.contains(['?', '#'])
        {
            return Err(CallError::BadRequest(
                "path must be empty or start with '/', without '?' or '#'".into(),
            ));
        }
        if !visible(&self.query) || self.query.contains('#') {
            return Err(CallError::BadRequest(
                "query must be visible ASCII without '#'".into(),
            ));
        }
        Ok(())
    }

    /// The headers that travel to the function; refuses names and values HTTP cannot carry, and
    /// the gateway's own control fields.
    fn forwarded_headers(&self) -> Result<Vec<(String, &str)>, CallError> {
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                CallError::BadRequest(format!("header {name:?} is not a header name").into())
            })?;
            HeaderValue::from_str(value).map_err(|_| {
                CallError::BadRequest(format!("header {name} has an invalid value").into())
            })?;
            if is_control_header(&parsed) {
                return Err(CallError::BadRequest(
                    format!(
                        "header {name} is a line field here (idempotency_key, callback_url, delay, priority, fairness_key)"
                    )
                    .into(),
                ));
            }
            if !is_dropped_header(parsed.as_str()) {
                headers.push((parsed.as_str().to_owned(), value.as_str()));
            }
        }
        Ok(headers)
    }
}

async fn submit(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    let (parts, body) = req.into_parts();
    let name = &parts.uri.path()[PREFIX.len()..];
    let function = FunctionName::parse(name)?;
    state.functions.check_known(&function)?;
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case(NDJSON)) {
        return Err(CallError::UnsupportedMediaType(NDJSON));
    }
    let Some((_, shards)) = state.streams.topology.get() else {
        return Err(CallError::NotReady("shard topology not agreed yet"));
    };
    if !state.nats.connected() {
        return Err(CallError::NatsDown);
    }
    // The batch's own callback, when every call is final.
    let callback_url = callback_header(&state.admission.callback_guard, &parts.headers)
        .await?
        .map(str::to_owned);
    let hot = match state.functions.hot.get(name) {
        Some(hot) => hot,
        None => state.functions.hot.make(&function, shards),
    };
    let meta = Meta {
        batch_id: envelope::new_call_id(),
        function: name.to_owned(),
        total: 0,
        refused: 0,
        accepted_at: flotilla_queue::time::unix_nanos(),
        callback_url,
    };
    let batch_id = meta.batch_id.clone();
    let (results, answer) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(run(state.clone(), hot, meta, body, results));
    let mut resp = Response::new(Body::Stream(answer));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    if let Ok(v) = HeaderValue::from_str(&batch_id) {
        h.insert(X_BATCH_ID, v);
    }
    Ok(resp)
}

/// Reads the batch's lines, stores each, and writes each result in order, until the body ends.
async fn run(
    state: Arc<State>,
    hot: Arc<Hot>,
    mut meta: Meta,
    body: Incoming,
    results: tokio::sync::mpsc::UnboundedSender<Bytes>,
) {
    let batch_id = meta.batch_id.clone();
    let max_line = state.inline_limit() / 3 * 4 + LINE_OVERHEAD;
    let mut lines = Lines::new(body, max_line);
    let mut pending = FuturesOrdered::new();
    let mut ended = false;
    loop {
        tokio::select! {
            biased;
            Some((stored, result)) = pending.next(), if !pending.is_empty() => {
                let stored: Option<bool> = stored;
                let result: Bytes = result;
                match stored {
                    // A repeated key: the call it repeats is counted once.
                    Some(duplicate) => meta.total += u64::from(!duplicate),
                    None => meta.refused += 1,
                }
                if results.send(result).is_err() && !ended {
                    // The client went away: read no further, but finish the lines being stored,
                    // so none is left half stored.
                    ended = true;
                }
            }
            line = lines.next(), if !ended && pending.len() < OUTSTANDING => match line {
                Some(line) => {
                    let (state, hot, batch_id) = (state.clone(), hot.clone(), batch_id.clone());
                    pending.push_back(async move {
                        let started = Instant::now();
                        let outcome = match line {
                            Ok(raw) => store(&state, &hot, &batch_id, &raw).await,
                            Err(e) => Err(e),
                        };
                        result_line(&state, &hot, outcome, started)
                    });
                }
                None => ended = true,
            },
            else => break,
        }
    }
    // The batch is known from here on: its progress can be read and its end seen.
    let mut delays = META_BACKOFF.delays();
    for attempt in 1..=META_ATTEMPTS {
        match batch::write_meta(&state.nats.js, &meta).await {
            Ok(()) => return,
            Err(error) if attempt == META_ATTEMPTS => {
                tracing::error!(%error, batch_id = %meta.batch_id, "batch stored, its progress not: GET /async-batch and its callback will not know it");
            }
            Err(error) => {
                tracing::warn!(%error, batch_id = %meta.batch_id, "batch meta not written; trying again");
                tokio::time::sleep(delays.next_delay()).await;
            }
        }
    }
}

/// Tries at writing a batch's meta, and the waits between them.
const META_ATTEMPTS: u32 = 5;
const META_BACKOFF: flotilla_queue::Backoff = flotilla_queue::Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(2),
    flotilla_queue::Jitter::None,
);

/// A line's result as the answer carries it, counted like a single call; and whether it was
/// stored (as a new call, or as a repeat of one).
fn result_line(
    state: &State,
    hot: &Hot,
    outcome: Result<(String, bool), CallError>,
    started: Instant,
) -> (Option<bool>, Bytes) {
    let stored = outcome.as_ref().ok().map(|(_, duplicate)| *duplicate);
    let mut text = match outcome {
        Ok((call_id, _)) => {
            state
                .metrics
                .accepted(&hot.accepted, started.elapsed().as_secs_f64());
            serde_json::json!({ "call_id": call_id }).to_string()
        }
        Err(error) => {
            let status = error.status().as_u16();
            state.metrics.error(status, error.reason());
            serde_json::json!({ "error": error.to_string(), "status": status }).to_string()
        }
    };
    text.push('\n');
    (stored, Bytes::from(text))
}

/// Stores one line as a call; its call id, and whether JetStream had it already (a repeated
/// idempotency key).
async fn store(
    state: &State,
    hot: &Hot,
    batch_id: &str,
    raw: &[u8],
) -> Result<(String, bool), CallError> {
    let mut line: Line = serde_json::from_slice(raw).map_err(|source| Invalid::Json {
        what: "line is not a call",
        source,
    })?;
    let body = line.take_body(state.inline_limit())?;
    line.check_target()?;
    let headers = line.forwarded_headers()?;
    let (call_id, dedup_key) = match &line.idempotency_key {
        Some(key) => {
            check_client_key(key, "idempotency_key")?;
            (
                derived_call_id(hot.function(), key),
                Some(dedup_key(hot.function(), key)),
            )
        }
        None => (state.status.ids.next(), None),
    };
    if let Some(url) = &line.callback_url {
        check_callback(&state.admission.callback_guard, url).await?;
    }
    let priority =
        line_field("priority", line.priority.as_deref(), Priority::parse)?.unwrap_or_default();
    let fairness_key = line_field(
        "fairness_key",
        line.fairness_key.as_deref(),
        FairnessKey::parse,
    )?;
    let accepted_at = flotilla_queue::time::unix_nanos();
    let not_before = match &line.delay {
        None => None,
        Some(text) => {
            let delay = parse_duration(text).map_err(|_| {
                CallError::BadRequest("delay must be a duration such as 90s, 1m30s or 2h".into())
            })?;
            delayed(accepted_at, delay, state.admission.max_delay, "delay")?
        }
    };
    let ack = accept(
        state,
        hot,
        Accepting {
            function: hot.function(),
            control: Control {
                call_id: &call_id,
                method: Method::POST.as_str(),
                path: &line.path,
                query: &line.query,
                callback_url: line.callback_url.as_deref(),
                start_time: accepted_at,
                attempt: 0,
            },
            dedup_key: dedup_key.as_deref(),
            not_before,
            batch_id: Some(batch_id),
            priority,
            fairness_key: fairness_key.as_ref(),
        },
        headers,
        body,
    )
    .await?;
    Ok((call_id, ack.duplicate))
}

/// A line's optional field `name` parsed by `parse`; 400 `<name> <why>` when it does not parse.
fn line_field<T, E: std::fmt::Display>(
    name: &str,
    value: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, CallError> {
    value
        .map(|text| parse(text).map_err(|e| CallError::BadRequest(format!("{name} {e}").into())))
        .transpose()
}

/// A line's `body_base64`.
fn decode_base64(text: &str) -> Result<Bytes, Invalid> {
    match BASE64.decode(text.as_bytes()) {
        Ok(bytes) => Ok(Bytes::from(bytes)),
        Err(source) => Err(Invalid::Base64 {
            what: "body_base64",
            source,
        }),
    }
}

fn visible(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The body's lines, read as frames arrive. A line longer than `max` is skipped to its end and
/// given as an error (413), so one bad line does not end the batch; a trailing `\r` is dropped;
/// an empty line is an error (400), keeping one result per line.
struct Lines {
    body: Incoming,
    buf: BytesMut,
    max: usize,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
    done: bool,
}

impl Lines {
    fn new(body: Incoming, max: usize) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            max,
            skipping: false,
            done: false,
        }
    }

    /// The next line, or `None` at the end of the body. Cancel-safe: what was read stays in the
    /// buffer.
    async fn next(&mut self) -> Option<Result<Bytes, CallError>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(i + 1).freeze();
                if std::mem::take(&mut self.skipping) {
                    return Some(Err(self.too_long()));
                }
                line.truncate(line.len() - 1);
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                if line.is_empty() {
                    return Some(Err(CallError::BadRequest("empty line".into())));
                }
                return Some(Ok(line));
            }
            if self.buf.len() > self.max {
                self.skipping = true;
                self.buf.clear();
            }
            if self.done {
                if self.buf.is_empty() && !self.skipping {
                    return None;
                }
                // The last line has no newline.
                self.buf.extend_from_slice(b"\n");
                continue;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.buf.clear();
                    self.skipping = false;
                    return Some(Err(CallError::BodyRead(e.into())));
                }
                None => self.done = true,
            }
        }
    }

    fn too_long(&self) -> CallError {
        CallError::BodyTooLarge { limit: self.max }
    }
}
