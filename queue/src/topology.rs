//! Topology: how many shards there are, agreed once per NATS deployment, and the streams that
//! back them. The shard count is written once into a KV bucket by the first gateway or worker to
//! start; every later process adopts it, or refuses to start when it was told a different count.
//! A gateway and a worker therefore cannot disagree on where a function's calls live.

use std::time::Duration;

use async_nats::jetstream::{
    self, kv,
    stream::{self, RetentionPolicy, StorageType},
};
use bytes::Bytes;

use crate::status::{
    CANCEL_STREAM, CANCEL_SUBJECT_PREFIX, RESULT_STREAM, RESULT_SUBJECT_PREFIX, STATUS_STREAM,
    STATUS_SUBJECT_PREFIX,
};
use crate::subjects::{self, DEAD_STREAM, TOPOLOGY_BUCKET};

const SHARDS_KEY: &str = "shards";

/// Shard count used when nothing is stored yet and nothing was configured.
pub const DEFAULT_SHARDS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "shard count mismatch: NATS holds {stored} shards (bucket {TOPOLOGY_BUCKET}), this process was \
         configured with {configured}; use --shards {stored} or drain and delete the bucket"
    )]
    Mismatch { stored: u32, configured: u32 },
    #[error("topology bucket {TOPOLOGY_BUCKET} holds an unreadable shard count {0:?}")]
    Corrupt(String),
    /// JetStream did not answer or refused a request; the request's own error is the source.
    #[error("JetStream: {0}")]
    JetStream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl TopologyError {
    /// True when waiting and retrying may help (NATS unreachable), false when an operator must act.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::JetStream(_) => true,
            Self::Mismatch { .. } | Self::Corrupt(_) => false,
        }
    }
}

fn js_err(e: impl std::error::Error + Send + Sync + 'static) -> TopologyError {
    TopologyError::JetStream(Box::new(e))
}

/// The object store bucket of bodies larger than one NATS message.
pub const BODY_BUCKET: &str = "FLOTILLA_BODIES";
/// The stream behind [`BODY_BUCKET`].
pub const BODY_STREAM: &str = "OBJ_FLOTILLA_BODIES";

/// How long a call's status is kept by default.
pub const DEFAULT_STATUS_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What the status streams may hold together by default: 1 GiB (see [`StatusBudget`]).
pub const DEFAULT_STATUS_BUDGET: u64 = 1 << 30;

/// How the status budget (`--status-budget`) is shared among the streams that keep status, and
/// what each may hold. A stream at its share drops its oldest messages first.
///
/// - `FLOTILLA_STATUS_PAGES` (numbered calls, many records a message): three quarters.
/// - `FLOTILLA_STATUS` (one record per call: ids a client chose or derived from a key):
///   a sixteenth.
/// - `FLOTILLA_RESULTS` (kept answers): an eighth.
/// - `FLOTILLA_CANCELS`: a sixteenth.
///
/// The streams with a subject per call are also bounded in messages, a message per 512 bytes of
/// their share: nats-server keeps about 300 bytes of memory per subject besides the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusBudget {
    pub bytes: u64,
}

impl StatusBudget {
    /// Bytes of the subject-per-call streams' share for each message they may hold.
    pub const BYTES_PER_KEYED_MESSAGE: u64 = 512;

    /// (max bytes, max messages) of `stream`; `None` for a stream outside the budget.
    pub fn limits_of(&self, stream: &str) -> Option<(i64, i64)> {
        let share = match stream {
            crate::status::pages::PAGE_STREAM => return Some((clamp(self.bytes / 4 * 3), -1)),
            STATUS_STREAM | CANCEL_STREAM => self.bytes / 16,
            RESULT_STREAM => self.bytes / 8,
            _ => return None,
        };
        Some((
            clamp(share),
            clamp((share / Self::BYTES_PER_KEYED_MESSAGE).max(1)),
        ))
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n.max(1)).unwrap_or(i64::MAX)
}

/// What every stream of the fleet is created with.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Stream replicas in a NATS cluster (1 on a single server).
    pub replicas: usize,
    /// How long JetStream remembers an idempotency key, so a retried POST enqueues once.
    pub duplicate_window: Duration,
    /// How long dead letters are kept.
    pub dead_letter_max_age: Duration,
    /// How long a call's status and kept result are kept after its last change.
    pub status_retention: Duration,
    /// What the status streams may hold together.
    pub status_budget: StatusBudget,
    pub storage: StorageType,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            dead_letter_max_age: Duration::from_secs(14 * 24 * 3600),
            status_retention: DEFAULT_STATUS_RETENTION,
            status_budget: StatusBudget {
                bytes: DEFAULT_STATUS_BUDGET,
            },
            storage: StorageType::File,
        }
    }
}

/// The agreed topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub shards: u32,
}

impl Topology {
    pub fn shard_map(&self) -> crate::ShardMap {
        crate::ShardMap::new(self.shards)
    }

    /// Reads the stored shard count, writing `configured` (or the default) when none is stored.
    /// An explicit `configured` count that differs from the stored one is an error.
    pub async fn agree(
        js: &jetstream::Context,
        configured: Option<u32>,
        settings: &StreamSettings,
    ) -> Result<Self, TopologyError> {
        let bucket = match js.get_key_value(TOPOLOGY_BUCKET).await {
            Ok(b) => b,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: TOPOLOGY_BUCKET.into(),
                    description: "Flotilla fleet topology, written once".into(),
                    history: 1,
                    num_replicas: settings.replicas,
                    ..Default::default()
                })
                .await
                .map_err(js_err)?,
        };
        let wanted = configured.unwrap_or(DEFAULT_SHARDS);
        let stored = match bucket
            .create(SHARDS_KEY, Bytes::from(wanted.to_string()))
            .await
        {
            Ok(_) => {
                tracing::info!(shards = wanted, "topology written");
                wanted
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let raw = bucket
                    .get(SHARDS_KEY)
                    .await
                    .map_err(js_err)?
                    .ok_or_else(|| TopologyError::Corrupt("<deleted>".into()))?;
                let text = String::from_utf8_lossy(&raw).into_owned();
                match text.parse::<u32>() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(TopologyError::Corrupt(text)),
                }
            }
            Err(e) => return Err(js_err(e)),
        };
        if let Some(configured) = configured
            && configured != stored
        {
            return Err(TopologyError::Mismatch { stored, configured });
        }
        Ok(Self { shards: stored })
    }

    /// The shard streams and the dead-letter stream that JetStream says do not exist. A publish
    /// that finds no responder while a stream's leader is being elected (a partition, a node
    /// restarting) looks like a missing stream to the client; only JetStream's own "stream not
    /// found" is taken for one, and a request it does not answer is an error, never "missing".
    pub async fn missing_streams(
        &self,
        js: &jetstream::Context,
    ) -> Result<Vec<String>, TopologyError> {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::context::GetStreamErrorKind;
        let names = (0..self.shards)
            .flat_map(|shard| [subjects::call_stream(shard), subjects::wait_stream(shard)])
            .chain([DEAD_STREAM.to_owned()]);
        let mut missing = Vec::new();
        for name in names {
            match js.get_stream(&name).await {
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                {
                    missing.push(name);
                }
                Err(e) => return Err(js_err(e)),
            }
        }
        Ok(missing)
    }

    /// Creates the shard streams (calls and waiting calls) and the dead-letter stream when absent. Existing streams are
    /// left as they are (an operator may have tuned them), except that a shard stream created
    /// before retries were kept in it gains the retry subject. An existing stream whose
    /// replicas or storage differ from `settings` is returned (and logged, one warning each),
    /// not changed: the stream flags apply only when a stream is created.
    pub async fn ensure_streams(
        &self,
        js: &jetstream::Context,
        settings: &StreamSettings,
    ) -> Result<Vec<StreamDrift>, TopologyError> {
        let mut drifts = Vec::new();
        for shard in 0..self.shards {
            let stream = js
                .get_or_create_stream(call_stream_config(shard, settings))
                .await
                .map_err(js_err)?;
            drifts.extend(StreamDrift::of(&stream, settings));
            // Streams made by earlier releases lack the retry subject and direct gets.
            let retry = subjects::retry_wildcard(shard);
            let amended = amend(js, &stream, |c| {
                if !c.subjects.contains(&retry) {
                    c.subjects.push(retry.clone());
                }
                c.allow_direct = true;
            })
            .await?;
            if amended {
                tracing::info!(shard, "shard stream updated: waiting retries, direct gets");
            }
            let wait = js
                .get_or_create_stream(wait_stream_config(shard, settings))
                .await
                .map_err(js_err)?;
            drifts.extend(StreamDrift::of(&wait, settings));
            amend(js, &wait, |c| c.allow_direct = true).await?;
        }
        let dead = js
            .get_or_create_stream(dead_stream_config(settings))
            .await
            .map_err(js_err)?;
        drifts.extend(StreamDrift::of(&dead, settings));
        let slots = js
            .get_or_create_stream(key_slot_stream_config(settings))
            .await
            .map_err(js_err)?;
        drifts.extend(StreamDrift::of(&slots, settings));
        Self::ensure_bodies(js, settings).await?;
        let bodies = js.get_stream(BODY_STREAM).await.map_err(js_err)?;
        drifts.extend(StreamDrift::of(&bodies, settings));
        for config in [
            status_stream_config(settings),
            page_stream_config(settings),
            result_stream_config(settings),
            cancel_stream_config(settings),
            batch_stream_config(settings),
        ] {
            let stream = js.get_or_create_stream(config).await.map_err(js_err)?;
            drifts.extend(StreamDrift::of(&stream, settings));
            // The retention and budget flags may have changed since the stream was made.
            amend(js, &stream, |c| {
                c.max_age = settings.status_retention;
                if let Some((bytes, messages)) = settings.status_budget.limits_of(&c.name) {
                    c.max_bytes = bytes;
                    c.max_messages = messages;
                    c.discard = stream::DiscardPolicy::Old;
                }
            })
            .await?;
        }
        for drift in &drifts {
            tracing::warn!(
                stream = %drift.stream,
                has = %drift.has(),
                asked = %drift.asked(),
                "existing stream differs from --stream-replicas/--memory-streams, which apply only when a stream is created; it keeps its own"
            );
        }
        Ok(drifts)
    }

    /// The object store of large bodies (`FLOTILLA_BODIES`), made when absent. A body is kept
    /// while its call lives and, at most, as long as dead letters are.
    pub async fn ensure_bodies(
        js: &jetstream::Context,
        settings: &StreamSettings,
    ) -> Result<jetstream::object_store::ObjectStore, TopologyError> {
        if let Ok(store) = js.get_object_store(BODY_BUCKET).await {
            return Ok(store);
        }
        js.create_object_store(jetstream::object_store::Config {
            bucket: BODY_BUCKET.into(),
            description: Some(
                "Flotilla request bodies larger than one NATS message, until their call settles"
                    .into(),
            ),
            max_age: settings.dead_letter_max_age,
            storage: settings.storage,
            num_replicas: settings.replicas,
            ..Default::default()
        })
        .await
        .map_err(js_err)
    }

    /// True when every stream of the topology exists (the gateway's readiness).
    pub async fn streams_present(&self, js: &jetstream::Context) -> bool {
        for shard in 0..self.shards {
            for name in [subjects::call_stream(shard), subjects::wait_stream(shard)] {
                if js.get_stream(name).await.is_err() {
                    return false;
                }
            }
        }
        for name in [
            DEAD_STREAM,
            STATUS_STREAM,
            crate::status::pages::PAGE_STREAM,
            RESULT_STREAM,
            CANCEL_STREAM,
            crate::batch::BATCH_STREAM,
            BODY_STREAM,
            subjects::KEY_SLOT_STREAM,
        ] {
            if js.get_stream(name).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// An existing stream whose replicas or storage differ from what this process was started with
/// (`--stream-replicas`, `--memory-streams`). Those flags apply only when a stream is created, so
/// the stream keeps its own; the difference is reported, never fixed behind the operator's back
/// (JetStream cannot change a stream's storage in place at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDrift {
    pub stream: String,
    /// Replicas the stream has.
    pub replicas: usize,
    /// Storage the stream has.
    pub storage: StorageType,
    /// Replicas the flags ask for.
    pub asked_replicas: usize,
    /// Storage the flags ask for.
    pub asked_storage: StorageType,
}

impl StreamDrift {
    /// How `stream` differs from `settings`, if it does.
    fn of(stream: &jetstream::stream::Stream, settings: &StreamSettings) -> Option<Self> {
        let config = &stream.cached_info().config;
        // A replica count of 0 (unset when made) means one, as JetStream reads it.
        let replicas = config.num_replicas.max(1);
        let asked_replicas = settings.replicas.max(1);
        (replicas != asked_replicas || config.storage != settings.storage).then(|| Self {
            stream: config.name.clone(),
            replicas,
            storage: config.storage,
            asked_replicas,
            asked_storage: settings.storage,
        })
    }

    /// What the stream has, as the log and `/system/info` say it: `replicas 1, file storage`.
    pub fn has(&self) -> String {
        describe(self.replicas, self.storage)
    }

    /// What the flags ask for, in the same words.
    pub fn asked(&self) -> String {
        describe(self.asked_replicas, self.asked_storage)
    }
}

impl std::fmt::Display for StreamDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream {} has {}, the flags ask for {} (--stream-replicas and --memory-streams apply \
             only when a stream is created)",
            self.stream,
            self.has(),
            self.asked()
        )
    }
}

fn describe(replicas: usize, storage: StorageType) -> String {
    let storage = match storage {
        StorageType::File => "file",
        StorageType::Memory => "memory",
    };
    format!("replicas {replicas}, {storage} storage")
}

/// Applies `change` to an existing stream's configuration and updates the stream when that
/// changed anything; true when it did.
async fn amend(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    change: impl FnOnce(&mut stream::Config),
) -> Result<bool, TopologyError> {
    let mut config = stream.cached_info().config.clone();
    change(&mut config);
    if config == stream.cached_info().config {
        return Ok(false);
    }
    js.update_stream(config).await.map_err(js_err)?;
    Ok(true)
}

/// A shard's stream: a work queue (a message is gone once acknowledged), one subject per function
/// for calls and one per function for retries waiting for their due time. The two prefixes never
/// overlap, as a work queue requires of its consumers' filters: the dispatch consumer reads every
/// call subject, the retry consumer every retry subject.
pub fn call_stream_config(shard: u32, settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::call_stream(shard),
        description: Some(format!("Flotilla asynchronous calls, shard {shard}")),
        subjects: vec![
            subjects::shard_wildcard(shard),
            subjects::retry_wildcard(shard),
        ],
        retention: RetentionPolicy::WorkQueue,
        storage: settings.storage,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        // Queue visibility counts a function's pending calls with a batched direct get.
        allow_direct: true,
        ..Default::default()
    }
}

/// A shard's calls waiting for their function to have room (at its concurrency, its rate, or its
/// share of a replica): a work queue with one subject per function, read by one consumer per
/// function whose `max_ack_pending` is the function's concurrency. Only functions at a limit
/// have calls here, so a consumer skips few other functions' messages.
pub fn wait_stream_config(shard: u32, settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::wait_stream(shard),
        description: Some(format!(
            "Flotilla calls waiting for their function to have room, shard {shard}"
        )),
        subjects: vec![subjects::wait_wildcard(shard)],
        retention: RetentionPolicy::WorkQueue,
        storage: settings.storage,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        allow_direct: true,
        ..Default::default()
    }
}

pub fn dead_stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: DEAD_STREAM.into(),
        description: Some(
            "Flotilla dead letters: calls that failed every attempt or could not be decoded".into(),
        ),
        subjects: vec![subjects::dead_wildcard()],
        retention: RetentionPolicy::Limits,
        storage: settings.storage,
        num_replicas: settings.replicas,
        max_age: settings.dead_letter_max_age,
        ..Default::default()
    }
}

/// The slots of fairness keys under `key_concurrency`: a slot is a subject holding at most one
/// message, taken by a publish that expects the subject empty, freed by deleting the message,
/// and freed by its time to live when the replica holding it died (see the worker's `keys.rs`).
pub fn key_slot_stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::KEY_SLOT_STREAM.into(),
        description: Some(
            "Flotilla key slots: calls of a fairness key in flight under key_concurrency".into(),
        ),
        subjects: vec![subjects::key_slot_wildcard()],
        retention: RetentionPolicy::Limits,
        storage: settings.storage,
        num_replicas: settings.replicas,
        max_messages_per_subject: 1,
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// Call status: the last record of each call (one subject per call), for the status retention.
/// Direct gets let any replica of the stream answer a status read.
pub fn status_stream_config(settings: &StreamSettings) -> stream::Config {
    keyed_stream_config(
        STATUS_STREAM,
        "Flotilla call status: the last state of each asynchronous call",
        STATUS_SUBJECT_PREFIX,
        settings,
    )
}

/// Status pages: the records of numbered calls, many to a message, two subjects per 64 calls
/// (`status::pages`). Each subject keeps every message: a page's records are read together.
pub fn page_stream_config(settings: &StreamSettings) -> stream::Config {
    let (max_bytes, max_messages) = settings
        .status_budget
        .limits_of(crate::status::pages::PAGE_STREAM)
        .unwrap_or((-1, -1));
    stream::Config {
        max_messages_per_subject: -1,
        max_bytes,
        max_messages,
        ..keyed_stream_config(
            crate::status::pages::PAGE_STREAM,
            "Flotilla call status pages: the records of numbered calls, many to a message",
            crate::status::pages::PAGE_SUBJECT_PREFIX,
            settings,
        )
    }
}

/// Kept results: the final answer of each call whose function keeps results.
pub fn result_stream_config(settings: &StreamSettings) -> stream::Config {
    keyed_stream_config(
        RESULT_STREAM,
        "Flotilla kept results: the final answer of calls whose function keeps results",
        RESULT_SUBJECT_PREFIX,
        settings,
    )
}

/// Cancels, which every worker follows from the start: a queued call cancelled is never started,
/// whichever replica pulls it, and a running one is aborted where it runs.
pub fn cancel_stream_config(settings: &StreamSettings) -> stream::Config {
    keyed_stream_config(
        CANCEL_STREAM,
        "Flotilla cancels: the calls clients cancelled, followed by every worker",
        CANCEL_SUBJECT_PREFIX,
        settings,
    )
}

/// Batch progress: each batch's meta, each process's counts for it, and its `done` claim.
pub fn batch_stream_config(settings: &StreamSettings) -> stream::Config {
    keyed_stream_config(
        crate::batch::BATCH_STREAM,
        "Flotilla batch progress: counts per batch and process, and each batch's end",
        crate::batch::BATCH_SUBJECT_PREFIX,
        settings,
    )
}

fn keyed_stream_config(
    name: &str,
    description: &str,
    prefix: &str,
    settings: &StreamSettings,
) -> stream::Config {
    let (max_bytes, max_messages) = settings.status_budget.limits_of(name).unwrap_or((-1, -1));
    stream::Config {
        name: name.into(),
        description: Some(description.into()),
        subjects: vec![format!("{prefix}.>")],
        retention: RetentionPolicy::Limits,
        max_messages_per_subject: 1,
        max_bytes,
        max_messages,
        discard: stream::DiscardPolicy::Old,
        max_age: settings.status_retention,
        storage: settings.storage,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window.min(settings.status_retention),
        allow_direct: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drift_names_the_stream_what_it_has_and_what_was_asked() {
        let drift = StreamDrift {
            stream: "FLOTILLA_CALLS_0".into(),
            replicas: 1,
            storage: StorageType::Memory,
            asked_replicas: 3,
            asked_storage: StorageType::File,
        };
        assert_eq!(
            drift.to_string(),
            "stream FLOTILLA_CALLS_0 has replicas 1, memory storage, the flags ask for replicas 3, \
             file storage (--stream-replicas and --memory-streams apply only when a stream is \
             created)"
        );
    }
}
