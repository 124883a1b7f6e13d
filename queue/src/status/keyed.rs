//! The one read and the one compare-and-set of the fleet's keyed streams (status, batch
//! progress): the last message of a subject as JSON, and a publish that expects a subject's last
//! sequence.

/// Why the last message of a subject could not be read as JSON.
#[derive(Debug, thiserror::Error)]
pub enum LastError {
    #[error("reading {subject}: {source}")]
    Read {
        subject: String,
        #[source]
        source: async_nats::jetstream::stream::DirectGetError,
    },
    #[error("reading {subject} from the stream leader: {source}")]
    ReadLeader {
        subject: String,
        #[source]
        source: async_nats::jetstream::stream::LastRawMessageError,
    },
    #[error("{subject} holds unreadable JSON: {source}")]
    Corrupt {
        subject: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The last message of `subject` in `stream`, read as JSON, and its sequence; `None` when the
/// subject holds none. The one read of the fleet's keyed streams (status, batch progress).
pub async fn last_json<T: serde::de::DeserializeOwned>(
    stream: &async_nats::jetstream::stream::Stream<()>,
    subject: String,
) -> Result<Option<(T, u64)>, LastError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match stream.direct_get_last_for_subject(subject.clone()).await {
        Ok(msg) => serde_json::from_slice(&msg.payload)
            .map(|value| Some((value, msg.sequence)))
            .map_err(|source| LastError::Corrupt { subject, source }),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(source) => Err(LastError::Read { subject, source }),
    }
}

/// [`last_json`], read from the stream leader: never behind the stream's last write.
pub async fn last_json_from_leader<T: serde::de::DeserializeOwned>(
    stream: &async_nats::jetstream::stream::Stream<()>,
    subject: String,
) -> Result<Option<(T, u64)>, LastError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(msg) => serde_json::from_slice(&msg.payload)
            .map(|value| Some((value, msg.sequence)))
            .map_err(|source| LastError::Corrupt { subject, source }),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(source) => Err(LastError::ReadLeader { subject, source }),
    }
}

/// Publishes `payload` to `subject` when the subject's last message is still at sequence
/// `expect` (0: none yet), awaiting the PubAck: the sequence stored, or `None` when another
/// writer got there first. The one compare-and-set of the fleet's keyed streams.
pub async fn publish_expecting(
    js: &async_nats::jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    expect: u64,
) -> Result<Option<u64>, async_nats::jetstream::context::PublishError> {
    publish_compared(js, subject, payload, expect, None).await
}

/// [`publish_expecting`], comparing the last sequence of `guard` (a subject or a pattern) instead
/// of `subject`'s when given (`Nats-Expected-Last-Subject-Sequence-Subject`, nats-server 2.11).
pub async fn publish_compared(
    js: &async_nats::jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    expect: u64,
    guard: Option<&str>,
) -> Result<Option<u64>, async_nats::jetstream::context::PublishError> {
    use async_nats::jetstream::context::PublishErrorKind;
    use async_nats::jetstream::message::PublishMessage;
    let mut publish = PublishMessage::build()
        .payload(payload)
        .expected_last_subject_sequence(expect);
    if let Some(guard) = guard {
        publish = publish.header(
            crate::headers::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            guard,
        );
    }
    let acked = match js.send_publish(subject, publish).await {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match acked {
        Ok(ack) => Ok(Some(ack.sequence)),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
        Err(e) => Err(e),
    }
}

/// A call's kept final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptResult {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}
