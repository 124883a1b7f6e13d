//! Dead letters: a message that is not a valid envelope (poison), a call that failed every
//! attempt its retry policy allowed (exhausted), or one delivered more than `--max-deliveries`
//! times without ever being settled (redelivered: a crash loop), is copied with the reason to the
//! dead-letter stream and only then settled, so nothing can crash a worker, come back forever, or
//! vanish unseen. One writer serves every kind.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use flotilla_queue::dead_letter as dl;
use flotilla_queue::headers::{NATS_MESSAGE_ID, NATS_PREFIX};
use flotilla_queue::{subjects, time};

use crate::Shared;
use crate::outcome::{CallError, Outcome};

/// What a dead letter is made of.
pub(crate) struct Letter<'a> {
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: Bytes,
    pub shard: u32,
    /// The stream the message was read from, and its sequence there.
    pub stream: &'a str,
    pub sequence: u64,
    pub kind: &'static str,
    pub reason: &'a str,
    /// Attempts made (exhausted calls only).
    pub attempts: Option<u32>,
    /// The last status: the function's, or 502/504 (exhausted calls only).
    pub last_status: Option<u16>,
}

impl<'a> Letter<'a> {
    /// A dead letter copying `msg`, read from `origin` (stream and sequence) of `shard`.
    fn of(
        msg: &'a jetstream::Message,
        shard: u32,
        (stream, sequence): (&'a str, u64),
        kind: &'static str,
        reason: &'a str,
    ) -> Self {
        Self {
            subject: msg.subject.as_str(),
            headers: msg.headers.as_ref(),
            payload: msg.payload.clone(),
            shard,
            stream,
            sequence,
            kind,
            reason,
            attempts: None,
            last_status: None,
        }
    }
}

/// Why a dead letter was not written; the message it copies is handed back and tried again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeadLetterError {
    #[error("publishing the dead letter: {0}")]
    Publish(#[from] PublishError),
}

/// Writes the dead letter and waits for JetStream's PubAck.
pub(crate) async fn write(shared: &Shared, l: Letter<'_>) -> Result<(), DeadLetterError> {
    let function = subjects::function_of_any_subject(l.shard, l.subject)
        .map(|f| f.to_string())
        .unwrap_or_default();
    let stream = l.stream;
    let mut headers = copied_headers(l.headers);
    headers.insert(dl::H_KIND, l.kind);
    headers.insert(dl::H_REASON, header_text(l.reason).as_str());
    headers.insert(dl::H_STREAM, stream);
    headers.insert(dl::H_SEQUENCE, l.sequence.to_string().as_str());
    headers.insert(dl::H_SUBJECT, l.subject);
    headers.insert(dl::H_TIME, time::unix_nanos().to_string().as_str());
    if let Some(n) = l.attempts {
        headers.insert(dl::H_ATTEMPTS, n.to_string().as_str());
    }
    if let Some(s) = l.last_status {
        headers.insert(dl::H_LAST_STATUS, s.to_string().as_str());
    }
    headers.insert(NATS_MESSAGE_ID, dl::dedup_id(stream, l.sequence).as_str());
    let dead_subject = subjects::dead_subject(&function);
    shared
        .nats
        .js
        .publish_with_headers(dead_subject, headers, l.payload)
        .await?
        .await?;
    // Labelled like the dead-letter subject: `~invalid` when the message named no valid function.
    let label = subjects::dead_token(&function);
    shared.metrics.dead_letter(l.kind, label);
    tracing::warn!(
        kind = l.kind,
        function = %function,
        subject = %l.subject,
        sequence = l.sequence,
        attempts = l.attempts,
        last_status = l.last_status,
        reason = %l.reason,
        "moved to the dead letters"
    );
    Ok(())
}

/// A message's headers for a copy published elsewhere, without the `Nats-*` headers that would
/// steer JetStream (de-duplication, expectations).
pub(crate) fn copied_headers(original: Option<&HeaderMap>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        let name: &str = name.as_ref();
        if name.len() >= NATS_PREFIX.len()
            && name[..NATS_PREFIX.len()].eq_ignore_ascii_case(NATS_PREFIX)
        {
            continue;
        }
        for v in values {
            headers.append(name, v.as_str());
        }
    }
    headers
}

/// Longest reason kept: a reason quotes the function's answer, which may be large.
const MAX_REASON: usize = 512;

/// `text` fit for a header value: one line, control characters replaced, at most
/// [`MAX_REASON`] bytes (cut on a character boundary).
fn header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON));
    for c in text.chars() {
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out.trim_end().to_owned()
}

/// Dead-letters a pulled message as poison, then terminates it. When NATS does not take the
/// dead letter, the message is handed back with a delay and tried again.
pub(crate) async fn poison(shared: &Shared, msg: &jetstream::Message, shard: u32, reason: &str) {
    let origin = msg
        .info()
        .map_or(("", 0), |i| (i.stream, i.stream_sequence));
    let sequence = origin.1;
    let letter = Letter::of(msg, shard, origin, dl::KIND_POISON, reason);
    match write(shared, letter).await {
        Ok(()) => {
            if let Err(error) = msg.ack_with(AckKind::Term).await {
                tracing::debug!(%error, "term failed; the message returns and is dead-lettered again (de-duplicated)");
            }
        }
        Err(error) => {
            tracing::warn!(subject = %msg.subject, sequence, %error, "cannot write dead letter; handing the message back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// Dead-letters a call whose last allowed attempt failed (or whose request could not be formed, or
/// which was redelivered past `--max-deliveries`) and waits for the PubAck. The caller then delivers the callback and acks the message.
pub(crate) async fn exhausted(
    shared: &Shared,
    msg: &jetstream::Message,
    shard: u32,
    origin: (&str, u64),
    outcome: &Outcome,
    allowed: u32,
) -> Result<(), DeadLetterError> {
    let reason = exhausted_reason(outcome, allowed);
    let letter = Letter {
        attempts: Some(outcome.attempts_made()),
        // A crash loop has no status: no run of it ever ended.
        last_status: outcome.ran().then(|| outcome.status.as_u16()),
        ..Letter::of(msg, shard, origin, kind_of(outcome), &reason)
    };
    write(shared, letter).await
}

/// The dead-letter kind of a call that ended in `outcome`: `redelivered` for a crash loop,
/// `expired` past its `max_age`, else `exhausted`.
pub(crate) fn kind_of(outcome: &Outcome) -> &'static str {
    match outcome.error {
        Some(CallError::Redelivered(_)) => dl::KIND_REDELIVERED,
        Some(CallError::Expired { .. }) => dl::KIND_EXPIRED,
        _ => dl::KIND_EXHAUSTED,
    }
}

/// "function answered 500 (attempt 3 of 3): <start of its body>", or the transport error.
pub(crate) fn exhausted_reason(outcome: &Outcome, allowed: u32) -> String {
    let n = outcome.attempt.number();
    match &outcome.error {
        Some(e @ CallError::InvalidRequest(_)) => format!("{e} (not retried)"),
        Some(e @ (CallError::Redelivered(_) | CallError::Expired { .. })) => e.to_string(),
        Some(e) => format!("{e} (attempt {n} of {allowed})"),
        None => {
            let mut r = format!(
                "function answered {} (attempt {n} of {allowed})",
                outcome.status.as_u16()
            );
            if !outcome.body.is_empty() {
                r.push_str(": ");
                r.push_str(&String::from_utf8_lossy(
                    &outcome.body[..outcome.body.len().min(MAX_REASON)],
                ));
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_header_line() {
        assert_eq!(
            header_text("function answered 500: boom\r\nX: y"),
            "function answered 500: boom  X: y"
        );
        let long = "é".repeat(1000);
        let cut = header_text(&long);
        assert!(cut.len() <= MAX_REASON && cut.chars().all(|c| c == 'é'));
    }
}
