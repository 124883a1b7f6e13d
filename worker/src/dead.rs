//! Poison messages: a message that is not a valid envelope is copied, with the reason, to the
//! dead-letter stream and only then removed, so it can neither crash a worker nor come back
//! forever, and nothing vanishes unseen.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::Stream as JsStream;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use flotilla_queue::dead_letter as dl;
use flotilla_queue::envelope::H_FUNCTION;
use flotilla_queue::{subjects, time};

use crate::Shared;
use crate::metrics;

/// What a dead letter is made of.
struct Letter<'a> {
    subject: &'a str,
    headers: Option<&'a HeaderMap>,
    payload: Bytes,
    shard: u32,
    sequence: u64,
    reason: &'a str,
}

/// Writes the dead letter and waits for JetStream's PubAck.
async fn write(shared: &Shared, l: Letter<'_>) -> Result<(), String> {
    let function = l
        .headers
        .and_then(|h| h.get(H_FUNCTION))
        .map(|v| v.as_str().to_owned())
        .or_else(|| subjects::function_of_subject(l.shard, l.subject).map(|f| f.to_string()))
        .unwrap_or_default();
    let stream = subjects::call_stream(l.shard);
    let mut headers = HeaderMap::new();
    if let Some(original) = l.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            // Nats-* headers would steer JetStream (de-duplication, expectations).
            if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            for v in values {
                headers.append(name, v.as_str());
            }
        }
    }
    headers.insert(dl::H_KIND, dl::KIND_POISON);
    headers.insert(dl::H_REASON, l.reason);
    headers.insert(dl::H_STREAM, stream.as_str());
    headers.insert(dl::H_SEQUENCE, l.sequence.to_string().as_str());
    headers.insert(dl::H_SUBJECT, l.subject);
    headers.insert(dl::H_TIME, time::unix_nanos().to_string().as_str());
    headers.insert("Nats-Msg-Id", dl::dedup_id(&stream, l.sequence).as_str());
    shared
        .js
        .publish_with_headers(subjects::dead_subject(&function), headers, l.payload)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    metrics::dead_letter(dl::KIND_POISON);
    tracing::warn!(subject = %l.subject, sequence = l.sequence, reason = %l.reason, "poison message moved to the dead letters");
    Ok(())
}

/// Dead-letters a pulled message as poison, then terminates it. When NATS does not take the
/// dead letter, the message is handed back with a delay and tried again.
pub(crate) async fn poison(
    shared: &Shared,
    msg: &jetstream::Message,
    shard: u32,
    sequence: u64,
    reason: &str,
) {
    let letter = Letter {
        subject: msg.subject.as_str(),
        headers: msg.headers.as_ref(),
        payload: msg.payload.clone(),
        shard,
        sequence,
        reason,
    };
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

/// Dead-letters the messages of a subject that names no valid function (no consumer would ever
/// take them): each is read directly from the stream, written to the dead letters, then deleted.
pub(crate) async fn poison_subject(shared: &Shared, stream: &JsStream, shard: u32, subject: &str) {
    // Bounded per pass so one flooded subject cannot stall discovery.
    for _ in 0..100 {
        let Ok(m) = stream.get_next_raw_message_by_subject(subject).await else {
            return;
        };
        let letter = Letter {
            subject,
            headers: Some(&m.headers),
            payload: m.payload.clone(),
            shard,
            sequence: m.sequence,
            reason: "subject names no valid function",
        };
        if let Err(error) = write(shared, letter).await {
            tracing::warn!(%subject, %error, "cannot write dead letter; will try again");
            return;
        }
        if let Err(error) = stream.delete_message(m.sequence).await {
            tracing::warn!(%subject, %error, "cannot delete a dead-lettered message; will try again");
            return;
        }
    }
}
