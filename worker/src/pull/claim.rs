//! Claims parked calls into a lane, round-robin across keys: for each free slot the wait loop is
//! about to ask the lane for, the oldest call of the next key in the ring (`keys.rs`) is read with
//! a direct get, published to the lane de-duplicated on its parked sequence, and deleted from its
//! key's subject. Under `key_concurrency` the claim first takes one of the key's slots, and the
//! claimed call carries it.
//!
//! Invariant: a parked call is deleted only once JetStream holds its copy in the lane, and the
//! copy's `Nats-Msg-Id` derives from the parked message, so two replicas claiming the same call,
//! or a claim repeated after a crash, put it in the lane once (within the duplicate window).

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use flotilla_queue::fairness::NO_KEY_TOKEN;
use flotilla_queue::headers::NATS_MESSAGE_ID;
use flotilla_queue::{Priority, subjects};
use futures_util::future::join_all;
use tokio::time::Instant;

use crate::functions::FunctionRt;
use crate::keys::{self, FULL_FOR, KeySlot};
use crate::{Shared, dead, retry};

/// Rounds one claim may take when keys turn out empty or already claimed; what is left waits for
/// the loop's next turn.
const ROUNDS: usize = 8;

/// What a claim of one key's oldest call came to.
enum Claimed {
    /// Its call is in the lane now.
    One,
    /// No call of the key is parked (any more): it leaves the ring.
    Empty,
    /// The key is at its `key_concurrency`.
    Full,
    /// Another replica claimed that call first: the key may have more.
    Taken,
    /// NATS trouble; logged. The key keeps its place.
    Failed,
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
        let results = join_all(
            tokens
                .iter()
                .map(|token| claim_one(shared, f, &stream, lane, token)),
        )
        .await;
        let (mut retry_round, mut failed) = (false, false);
        for (token, result) in tokens.iter().zip(results) {
            match result {
                Claimed::One => claimed += 1,
                Claimed::Empty => f.lanes.keys.forget(lane, token),
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

/// Claims the oldest parked call of the key whose token is `token`.
async fn claim_one(
    shared: &Shared,
    f: &FunctionRt,
    stream: &Stream<()>,
    lane: Priority,
    token: &str,
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
    let claimed = move_parked(shared, f, stream, lane, token, slot.as_ref()).await;
    if !matches!(claimed, Claimed::One)
        && let Some(slot) = &slot
    {
        keys::release(shared, slot).await;
    }
    claimed
}

/// Moves the key's oldest parked call into the lane, carrying `slot`.
async fn move_parked(
    shared: &Shared,
    f: &FunctionRt,
    stream: &Stream<()>,
    lane: Priority,
    token: &str,
    slot: Option<&KeySlot>,
) -> Claimed {
    let parked = subjects::park_subject(f.shard, &f.name, lane, token);
    let m = match stream.direct_get_first_for_subject(parked).await {
        Ok(m) => m,
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Claimed::Empty,
        Err(error) => {
            tracing::debug!(function = %f.name, %error, "cannot read a parked call");
            return Claimed::Failed;
        }
    };
    let mut headers = dead::copied_headers(Some(&m.headers));
    headers.insert(
        NATS_MESSAGE_ID,
        retry::dedup_id("claim", &subjects::wait_stream(f.shard), m.sequence).as_str(),
    );
    if let Some(slot) = slot {
        slot.mark(&mut headers);
    }
    let subject = subjects::wait_lane_subject(f.shard, &f.name, lane);
    let published = async {
        shared
            .nats
            .js
            .publish_with_headers(subject, headers, m.payload)
            .await?
            .await
    };
    let ack = match published.await {
        Ok(ack) => ack,
        Err(error) => {
            tracing::debug!(function = %f.name, %error, "cannot claim a parked call");
            return Claimed::Failed;
        }
    };
    delete_claimed(shared, f, m.sequence, ack.duplicate).await;
    if ack.duplicate {
        Claimed::Taken
    } else {
        Claimed::One
    }
}

/// Deletes a claimed call from its key's subject, trying twice. A call left there is claimed
/// again at its key's next turn: de-duplicated within the wait stream's duplicate window, run
/// twice after it, hence the warning. A call another replica claimed first (`taken`) may be gone
/// already.
async fn delete_claimed(shared: &Shared, f: &FunctionRt, sequence: u64, taken: bool) {
    let stream = subjects::wait_stream(f.shard);
    let mut last = None;
    for _ in 0..2 {
        match keys::delete_message(shared, &stream, sequence).await {
            Ok(()) => return,
            Err(error) => last = Some(error),
        }
    }
    if let Some(error) = last.filter(|_| !taken) {
        tracing::warn!(function = %f.name, %error, sequence, "a claimed call stays parked; its next claim is de-duplicated within the duplicate window");
    }
}
