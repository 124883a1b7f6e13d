//! `POST /system/dead-letters/replay`: puts selected calls back on their function's shard with a
//! fresh retry budget, then removes their letters. One request does bounded work; the answer says
//! what was replayed, skipped or failed, and where to continue.

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::stream::{
    DeleteMessageError, RawMessageError, RawMessageErrorKind, Stream as JsStream,
};
use flotilla_queue::headers::DEAD_TIME;
use flotilla_queue::status::{Known, REVISION_HEADER, Record, Transition};
use flotilla_queue::{Envelope, FunctionName, ShardMap, subjects};
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::common::{
    already_gone, bad, dead_filter, dead_stream, filter_subject, function_of_dead_subject,
};
use super::scan::scan;
use crate::body::Body;
use crate::error::{CallError, Invalid, json_response};
use crate::request::read_body;
use crate::state::State;

/// Most letters one replay request handles; the client repeats with the returned `next` cursor.
/// Bounds the time and the JetStream traffic of one request.
pub const MAX_REPLAY: usize = 10_000;
/// A replay selector is a small JSON document: 10,000 sequences fit well within this.
const MAX_SELECTOR_BYTES: usize = 1024 * 1024;
/// Letters replayed at once: enough to hide round trips, few enough to leave the publish ack
/// window to the asynchronous calls that share it.
const REPLAY_CONCURRENCY: usize = 32;

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
    let s: SelectorBody = serde_json::from_slice(body).map_err(|source| Invalid::Json {
        what: "replay selector is not valid",
        source,
    })?;
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
    Read(#[source] RawMessageError),
    #[error("enqueue failed: {0}")]
    Publish(#[source] PublishError),
    #[error("enqueued, but the dead letter could not be removed: {0}")]
    Delete(#[source] DeleteMessageError),
}

impl LetterError {
    /// Skipped letters need no retry; failed ones may succeed when asked again.
    fn is_skip(&self) -> bool {
        match self {
            Self::NotFound | Self::Poison(_) | Self::NoFunction => true,
            Self::Read(_) | Self::Publish(_) | Self::Delete(_) => false,
        }
    }

    /// Whether the call is back on its shard although the letter failed.
    fn enqueued(&self) -> bool {
        match self {
            Self::Delete(_) => true,
            Self::NotFound
            | Self::Poison(_)
            | Self::NoFunction
            | Self::Read(_)
            | Self::Publish(_) => false,
        }
    }
}

pub(super) async fn replay(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let body = read_body(req.into_body(), MAX_SELECTOR_BYTES).await?;
    let selection = parse_selector(&body)?;
    let Some((_, shards)) = state.streams.topology.get() else {
        return Err(CallError::NotReady("shard topology not agreed yet"));
    };
    if !state.nats.connected() {
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
                    enqueued: e.enqueued(),
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
    json_response(StatusCode::OK, &report)
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
        Err(e) => return ("unknown".into(), Err(LetterError::Read(e))),
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
    let (mut headers, payload) = call.to_nats(Some(&msg_id));
    // Its status is `queued` again, with the sequence the worker then writes against.
    if let Some(store) = state.status.kept() {
        let now = flotilla_queue::time::unix_nanos();
        let requeued = store
            .transition(&call.call_id, Known::Unknown, |_| {
                let batch = call.batch_id.as_deref();
                let mut next = Record::queued(&call.call_id, &function, call.start_time, batch)
                    .with_priority(call.priority)
                    .with_key(call.fairness_key.as_ref());
                next.updated_at = now;
                Some(next)
            })
            .await;
        match requeued {
            Ok(Transition::Written(stored)) => {
                headers.insert(REVISION_HEADER, stored.revision.to_string().as_str());
            }
            Ok(Transition::Declined(_)) => {}
            Err(error) => {
                state.metrics.status_write_failed();
                tracing::warn!(%error, call_id = %call.call_id, "replayed call's status not set to queued");
            }
        }
    }
    let publish = async {
        state
            .nats
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
            return (function, Err(LetterError::Publish(e)));
        }
    };
    match stream.delete_message(sequence).await {
        Ok(_) => {}
        // A concurrent replay of the same letter deleted it first.
        Err(e) if already_gone(&e) => {}
        Err(e) => return (function, Err(LetterError::Delete(e))),
    }
    (function, Ok(duplicate))
}

/// `Nats-Msg-Id` of a replayed call: the letter's sequence plus the time it was dead-lettered
/// (so a re-created dead stream reusing sequences cannot collide within the window). No ':', so
/// it never equals a client key, which the gateway stores as `<function>:<key>`.
fn replay_msg_id(sequence: u64, headers: &HeaderMap) -> String {
    let time = headers.get(DEAD_TIME).map_or("", |v| v.as_str());
    format!("replay-{}-{sequence}-{time}", subjects::DEAD_STREAM)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn replay_ids_carry_no_colon() {
        let mut h = HeaderMap::new();
        h.insert(DEAD_TIME, "123");
        let id = replay_msg_id(9, &h);
        assert_eq!(id, "replay-FLOTILLA_DEAD-9-123");
        assert!(!id.contains(':'));
    }
}
