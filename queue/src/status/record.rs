//! A call's status record as stored (JSON with Unix-nanosecond times), the subjects it is kept
//! under, and the errors of the status store: what the store and its pages share.

use serde::{Deserialize, Serialize};

use super::keyed::LastError;
use crate::fairness::FairnessKey;
use crate::priority::Priority;

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
    /// Stored only when not normal, so a default call's record is no larger than before.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// The call's fairness key, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
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
            priority: Priority::Normal,
            fairness_key: None,
        }
    }

    /// The same record for a call of `priority`.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The same record for a call of fairness key `key`.
    pub fn with_key(mut self, key: Option<&FairnessKey>) -> Self {
        self.fairness_key = key.map(|k| k.as_str().to_owned());
        self
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
