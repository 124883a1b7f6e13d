//! The dead-letter API: `GET /system/dead-letters` lists the letters in `FLOTILLA_DEAD` a page at
//! a time, and `POST /system/dead-letters/replay` puts selected calls back on their function's
//! shard with a fresh retry budget, then removes the letters. Operator routes, behind the
//! `/system` auth; they speak JSON and may allocate, but a page never reads more of the stream
//! than it shows, and one replay request does bounded work.
//!
//! Invariant: a letter is deleted only after JetStream acknowledged its replayed call, and the
//! replayed call carries a `Nats-Msg-Id` derived from the letter, so a retried or concurrent
//! replay of the same letter enqueues the call once (within the shard's duplicate window).
//!
//! `GET /system/dead-letters/<sequence>` shows one letter with its headers and a body preview,
//! and `DELETE` on it removes the letter for good.
//!
//! This file routes and holds what the routes share; `list` shows a page, `letter` one letter,
//! `replay` replays, and `scan` reads letters without their bodies for the list and replay.

mod letter;
pub(crate) mod list;
mod replay;
mod scan;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Stream as JsStream;
use flotilla_queue::{FunctionName, subjects};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::CallError;
use crate::state::State;

pub const LIST_PATH: &str = "/system/dead-letters";
pub const REPLAY_PATH: &str = "/system/dead-letters/replay";

const LIST_ALLOW: &str = "GET, HEAD";
const REPLAY_ALLOW: &str = "POST";

/// Routes a `/system/*` path other than `/system/info` (auth already checked).
pub async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    match req.uri().path() {
        LIST_PATH => {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return Err(CallError::MethodNotAllowed { allow: LIST_ALLOW });
            }
            list::list(state, req.uri().query()).await
        }
        REPLAY_PATH => {
            if req.method() != Method::POST {
                return Err(CallError::MethodNotAllowed {
                    allow: REPLAY_ALLOW,
                });
            }
            replay::replay(state, req).await
        }
        path => match path
            .strip_prefix(LIST_PATH)
            .and_then(|p| p.strip_prefix('/'))
        {
            Some(rest) => letter::route(state, req.method(), rest).await,
            None => Err(CallError::NotFound),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by listing and replay

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

/// Whether a delete failed only because the letter is gone already (replayed or deleted by a
/// concurrent request, or expired).
fn already_gone(e: &async_nats::jetstream::stream::DeleteMessageError) -> bool {
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    matches!(e.kind(), DeleteMessageErrorKind::JetStream(ref j)
        if matches!(j.error_code(), ErrorCode::SEQUENCE_NOT_FOUND | ErrorCode::NO_MESSAGE_FOUND))
}

fn bad(reason: String) -> CallError {
    CallError::BadRequest(reason)
}

fn unavailable(doing: &str, e: impl std::fmt::Display) -> CallError {
    CallError::DeadLetters(format!("{doing}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_subjects_name_their_function() {
        assert_eq!(function_of_dead_subject("flotilla.dead.fn.ns"), "fn.ns");
        assert_eq!(
            function_of_dead_subject("flotilla.dead.~invalid"),
            "~invalid"
        );
        assert_eq!(filter_subject(None), "flotilla.dead.>");
    }
}
