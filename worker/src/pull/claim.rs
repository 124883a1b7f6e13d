//! Claims parked calls into a lane, round-robin across keys: for each free slot the wait loop is
//! about to ask the lane for, the oldest call of the next key in the ring (`keys.rs`) is read with
//! a direct get, published to the lane de-duplicated on its parked sequence, and deleted from its
//! key's subject. When fewer keys wait than calls are wanted, each key of the round gives the same
//! number of its oldest calls, read with one batched direct get and published in order, so the
//! turns stay equal and a claim costs fewer round trips; from four of them on, one purge of the
//! key's subject below the last removes them instead of a delete each. Under `key_concurrency`
//! the claim first takes one of the key's slots, and the claimed call carries it: one call per
//! key and turn.
//!
//! Invariant: a parked call is removed only once JetStream holds its copy in the lane, and the
//! copy's `Nats-Msg-Id` derives from the parked message, so two replicas claiming the same call,
//! or a claim repeated after a crash, put it in the lane once (within the duplicate window).

use std::time::Duration;

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use flotilla_queue::fairness::NO_KEY_TOKEN;
use flotilla_queue::headers::NATS_MESSAGE_ID;
use flotilla_queue::{Priority, subjects};
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::time::Instant;

use crate::functions::FunctionRt;
use crate::keys::{self, FULL_FOR, KeySlot};
use crate::{Shared, dead, retry};

/// Rounds one claim may take when keys turn out empty or already claimed; what is left waits for
/// the loop's next turn.
const ROUNDS: usize = 8;
/// Calls one key may give in one round, when few keys wait.
const PER_KEY_AT_MOST: usize = 16;
/// Calls of one key claimed together from which one purge removes them, rather than a delete
/// each: a purge costs nats-server more than one delete (it walks the stream between them and
/// updates the consumers that see the subject).
const PURGE_FROM: usize = 4;
/// The header of a batched direct get's answers that counts the messages left.
const NATS_NUM_PENDING: &str = "Nats-Num-Pending";
/// How long a batched read of a key's oldest calls may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a claim of one key's oldest calls came to.
enum Claimed {
    /// This many of its calls are in the lane now (one at least).
    Moved(usize),
    /// No call of the key is parked (any more): it leaves the ring.
    Empty,
    /// The key is at its `key_concurrency`.
    Full,
    /// Another replica claimed that call first: the key may have more.
    Taken,
    /// NATS trouble; logged. The key keeps its place.
    Failed,
}

/// What a claim's copy in the lane has for `Nats-Msg-Id` (see [`retry::dedup_id`]).
const CLAIM: &str = "claim";

/// Whether a call delivered from a lane was claimed there from its key's parked subject.
pub(super) fn was_claimed(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(NATS_MESSAGE_ID))
        .and_then(|id| id.as_str().strip_prefix(CLAIM))
        .is_some_and(|rest| rest.starts_with('-'))
}

/// Claims up to `n` parked calls of `f` into its lane of `lane`; returns how many.
pub(super) async fn claim(shared: &Shared, f: &FunctionRt, lane: Priority, n: usize) -> usize {
    let stream = match shared
        .nats
        .js
        .get_stream_no_info(subjects::wait_stream(f.shard))
        .await
    {
        Ok(s) => s,
        Err(error) => {
            tracing::debug!(function = %f.name, %error, "cannot open the wait stream to claim calls");
            return 0;
        }
    };
    let mut claimed = 0;
    for _ in 0..ROUNDS {
        if claimed >= n {
            break;
        }
        let tokens = f.lanes.keys.round(lane, n - claimed, Instant::now());
        if tokens.is_empty() {
            break;
        }
        let each = match f.policy.key_concurrency {
            Some(_) => 1,
            None => (n - claimed).div_ceil(tokens.len()).min(PER_KEY_AT_MOST),
        };
        let read_at = Instant::now();
        let results = join_all(
            tokens
                .iter()
                .map(|token| claim_key(shared, f, &stream, lane, token, each)),
        )
        .await;
        let (mut retry_round, mut failed) = (false, false);
        for (token, result) in tokens.iter().zip(results) {
            match result {
                Claimed::Moved(k) => claimed += k,
                Claimed::Empty => f.lanes.keys.forget(lane, token, read_at),
                Claimed::Full => f.lanes.keys.full(lane, token, Instant::now() + FULL_FOR),
                Claimed::Taken => retry_round = true,
                Claimed::Failed => failed = true,
            }
        }
        if failed || (!retry_round && claimed == 0 && !f.lanes.keys.waiting(lane, Instant::now())) {
            break;
        }
    }
    claimed
}

/// Claims the oldest parked calls of the key whose token is `token`, `each` at most.
async fn claim_key(
    shared: &Shared,
    f: &FunctionRt,
    stream: &Stream<()>,
    lane: Priority,
    token: &str,
    each: usize,
) -> Claimed {
    let slots = f.policy.key_concurrency.filter(|_| token != NO_KEY_TOKEN);
    let slot = match slots {
        None => None,
        Some(n) => match keys::take(shared, &f.name, token, n, f.policy.timeout).await {
            Ok(Some(slot)) => Some(slot),
            Ok(None) => return Claimed::Full,
            Err(error) => {
                tracing::warn!(function = %f.name, %error, "cannot take a key slot; trying again");
                return Claimed::Failed;
            }
        },
    };
    let parked = subjects::park_subject(f.shard, &f.name, lane, token);
    let read = if each > 1 && slot.is_none() {
        oldest(shared, &subjects::wait_stream(f.shard), &parked, each).await
    } else {
        match stream.direct_get_first_for_subject(&parked).await {
            Ok(m) => Ok(vec![Parked {
                sequence: m.sequence,
                headers: m.headers,
                payload: m.payload,
            }]),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error.to_string()),
        }
    };
    let claimed = match read {
        Ok(calls) if calls.is_empty() => Claimed::Empty,
        Ok(calls) => move_parked(shared, f, lane, (token, &parked), calls, slot.as_ref()).await,
        Err(error) => {
            tracing::debug!(function = %f.name, %error, "cannot read parked calls");
            Claimed::Failed
        }
    };
    if !matches!(claimed, Claimed::Moved(_))
        && let Some(slot) = &slot
    {
        keys::release(shared, slot).await;
    }
    claimed
}

/// A parked call as read from its key's subject.
struct Parked {
    sequence: u64,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

/// The oldest `n` messages of `subject` in `stream`, read with one batched direct get (NATS
/// 2.11+): they come one by one to an inbox of their own, then a status 204 ends the batch (a
/// 404 when none matches).
async fn oldest(
    shared: &Shared,
    stream: &str,
    subject: &str,
    n: usize,
) -> Result<Vec<Parked>, String> {
    let client = &shared.nats.client;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let request = serde_json::json!({ "seq": 1, "next_by_subj": subject, "batch": n });
    let read = async {
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut calls = Vec::with_capacity(n);
        while let Some(m) = sub.next().await {
            match m.status.map(|s| s.as_u16()) {
                Some(204 | 404) => return Ok(calls),
                Some(status) => {
                    return Err(format!(
                        "a batched direct get answered {status}: {:?}",
                        m.description
                    ));
                }
                None => {}
            }
            let headers = m.headers.unwrap_or_default();
            let sequence = headers
                .get(async_nats::header::NATS_SEQUENCE)
                .and_then(|v| v.as_str().parse().ok())
                .ok_or("a batched direct get answered a message without its sequence")?;
            // A server before 2.11 ignores `batch`: it answers one message, without the count
            // of those left, and no end of batch.
            let single = headers.get(NATS_NUM_PENDING).is_none();
            calls.push(Parked {
                sequence,
                headers,
                payload: m.payload,
            });
            if single {
                return Ok(calls);
            }
        }
        Err("the batched direct get's inbox closed".to_owned())
    };
    let result = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err("a batched direct get timed out".to_owned()));
    let _ = sub.unsubscribe().await;
    result
}

/// Moves a key's oldest parked `calls` into the lane, in their order, the first carrying `slot`,
/// then removes them from the key's subject (`parked`). They count ahead of the key's next calls
/// from before they reach the lane until they start (see `KeysAhead`).
async fn move_parked(
    shared: &Shared,
    f: &FunctionRt,
    lane: Priority,
    (token, parked): (&str, &str),
    calls: Vec<Parked>,
    slot: Option<&KeySlot>,
) -> Claimed {
    f.lanes.ahead.add(token, calls.len(), Instant::now());
    let subject = subjects::wait_lane_subject(f.shard, &f.name, lane);
    let stream = subjects::wait_stream(f.shard);
    // Sent one after another, so the lane holds them in the key's order; the PubAcks are awaited
    // together.
    let mut sent = Vec::with_capacity(calls.len());
    for call in &calls {
        let mut headers = dead::copied_headers(Some(&call.headers));
        headers.insert(
            NATS_MESSAGE_ID,
            retry::dedup_id(CLAIM, &stream, call.sequence).as_str(),
        );
        if let Some(slot) = slot {
            slot.mark(&mut headers);
        }
        match shared
            .nats
            .js
            .publish_with_headers(subject.clone(), headers, call.payload.clone())
            .await
        {
            Ok(ack) => sent.push(ack),
            Err(error) => {
                tracing::debug!(function = %f.name, %error, "cannot claim a parked call");
                break;
            }
        }
    }
    let acks = join_all(sent.into_iter().map(std::future::IntoFuture::into_future)).await;
    let (mut moved, mut taken) = (0, false);
    // Each call in the lane leaves its key's subject: (its sequence, whether another replica
    // claimed it first). Those before the first JetStream did not take are the key's oldest.
    let (mut oldest, mut rest, mut broken) = (Vec::with_capacity(acks.len()), Vec::new(), false);
    for (call, ack) in calls.iter().zip(acks) {
        match ack {
            Ok(ack) => {
                if ack.duplicate {
                    taken = true;
                } else {
                    moved += 1;
                }
                let run = if broken { &mut rest } else { &mut oldest };
                run.push((call.sequence, ack.duplicate));
            }
            Err(error) => {
                broken = true;
                tracing::debug!(function = %f.name, %error, "cannot claim a parked call");
            }
        }
    }
    let one = |&(sequence, duplicate): &(u64, bool)| (Removal::One(sequence), duplicate);
    let mut removals: Vec<(Removal, bool)> = match oldest.last() {
        // One purge below the last of them removes them all, where a delete each costs
        // nats-server an API request per call.
        Some(&(last, _)) if oldest.len() >= PURGE_FROM => {
            vec![(Removal::Through(last), oldest.iter().all(|&(_, d)| d))]
        }
        _ => oldest.iter().map(one).collect(),
    };
    removals.extend(rest.iter().map(one));
    join_all(
        removals
            .into_iter()
            .map(|(removal, taken)| remove_claimed(shared, f, parked, removal, taken)),
    )
    .await;
    for _ in moved..calls.len() {
        f.lanes.ahead.done(token);
    }
    match (moved, taken) {
        (0, true) => Claimed::Taken,
        (0, false) => Claimed::Failed,
        (k, _) => Claimed::Moved(k),
    }
}

/// What leaves a key's subject once claimed.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// The call at this sequence: one delete.
    One(u64),
    /// The key's oldest calls, up to and including this sequence: one purge.
    Through(u64),
}

/// Removes claimed calls from their key's subject `parked`, trying twice. A call left there is
/// claimed again at its key's next turn: de-duplicated within the wait stream's duplicate window,
/// run twice after it, hence the warning. Calls another replica claimed first (`taken`) may be
/// gone already.
async fn remove_claimed(
    shared: &Shared,
    f: &FunctionRt,
    parked: &str,
    removal: Removal,
    taken: bool,
) {
    let stream = subjects::wait_stream(f.shard);
    let mut failure = None;
    for _ in 0..2 {
        let removed = match removal {
            Removal::One(sequence) => keys::delete_message(shared, &stream, sequence).await,
            Removal::Through(last) => keys::purge_below(shared, &stream, parked, last + 1).await,
        };
        match removed {
            Ok(()) => return,
            Err(error) => failure = Some(error),
        }
    }
    if let Some(error) = failure.filter(|_| !taken) {
        tracing::warn!(function = %f.name, %error, ?removal, "claimed calls stay parked; their next claim is de-duplicated within the duplicate window");
    }
}
