//! Call status: what became of each asynchronous call, kept in the stream `FLOTILLA_STATUS` (one
//! subject per call, the last message only, for the status retention) so a client can ask without
//! running a callback receiver. The gateway writes `queued` when it accepts a call and `cancelled`
//! when a client cancels one; workers write the rest. Every write is a compare-and-set on the
//! subject's last sequence, so a cancel that races a call's end leaves one state, never both.
//!
//! Keeping status must cost little, so nothing on a call's way reads it: the gateway stores the
//! `queued` record first and hands its sequence to the worker in the call's
//! `Flotilla-Status-Rev` header, and each later write expects the sequence of the one before (a
//! waiting retry carries it too). Only a write that finds another writer got there first reads
//! the record. Cancels are also appended to `FLOTILLA_CANCELS`, which every worker follows, so a
//! queued call is never started once cancelled and a running one is aborted.
//!
//! Kept results live in `FLOTILLA_RESULTS`, keyed like the status.
//!
//! A record is stored as compact JSON with Unix-nanosecond times; the gateway renders it for
//! clients (RFC 3339 times, the call id).

use serde::{Deserialize, Serialize};

pub mod pages;

use pages::{Guard, Page, Written};

pub use crate::headers::FLOTILLA_FUNCTION_STATUS as RESULT_STATUS_HEADER;

pub const STATUS_STREAM: &str = "FLOTILLA_STATUS";
pub const STATUS_SUBJECT_PREFIX: &str = "flotilla.status";
pub const RESULT_STREAM: &str = "FLOTILLA_RESULTS";
pub const RESULT_SUBJECT_PREFIX: &str = "flotilla.result";
pub const CANCEL_STREAM: &str = "FLOTILLA_CANCELS";
pub const CANCEL_SUBJECT_PREFIX: &str = "flotilla.cancel";

pub use crate::headers::FLOTILLA_STATUS_REV as REVISION_HEADER;

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Accepted, not started (a delayed call carries `not_before`).
    Queued,
    Running,
    /// Waiting for its next attempt (`next_attempt_at`).
    Retrying,
    /// Its final answer was a 2xx.
    Succeeded,
    /// Its final answer is one the policy does not retry (a 400, a 404).
    Failed,
    /// In the dead letters; `reason` says why.
    Dead,
    Cancelled,
}

impl CallState {
    /// No worker will write again: a final answer, a dead letter or a cancel.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Dead | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every state, in the order a batch's counts list them.
    pub const ALL: [CallState; 7] = [
        Self::Queued,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Dead,
        Self::Cancelled,
    ];
}

impl std::fmt::Display for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a finished call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kept")]
pub enum ResultKept {
    /// Stored in `FLOTILLA_RESULTS`.
    Yes,
    /// The function's policy does not keep results.
    No,
    /// Larger than the function's `max_result_bytes`.
    TooLarge { bytes: u64, limit: u64 },
}

/// One call's status as stored. Times are Unix nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub call_id: String,
    pub function: String,
    pub state: CallState,
    /// Attempts made (finished) so far.
    pub attempts: u32,
    pub accepted_at: u128,
    pub updated_at: u128,
    /// The function's last HTTP status (502/504 when it was unreachable or timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u128>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u128>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The dead letter's kind (`dead_letter::KIND_*`, or `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultKept>,
}

impl Record {
    /// A call just accepted (in the batch `batch_id`, if any).
    pub fn queued(
        call_id: &str,
        function: &str,
        accepted_at: u128,
        batch_id: Option<&str>,
    ) -> Self {
        Self {
            call_id: call_id.to_owned(),
            function: function.to_owned(),
            state: CallState::Queued,
            attempts: 0,
            accepted_at,
            updated_at: accepted_at,
            status: None,
            not_before: None,
            next_attempt_at: None,
            reason: None,
            dead_kind: None,
            batch_id: batch_id.map(str::to_owned),
            result: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(raw: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

/// The subject token of a call id. Ids of letters, digits, `-` and `_` are used as they are (the
/// generated UUIDs and most client ids); any other visible-ASCII id is hex-encoded behind `~`,
/// which no plain id contains, so two ids never share a token.
pub fn key(call_id: &str) -> String {
    let plain = !call_id.is_empty()
        && call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return call_id.to_owned();
    }
    let mut k = String::with_capacity(1 + call_id.len() * 2);
    k.push('~');
    for b in call_id.bytes() {
        k.push_str(&format!("{b:02x}"));
    }
    k
}

/// Where a call's status is stored.
pub fn status_subject(call_id: &str) -> String {
    format!("{STATUS_SUBJECT_PREFIX}.{}", key(call_id))
}

/// Where a call's cancel is announced: a message whose payload is [`Cancel::encode`]d.
pub fn cancel_subject(call_id: &str) -> String {
    format!("{CANCEL_SUBJECT_PREFIX}.{}", key(call_id))
}

/// A cancel as workers hear it: the call and when it was accepted (a call id may be reused by a
/// later call, which this cancel must not stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub call_id: String,
    pub accepted_at: u128,
}

impl Cancel {
    /// `<accepted_at> <call_id>`: a call id has no spaces.
    pub fn encode(&self) -> String {
        format!("{} {}", self.accepted_at, self.call_id)
    }

    pub fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let (at, id) = text.split_once(' ')?;
        Some(Self {
            call_id: id.to_owned(),
            accepted_at: at.parse().ok()?,
        })
    }
}

/// The status revision a queued call carries, if any.
pub fn revision_of(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(REVISION_HEADER)?.as_str().parse().ok()
}

/// Where a call's kept result is stored: the function's answer as the body, its status in
/// `Flotilla-Function-Status`, its content type in `Content-Type`.
pub fn result_subject(call_id: &str) -> String {
    format!("{RESULT_SUBJECT_PREFIX}.{}", key(call_id))
}

/// Why the status store could not be read or written (NATS, not the call).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the status streams: {0}")]
    Open(#[source] async_nats::jetstream::context::GetStreamError),
    #[error("reading call status: {0}")]
    Read(#[source] async_nats::jetstream::stream::DirectGetError),
    #[error(transparent)]
    Last(#[from] LastError),
    #[error("writing call status: {0}")]
    Write(#[source] async_nats::jetstream::context::PublishError),
    #[error("call status of {call_id} kept changing under {tries} writes")]
    Contended { call_id: String, tries: u32 },
    #[error("reading a status page from the stream leader: {0}")]
    PageLeader(#[source] async_nats::jetstream::stream::RawMessageError),
    #[error("writing a status page: {0}")]
    Group(#[source] std::sync::Arc<async_nats::jetstream::context::PublishError>),
    #[error("writing a status page: {0}")]
    Page(#[source] std::sync::Arc<StoreError>),
    #[error("writing a status page: the NATS connection was lost before JetStream answered")]
    ConnectionLost,
    #[error("the status writer has stopped")]
    WriterGone,
    #[error("status page {subject} holds more than {messages} messages")]
    PageOverflow { subject: String, messages: usize },
}

/// A record and the stream sequence it was stored at (what the next write must expect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub record: Record,
    pub revision: u64,
}

/// What a [`Store::transition`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The new record was stored.
    Written(Stored),
    /// The change declined, seeing this (the current record, or none).
    Declined(Option<Stored>),
}

/// What a writer knows of a call's record before it moves it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Nothing: read it first.
    Unknown,
    /// Its sequence (from `Flotilla-Status-Rev`), not its content: the change starts from none.
    Revision(u64),
    /// The record as last read or written.
    Stored(Box<Stored>),
}

/// Writes tried before a transition gives up on a record that keeps changing under it.
const MAX_TRIES: u32 = 8;

/// The status and result streams, as both the gateway and the workers read and write them.
#[derive(Debug, Clone)]
pub struct Store {
    js: async_nats::jetstream::Context,
    status: async_nats::jetstream::stream::Stream<()>,
    results: async_nats::jetstream::stream::Stream<()>,
    pages: async_nats::jetstream::stream::Stream<()>,
    writer: pages::Writer,
}

impl Store {
    /// Handles on the streams, which `Topology::ensure_streams` made (no request is sent), and
    /// the page writer's task.
    pub async fn new(js: async_nats::jetstream::Context) -> Result<Self, StoreError> {
        let open = |name: &'static str| {
            let js = js.clone();
            async move { js.get_stream_no_info(name).await.map_err(StoreError::Open) }
        };
        let status = open(STATUS_STREAM).await?;
        let results = open(RESULT_STREAM).await?;
        let pages = open(pages::PAGE_STREAM).await?;
        let writer = pages::Writer::start(js.clone(), pages.clone());
        Ok(Self {
            js,
            status,
            results,
            pages,
            writer,
        })
    }

    /// The call's record, or `None` when it is unknown (or older than the retention, or pushed
    /// out by the budget). For a numbered call the revision is the sequence of the message that
    /// holds the record.
    pub async fn get(&self, call_id: &str) -> Result<Option<Stored>, StoreError> {
        // Any replica answers a direct get, and one still catching up (after a partition or a
        // restart) answers with what it has, which may be behind. A call that is not final there
        // (or unknown) is read again from the stream leader, so a call that ended never reads as
        // still on its way; only a replayed call may briefly read as its previous end.
        if let Some(page) = pages::page_of(call_id) {
            let read = pages::read(&self.pages, &page, page.all(), false).await?;
            let found = pages::resolve(&read.entries, call_id).map(pages::Entry::stored);
            if found.as_ref().is_some_and(|s| s.record.state.is_final()) {
                return Ok(found);
            }
            let read = pages::read(&self.pages, &page, page.all(), true).await?;
            return Ok(pages::resolve(&read.entries, call_id).map(pages::Entry::stored));
        }
        let subject = status_subject(call_id);
        let last: Option<(Record, u64)> = last_json(&self.status, subject.clone()).await?;
        if last.as_ref().is_some_and(|(r, _)| r.state.is_final()) {
            return Ok(last.map(|(record, revision)| Stored { record, revision }));
        }
        let last: Option<(Record, u64)> = last_json_from_leader(&self.status, subject).await?;
        Ok(last.map(|(record, revision)| Stored { record, revision }))
    }

    /// Stores a numbered call's record in its page, grouped with the process's other records.
    /// `guard`: whether it yields to a cancel ([`Written::Cancelled`]).
    pub async fn write_paged(
        &self,
        page: Page,
        record: &Record,
        guard: Guard,
    ) -> Result<Written, StoreError> {
        self.writer.write(page, record, guard).await
    }

    /// Stores `record` when the call's last record is still at `expect` (0: none yet). `Ok(None)`
    /// when it was not: someone wrote first.
    pub async fn write(&self, record: &Record, expect: u64) -> Result<Option<u64>, StoreError> {
        publish_expecting(
            &self.js,
            status_subject(&record.call_id),
            record.to_json().into(),
            expect,
        )
        .await
        .map_err(StoreError::Write)
    }

    /// Moves the call's record on: `change` sees the current record and returns the next one, or
    /// `None` to leave it. It starts from what the caller `known`s, reading only when it knows
    /// nothing; when another writer got there first, the record is read and `change` asked again,
    /// so the outcome is as if the writes had been made one after the other.
    pub async fn transition(
        &self,
        call_id: &str,
        known: Known,
        mut change: impl FnMut(Option<&Record>) -> Option<Record>,
    ) -> Result<Transition, StoreError> {
        if let Some(page) = pages::page_of(call_id) {
            return self.transition_paged(page, call_id, change).await;
        }
        let (mut current, mut expect) = match known {
            // Any replica's answer will do: a stale one fails the compare and is read again.
            Known::Unknown => {
                let read = last_json(&self.status, status_subject(call_id))
                    .await?
                    .map(|(record, revision)| Stored { record, revision });
                let expect = read.as_ref().map_or(0, |s| s.revision);
                (read, expect)
            }
            Known::Revision(revision) => (None, revision),
            Known::Stored(stored) => {
                let expect = stored.revision;
                (Some(*stored), expect)
            }
        };
        for _ in 0..MAX_TRIES {
            let Some(next) = change(current.as_ref().map(|s| &s.record)) else {
                return Ok(Transition::Declined(current));
            };
            if let Some(revision) = self.write(&next, expect).await? {
                return Ok(Transition::Written(Stored {
                    record: next,
                    revision,
                }));
            }
            current = self.get(call_id).await?;
            expect = current.as_ref().map_or(0, |s| s.revision);
        }
        Err(StoreError::Contended {
            call_id: call_id.to_owned(),
            tries: MAX_TRIES,
        })
    }

    /// [`Store::transition`] of a numbered call. A cancel is appended to the page's cancels, then
    /// the page is read from the stream leader up to it: the cancel stands unless the call's
    /// end (or an earlier cancel) came first, and a worker's later record fails its compare
    /// against the cancels. Any other change is stored against the page's cancels, like a
    /// worker's.
    async fn transition_paged(
        &self,
        page: Page,
        call_id: &str,
        mut change: impl FnMut(Option<&Record>) -> Option<Record>,
    ) -> Result<Transition, StoreError> {
        for attempt in 0..MAX_TRIES {
            let read = pages::read(&self.pages, &page, page.all(), attempt > 0).await?;
            let current = pages::resolve(&read.entries, call_id).map(pages::Entry::stored);
            let Some(next) = change(current.as_ref().map(|s| &s.record)) else {
                return Ok(Transition::Declined(current));
            };
            let mut payload = next.to_json();
            payload.push(b'\n');
            if next.state == CallState::Cancelled {
                let publish =
                    async { self.js.publish(page.cancels(), payload.into()).await?.await };
                let at = publish.await.map_err(StoreError::Write)?.sequence;
                let mut upto = pages::read(&self.pages, &page, page.all(), true).await?;
                upto.entries.retain(|e| e.seq <= at);
                return Ok(match pages::resolve(&upto.entries, call_id) {
                    Some(first) if first.seq < at => {
                        // It lost: removed, so no worker takes it for a cancel of a later run
                        // (a dead letter replayed). A cancel left behind only costs a worker
                        // a compare; `resolve` still shows the end that came first.
                        if let Err(error) = self.pages.delete_message(at).await {
                            tracing::debug!(%error, call_id, "a cancel that lost was left in its page");
                        }
                        Transition::Declined(Some(first.stored()))
                    }
                    _ => Transition::Written(Stored {
                        record: next,
                        revision: at,
                    }),
                });
            }
            let (records, cancels) = (page.records(), page.cancels());
            let stored = publish_compared(
                &self.js,
                records,
                payload.into(),
                read.last_cancel,
                Some(&cancels),
            )
            .await
            .map_err(StoreError::Write)?;
            if let Some(revision) = stored {
                return Ok(Transition::Written(Stored {
                    record: next,
                    revision,
                }));
            }
        }
        Err(StoreError::Contended {
            call_id: call_id.to_owned(),
            tries: MAX_TRIES,
        })
    }

    /// Removes the record stored at `revision` (a call that was not accepted after all); a
    /// failure is only logged: the record then shows a call that never ran.
    pub async fn forget(&self, revision: u64) {
        if let Err(error) = self.status.delete_message(revision).await {
            tracing::debug!(%error, revision, "status of a call not accepted left in place");
        }
    }

    /// Tells every worker that `cancel.call_id` was cancelled (after its record says so).
    pub async fn announce_cancel(&self, cancel: &Cancel) -> Result<(), StoreError> {
        self.js
            .publish(cancel_subject(&cancel.call_id), cancel.encode().into())
            .await
            .map_err(StoreError::Write)?
            .await
            .map_err(StoreError::Write)?;
        Ok(())
    }

    /// Keeps a call's final answer: `status`, `content_type` and `body`.
    pub async fn keep_result(
        &self,
        call_id: &str,
        status: u16,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<(), StoreError> {
        use async_nats::jetstream::message::PublishMessage;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RESULT_STATUS_HEADER, status.to_string().as_str());
        if let Some(ct) = content_type {
            headers.insert("Content-Type", ct);
        }
        let publish = PublishMessage::build().headers(headers).payload(body);
        self.js
            .send_publish(result_subject(call_id), publish)
            .await
            .map_err(StoreError::Write)?
            .await
            .map_err(StoreError::Write)?;
        Ok(())
    }

    /// A kept result: its status, content type and body; `None` when none is kept.
    pub async fn result(&self, call_id: &str) -> Result<Option<KeptResult>, StoreError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self
            .results
            .direct_get_last_for_subject(result_subject(call_id))
            .await
        {
            Ok(msg) => {
                let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
                Ok(Some(KeptResult {
                    status: header(RESULT_STATUS_HEADER)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(200),
                    content_type: header("Content-Type"),
                    body: msg.payload,
                }))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Read(e)),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_plain_ids_and_encode_the_rest() {
        assert_eq!(key("0b7e-Az_9"), "0b7e-Az_9");
        assert_eq!(key("a.b"), "~612e62");
        assert_eq!(key("a*"), "~612a");
        assert_ne!(key("~61"), key("a"));
        assert_eq!(status_subject("x"), "flotilla.status.x");
        let c = Cancel {
            call_id: "a b?".into(),
            accepted_at: 7,
        };
        assert_eq!(Cancel::decode(c.encode().as_bytes()), Some(c));
        assert_eq!(Cancel::decode(b"x y"), None);
    }

    #[test]
    fn records_round_trip_and_omit_what_is_unset() {
        let r = Record::queued("c1", "echo", 5, None);
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(!json.contains("status\""), "{json}");
        assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);
        let mut d = r.clone();
        d.state = CallState::Dead;
        d.result = Some(ResultKept::TooLarge { bytes: 9, limit: 4 });
        assert_eq!(Record::from_json(&d.to_json()).unwrap(), d);
        assert!(CallState::Cancelled.is_final() && !CallState::Retrying.is_final());
    }
}
