//! `GET /system/dead-letters`: a page of letters as JSON, filtered by function, continued from a
//! sequence cursor, with the count of all letters that match.

use async_nats::jetstream::stream::Stream as JsStream;
use flotilla_queue::envelope;
use flotilla_queue::headers::{
    DEAD_ATTEMPTS, DEAD_KIND, DEAD_LAST_STATUS, DEAD_REASON, DEAD_SEQUENCE, DEAD_STREAM,
    DEAD_SUBJECT, DEAD_TIME, NATS_MSG_SIZE,
};
use futures_util::StreamExt;
use http::{Response, StatusCode};
use serde::Serialize;

use super::common::{
    bad, dead_filter, dead_stream, filter_subject, function_of_dead_subject, unavailable,
};
use super::scan::{Letter, scan};
use crate::body::Body;
use crate::error::{CallError, json_response};
use crate::state::State;
use crate::times::rfc3339;

/// Letters on a page when the client names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page. Above it the request is refused (400) rather than clamped, so a client never
/// mistakes a short page for the end of the list.
pub const MAX_LIMIT: usize = 1000;

/// `?function=<name>&after=<seq>&limit=<n>`, all optional.
#[derive(Debug, PartialEq)]
struct ListQuery {
    /// The dead-letter subject token: a function name, or `subjects::UNNAMED_DEAD_TOKEN`.
    function: Option<String>,
    after: u64,
    limit: usize,
}

/// Reads the query. Decoding is lenient (a broken `%` escape stays as it is, bytes that are not
/// UTF-8 become U+FFFD), and neither survives the checks on a value, so such a query is refused.
fn parse_list_query(query: Option<&str>) -> Result<ListQuery, CallError> {
    let mut q = ListQuery {
        function: None,
        after: 0,
        limit: DEFAULT_LIMIT,
    };
    let mut seen = [false; 3];
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match &*key {
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
pub(super) struct Item {
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
    pub(super) body_bytes: Option<u64>,
}

impl Item {
    pub(super) fn of(letter: &Letter) -> Self {
        let text = |name: &str| letter.header(name).map(str::to_owned);
        // A poison letter may have no readable control fields; it is listed without them.
        let call = envelope::Control::of(&letter.headers).ok();
        let call = call.as_ref();
        let owned = |v: Option<&str>| v.map(str::to_owned);
        let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
        Item {
            sequence: letter.sequence,
            function: function_of_dead_subject(&letter.subject).to_owned(),
            call_id: owned(call.map(|c| c.call_id)),
            kind: text(DEAD_KIND),
            reason: text(DEAD_REASON),
            attempts: letter.parsed(DEAD_ATTEMPTS),
            last_status: letter.parsed(DEAD_LAST_STATUS),
            time: letter.parsed::<u128>(DEAD_TIME).and_then(rfc3339),
            origin_stream: text(DEAD_STREAM),
            origin_sequence: letter.parsed(DEAD_SEQUENCE),
            origin_subject: text(DEAD_SUBJECT),
            method: owned(call.map(|c| c.method)),
            path: nonempty(call.map(|c| c.path)),
            query: nonempty(call.map(|c| c.query)),
            callback_url: owned(call.and_then(|c| c.callback_url)),
            body_bytes: letter.parsed(NATS_MSG_SIZE),
        }
    }
}

#[derive(Debug, Serialize)]
struct Page {
    dead_letters: Vec<Item>,
    /// Pass as `after` for the next page; `null` when this page reached the end.
    next: Option<u64>,
    /// Letters matching the filter in the whole stream, at the time of the request.
    total: u64,
}

pub(super) async fn list(state: &State, query: Option<&str>) -> Result<Response<Body>, CallError> {
    let q = parse_list_query(query)?;
    if !state.nats.connected() {
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
        dead_letters: scan.letters.iter().map(Item::of).collect(),
        next,
        total,
    };
    json_response(StatusCode::OK, &page)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "function=%FF",
            "limit=1%",
        ] {
            let e = parse_list_query(Some(bad)).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
