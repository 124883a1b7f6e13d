//! What the dead-letter routes share: the stream, the `function` filter and its subject, and the
//! errors they answer with. Invariant: a leaf; the routes import it, it imports none of them.

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Stream as JsStream;
use flotilla_queue::{FunctionName, subjects};

use crate::error::{BoxError, CallError};
use crate::state::State;

/// The dead-letter stream, with its info. A missing stream has the topology task re-create it.
pub(super) async fn dead_stream(state: &State) -> Result<JsStream, CallError> {
    state
        .nats
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
pub(super) fn dead_filter(value: &str) -> Result<String, CallError> {
    if value == subjects::UNNAMED_DEAD_TOKEN {
        return Ok(value.to_owned());
    }
    Ok(FunctionName::parse(value)?.to_string())
}

pub(super) fn filter_subject(token: Option<&str>) -> String {
    token.map_or_else(subjects::dead_wildcard, subjects::dead_subject)
}

/// `flotilla.dead.<function>` → `<function>`.
pub(super) fn function_of_dead_subject(subject: &str) -> &str {
    subjects::dead_token_of_subject(subject).unwrap_or(subject)
}

/// Whether a delete failed only because the letter is gone already (replayed or deleted by a
/// concurrent request, or expired).
pub(super) fn already_gone(e: &async_nats::jetstream::stream::DeleteMessageError) -> bool {
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    matches!(e.kind(), DeleteMessageErrorKind::JetStream(ref j)
        if matches!(j.error_code(), ErrorCode::SEQUENCE_NOT_FOUND | ErrorCode::NO_MESSAGE_FOUND))
}

pub(super) fn bad(reason: String) -> CallError {
    CallError::BadRequest(reason.into())
}

pub(super) fn unavailable(doing: &'static str, e: impl Into<BoxError>) -> CallError {
    CallError::DeadLetters {
        doing,
        source: e.into(),
    }
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
