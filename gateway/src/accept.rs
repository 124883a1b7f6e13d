//! Storing one accepted call, the one path every call takes into JetStream (a single call and
//! each line of a batch): its `queued` status, a large body in the object store, the call itself,
//! awaiting the PubAck. Invariant: a call JetStream would not take leaves no status and no body
//! behind.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use flotilla_queue::envelope::{self, Control, H_RETRY_AT};
use flotilla_queue::status::pages::Page;
use flotilla_queue::status::{self, Record, Store};
use flotilla_queue::subjects;
use flotilla_queue::{FairnessKey, Priority, headers};

use crate::error::{CallError, EnqueueError};
use crate::hot::Hot;
use crate::state::State;

/// Writes `queued` over the record an earlier call with the same id left, unless a worker
/// already wrote this call's own.
async fn requeue_status(
    state: &State,
    call_id: &str,
    function: &str,
    accepted_at: u128,
    batch_id: Option<&str>,
    priority: Priority,
    key: Option<&FairnessKey>,
) {
    let Some(store) = state.status.kept() else {
        return;
    };
    let written = store
        .transition(call_id, status::Known::Unknown, |current| match current {
            Some(r) if r.accepted_at == accepted_at => None,
            _ => Some(
                Record::queued(call_id, function, accepted_at, batch_id)
                    .with_priority(priority)
                    .with_key(key),
            ),
        })
        .await;
    if let Err(error) = written {
        state.metrics.status_write_failed();
        tracing::warn!(%error, function, call_id, "queued status of a reused call id not stored");
    }
}

/// Room kept in the header block for `Flotilla-Status-Rev`, added once the status is stored.
const STATUS_HEADER_ROOM: usize = 48;

/// One call on its way in: what `accept` stores.
pub(crate) struct Accepting<'a> {
    pub function: &'a str,
    /// The envelope's control fields; `start_time` is the acceptance time.
    pub control: Control<'a>,
    /// `Nats-Msg-Id`, from the client's key, so a retried request enqueues once.
    pub dedup_key: Option<&'a str>,
    /// When a delayed call may start (Unix nanoseconds).
    pub not_before: Option<u128>,
    pub batch_id: Option<&'a str>,
    /// Written as `Flotilla-Priority` when not normal; the worker's lane.
    pub priority: Priority,
    /// Written as `Flotilla-Fairness-Key`; the key the worker parks the call under.
    pub fairness_key: Option<&'a FairnessKey>,
}

/// Stores one accepted call: its `queued` status first (so the call carries the record's
/// sequence and no worker reads it), then the call itself, awaiting JetStream's PubAck. Shared
/// by the single call and every line of a batch. A call JetStream would not take leaves no
/// status behind.
pub(crate) async fn accept<K: AsRef<str>, V: AsRef<str>>(
    state: &State,
    hot: &Hot,
    a: Accepting<'_>,
    forwarded: impl IntoIterator<Item = (K, V)>,
    body: Bytes,
) -> Result<PublishAck, CallError> {
    let Prepared {
        mut headers,
        payload,
        body,
    } = prepare(state, &a, forwarded, body).await?;
    let queued = record_before(state, &a, &mut headers).await;
    let published = publish(state, hot, &a, headers, payload, &queued).await;
    settle(state, hot, &a, published, queued, &body).await
}

/// The call as NATS stores it, and where its body went.
struct Prepared<'s> {
    headers: async_nats::HeaderMap,
    /// The body, or nothing when it went to the object store.
    payload: Bytes,
    body: BodyObject<'s>,
}

/// A body stored in the object store ahead of its call (the call carries its name), or none.
struct BodyObject<'s> {
    state: &'s State,
    name: Option<String>,
}

impl BodyObject<'_> {
    /// Removes the object: the call was not stored after all, or JetStream held it already.
    async fn forget(&self) {
        if let (Some(object), Some(bodies)) = (&self.name, self.state.streams.bodies.get())
            && let Err(error) = bodies.delete(object).await
        {
            tracing::warn!(%error, object, "body of a call not accepted left in the object store until it expires");
        }
    }
}

/// The call's NATS headers and payload; a body larger than one message holds is stored first, in
/// the object store. Refuses headers JetStream could not store.
async fn prepare<'s, K: AsRef<str>, V: AsRef<str>>(
    state: &'s State,
    a: &Accepting<'_>,
    forwarded: impl IntoIterator<Item = (K, V)>,
    body: Bytes,
) -> Result<Prepared<'s>, CallError> {
    let mut headers = a.control.to_nats_headers(a.dedup_key, forwarded);
    if let Some(batch) = a.batch_id {
        headers.insert(headers::FLOTILLA_BATCH, batch);
    }
    a.priority.mark(&mut headers);
    if let Some(key) = a.fairness_key {
        key.mark(&mut headers);
    }
    let (payload, name) = if body.len() > state.inline_limit() {
        let object = store_body(state, &body).await?;
        headers.insert(headers::FLOTILLA_BODY_OBJECT, object.as_str());
        (Bytes::new(), Some(object))
    } else {
        (body, None)
    };
    let body = BodyObject { state, name };
    let size = nats_header_bytes(&headers) + STATUS_HEADER_ROOM;
    if size > MAX_NATS_HEADER_BYTES {
        body.forget().await;
        return Err(CallError::HeadersTooLarge {
            size,
            limit: MAX_NATS_HEADER_BYTES,
        });
    }
    Ok(Prepared {
        headers,
        payload,
        body,
    })
}

/// The call's `queued` record, as far as it went before the publish.
#[expect(
    clippy::large_enum_variant,
    reason = "one per call, held in the call's own future; boxing the record would allocate on the hot path"
)]
enum Queued<'s> {
    /// None: status is not kept (or not open yet), or its write failed (logged and counted).
    Off,
    /// A numbered call's, written to its page alongside the publish.
    Paged(&'s Store, Page, Record),
    /// The call's own, stored at this revision, which the call carries.
    Stored(&'s Store, u64),
    /// A record of this id exists already: an earlier call's, or this retried call's own.
    Taken,
}

/// A numbered call's `queued` record goes to its page while the call is published. Any other id's
/// record is stored first, so the call can carry its sequence and the worker never has to read
/// it; created only where no record exists: a retried POST finds its own, and the call then goes
/// without a sequence (JetStream drops the repeated call anyway).
async fn record_before<'s>(
    state: &'s State,
    a: &Accepting<'_>,
    headers: &mut async_nats::HeaderMap,
) -> Queued<'s> {
    let Some(store) = state.status.kept() else {
        return Queued::Off;
    };
    let (name, call_id) = (a.function, a.control.call_id);
    let mut queued = Record::queued(call_id, name, a.control.start_time, a.batch_id)
        .with_priority(a.priority)
        .with_key(a.fairness_key);
    queued.not_before = a.not_before;
    if let Some(page) = status::pages::page_of(call_id) {
        return Queued::Paged(store, page, queued);
    }
    match store.write(&queued, 0).await {
        Ok(Some(revision)) => {
            headers.insert(status::REVISION_HEADER, revision.to_string().as_str());
            Queued::Stored(store, revision)
        }
        Ok(None) => Queued::Taken,
        Err(error) => {
            state.metrics.status_write_failed();
            tracing::warn!(%error, function = %name, call_id = %call_id, "queued status not stored; enqueueing the call without it");
            Queued::Off
        }
    }
}

/// Publishes the call and awaits its PubAck, a numbered call's record written alongside. No timer
/// of our own: the context's timeout bounds the send and the PubAck, and a full ack window fails
/// at once (MaxAckPending) instead of waiting.
async fn publish(
    state: &State,
    hot: &Hot,
    a: &Accepting<'_>,
    mut headers: async_nats::HeaderMap,
    payload: Bytes,
    queued: &Queued<'_>,
) -> Result<PublishAck, PublishError> {
    // A delayed call waits where retries wait, due at its start time: durable, holding no slot,
    // moved to its function's wait subject when due (see `docs/delivery.md`).
    let subject = match a.not_before {
        None => hot.subject.clone(),
        Some(at) => {
            headers.insert(H_RETRY_AT, at.to_string().as_str());
            subjects::retry_subject(hot.shard, &hot.function).into()
        }
    };
    let publish = async {
        state
            .nats
            .js
            .publish_with_headers(subject, headers, payload)
            .await?
            .await
    };
    match queued {
        // A fresh id: nothing can repeat it, so its record goes with the call.
        Queued::Paged(store, page, record) if a.dedup_key.is_none() => {
            tokio::join!(publish, record_queued(state, store, *page, record)).0
        }
        // A key the client sent again (a retried POST) must not record a second acceptance:
        // the record follows the call, and only when JetStream took it as new.
        Queued::Paged(store, page, record) => {
            let published = publish.await;
            if published.as_ref().is_ok_and(|ack| !ack.duplicate) {
                record_queued(state, store, *page, record).await;
            }
            published
        }
        Queued::Off | Queued::Stored(..) | Queued::Taken => publish.await,
    }
}

/// What follows the PubAck. A call not stored leaves no status and no body saying it was; a
/// duplicate's body goes (the call it repeats carries its own); a new call whose id an earlier
/// call's record holds takes that record over.
async fn settle(
    state: &State,
    hot: &Hot,
    a: &Accepting<'_>,
    published: Result<PublishAck, PublishError>,
    queued: Queued<'_>,
    body: &BodyObject<'_>,
) -> Result<PublishAck, CallError> {
    let (name, call_id) = (a.function, a.control.call_id);
    let ack = match published {
        Ok(ack) => ack,
        Err(e) => {
            if e.kind() == PublishErrorKind::StreamNotFound {
                state.stream_missing();
            }
            if let Queued::Stored(store, revision) = queued {
                // Not accepted: no status may say it was. A record left behind only shows a
                // call that never ran, for the status retention.
                store.forget(revision).await;
            }
            body.forget().await;
            return Err(publish_error(e, hot.shard));
        }
    };
    if ack.duplicate {
        // The call it repeats carries its own body.
        body.forget().await;
        state.metrics.duplicate(name);
        tracing::debug!(function = %name, call_id = %call_id, "duplicate call dropped by JetStream");
    } else if let Queued::Taken = queued {
        // The id names an earlier call, past the duplicate window: this new call takes its
        // record over.
        Box::pin(requeue_status(
            state,
            call_id,
            name,
            a.control.start_time,
            a.batch_id,
            a.priority,
            a.fairness_key,
        ))
        .await;
    }
    Ok(ack)
}

/// Writes a numbered call's `queued` record to its status page; a failure is logged and counted,
/// and the call goes on without it.
async fn record_queued(
    state: &State,
    store: &status::Store,
    page: status::pages::Page,
    queued: &Record,
) {
    let write = store.write_paged(page, queued, status::pages::Guard::None);
    match tokio::time::timeout(QUEUED_RECORD_WAIT, write).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            state.metrics.status_write_failed();
            tracing::warn!(%error, function = %queued.function, call_id = %queued.call_id, "queued status not stored; the call is enqueued without it");
        }
        // The record is still on its way (a status stream electing its leader): the 202 does
        // not wait for it, and the call's later states do not need it.
        Err(_) => {
            tracing::debug!(call_id = %queued.call_id, "queued status not stored yet; answering without waiting for it");
        }
    }
}

/// How long a 202 waits for the call's `queued` record. It takes milliseconds; when a status
/// stream has no leader for a while, the call (already stored) is answered without it.
const QUEUED_RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Stores a large body in the object store under a new name, which it returns.
async fn store_body(state: &State, body: &Bytes) -> Result<String, CallError> {
    let Some(bodies) = state.streams.bodies.get() else {
        return Err(CallError::NotReady(
            "object store of large bodies not opened yet",
        ));
    };
    let name = format!("body-{}", envelope::new_call_id());
    let mut reader: &[u8] = body;
    bodies
        .put(name.as_str(), &mut reader)
        .await
        .map_err(|source| {
            CallError::Publish(EnqueueError::Body {
                bytes: body.len(),
                source,
            })
        })?;
    Ok(name)
}

/// The largest header block JetStream stores with a message (its length is kept in 16 bits).
/// Beyond it a publish fails as if JetStream were unavailable, so the gateway refuses first.
pub const MAX_NATS_HEADER_BYTES: usize = 65_535;

/// The size of `headers` as NATS sends them: `NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`.
fn nats_header_bytes(headers: &async_nats::HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

/// What the client hears when JetStream did not take the call; every kind is named, so a new one
/// is classified here on purpose.
fn publish_error(e: PublishError, shard: u32) -> CallError {
    let failed = match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => return CallError::MessageTooLarge,
        PublishErrorKind::StreamNotFound => EnqueueError::NoStream {
            shard,
            stream: subjects::call_stream(shard),
            source: e,
        },
        PublishErrorKind::TimedOut => EnqueueError::NoAck(e),
        PublishErrorKind::MaxAckPending => EnqueueError::AckWindowFull(e),
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::Other => EnqueueError::Other(e),
    };
    CallError::Publish(failed)
}
