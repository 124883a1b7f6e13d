//! Fairness keys of a function on this replica: which keys have calls parked, in the order their
//! turns come (a ring per priority lane), and the key slots of `key_concurrency`.
//!
//! A waiting call of a function whose calls carry keys is parked under its key
//! (`subjects::park_subject`); the wait loop claims the oldest call of the next keys in the ring
//! into the lane, one per key per round, and pulls the lane as before (`pull/claim.rs`). A ring
//! learns a key when this replica parks a call of it, or discovery finds calls parked under it,
//! and forgets it when a claim finds nothing there. Every step costs the same whatever the number
//! of keys: a round visits only the keys it takes (and the full ones it skips, a bounded number).
//!
//! Under `key_concurrency = N` a key has N slots, subjects of `FLOTILLA_KEY_SLOTS` holding at most
//! one message. A claim takes a free slot first, by a publish that expects the subject empty
//! (exact across replicas: JetStream orders the publishes), and the claimed call carries the slot
//! in `Flotilla-Key-Slot`; whoever runs the call renews it as the call starts (a publish that
//! expects the slot to hold the call's message still, with a fresh time to live) and frees it when
//! the call ends, by deleting the message. The time to live frees a slot whose holder died; a call
//! whose slot is gone by the time it starts is parked again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use flotilla_queue::headers::FLOTILLA_KEY_SLOT;
use flotilla_queue::{FunctionName, Priority, subjects};
use tokio::time::Instant;

use crate::Shared;

/// How long a key found at its `key_concurrency` is passed over, unless this replica frees one
/// of its slots first. Slots freed by other replicas are seen at the next try.
pub(crate) const FULL_FOR: Duration = Duration::from_millis(100);

/// How far behind the stream's leader a read of a parked subject may be: a key parked this
/// shortly before a claim found it empty stays in the ring.
const READ_LAG: Duration = Duration::from_millis(100);

/// Full keys a round may pass over beyond the keys it takes, so a ring of thousands of full keys
/// costs a round no more than this.
const SKIP_AT_MOST: usize = 64;

/// The keys of one function with calls parked, per priority lane.
#[derive(Debug, Default)]
pub(crate) struct KeyRings {
    rings: Mutex<[Ring; 3]>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Keys (their subject tokens) in the order their turns come.
    order: VecDeque<String>,
    /// Each key in the ring, and when a call of it was last parked.
    members: HashMap<String, Instant>,
    /// Keys at their `key_concurrency`, passed over until then.
    full: HashMap<String, Instant>,
}

impl KeyRings {
    fn rings(&self) -> std::sync::MutexGuard<'_, [Ring; 3]> {
        self.rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls of `token` are parked in lane `p`: the key takes its turn from now on (at the back
    /// of the ring when it is new).
    pub fn park(&self, p: Priority, token: &str) {
        let now = Instant::now();
        let mut rings = self.rings();
        let ring = &mut rings[p.index()];
        if ring.members.insert(token.to_owned(), now).is_none() {
            ring.order.push_back(token.to_owned());
        }
    }

    /// The next keys of lane `p` whose turn it is, at most `n`, each moved to the back of the
    /// ring: one round. Full keys are passed over (and moved back too).
    pub fn round(&self, p: Priority, n: usize, now: Instant) -> Vec<String> {
        let mut rings = self.rings();
        let ring = &mut rings[p.index()];
        let mut taken = Vec::with_capacity(n.min(ring.order.len()));
        let mut visits = ring.order.len().min(n + SKIP_AT_MOST);
        while taken.len() < n && visits > 0 {
            visits -= 1;
            let Some(token) = ring.order.pop_front() else {
                break;
            };
            let full = match ring.full.get(&token) {
                Some(&until) if now < until => true,
                Some(_) => {
                    ring.full.remove(&token);
                    false
                }
                None => false,
            };
            if !full {
                taken.push(token.clone());
            }
            ring.order.push_back(token);
        }
        taken
    }

    /// A claim that began reading at `read_at` found no call of `token` in lane `p`: the key
    /// leaves the ring until it has calls parked again, unless a call of it was parked since
    /// shortly before the read (which may have missed it: a move landing meanwhile, or a read
    /// served by a replica of the stream a moment behind).
    pub fn forget(&self, p: Priority, token: &str, read_at: Instant) {
        let mut rings = self.rings();
        let ring = &mut rings[p.index()];
        let parked_lately = ring
            .members
            .get(token)
            .is_some_and(|&at| at + READ_LAG >= read_at);
        if !parked_lately && ring.members.remove(token).is_some() {
            ring.order.retain(|t| t != token);
            ring.full.remove(token);
        }
    }

    /// `token` is at its `key_concurrency`: passed over in lane `p` until `until`.
    pub fn full(&self, p: Priority, token: &str, until: Instant) {
        self.rings()[p.index()].full.insert(token.to_owned(), until);
    }

    /// This replica freed a slot of `token`: its calls take their turns again at once.
    pub fn freed(&self, token: &str) {
        for ring in self.rings().iter_mut() {
            ring.full.remove(token);
        }
    }

    /// Whether lane `p` has a key whose turn may come now.
    pub fn waiting(&self, p: Priority, now: Instant) -> bool {
        let rings = self.rings();
        let ring = &rings[p.index()];
        ring.order.len() > ring.full.len() || ring.full.values().any(|&until| until <= now)
    }

    /// Whether calls of `token` are parked in lane `p`, as far as this replica knows.
    pub fn has(&self, p: Priority, token: &str) -> bool {
        self.rings()[p.index()].members.contains_key(token)
    }

    /// Keys with calls parked, in every lane.
    pub fn parked(&self) -> usize {
        self.rings().iter().map(|r| r.order.len()).sum()
    }
}

/// How long a count of [`KeysAhead`] is trusted after its last change: a call claimed here may be
/// started by another replica, and its count would never come down.
const AHEAD_FOR: Duration = Duration::from_secs(30);
/// Keys [`KeysAhead`] holds before it forgets those past [`AHEAD_FOR`].
const AHEAD_PRUNE_AT: usize = 4_096;

/// Calls of each key this replica has put ahead of the key's next call, outside the ring: moves
/// to the key's parked subject on their way, and calls it claimed into a lane that have not
/// started here yet. A key with none of these and no call parked has nothing waiting, and its
/// next call may take a free slot at once, whatever other keys wait (`docs/worker.md`).
#[derive(Debug, Default)]
pub(crate) struct KeysAhead {
    state: Mutex<Ahead>,
}

#[derive(Debug, Default)]
struct Ahead {
    /// Each key's calls ahead, and when the count last grew.
    counts: HashMap<String, (usize, Instant)>,
    /// The size at which stale counts are pruned next.
    prune_at: usize,
}

impl KeysAhead {
    fn state(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `n` more calls of `token` are ahead. A stale count starts again from none.
    pub fn add(&self, token: &str, n: usize, now: Instant) {
        let mut state = self.state();
        if state.counts.len() >= state.prune_at.max(AHEAD_PRUNE_AT) {
            state
                .counts
                .retain(|_, (_, at)| now.duration_since(*at) < AHEAD_FOR);
            state.prune_at = 2 * state.counts.len();
        }
        let entry = state.counts.entry(token.to_owned()).or_insert((0, now));
        let before = if now.duration_since(entry.1) < AHEAD_FOR {
            entry.0
        } else {
            0
        };
        *entry = (before + n, now);
    }

    /// One call of `token` is no longer ahead: parked (the ring knows it now), or started.
    pub fn done(&self, token: &str) {
        let mut state = self.state();
        if let Some(entry) = state.counts.get_mut(token) {
            if entry.0 <= 1 {
                state.counts.remove(token);
            } else {
                entry.0 -= 1;
            }
        }
    }

    /// Whether calls of `token` are ahead now.
    pub fn any(&self, token: &str, now: Instant) -> bool {
        self.state()
            .counts
            .get(token)
            .is_some_and(|(_, at)| now.duration_since(*at) < AHEAD_FOR)
    }
}

/// A key slot a call holds: its message in `FLOTILLA_KEY_SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySlot {
    pub sequence: u64,
    pub subject: String,
}

impl KeySlot {
    /// The slot a claimed call carries in `Flotilla-Key-Slot`.
    pub fn of_headers(headers: Option<&HeaderMap>) -> Option<Self> {
        let text = headers?.get(FLOTILLA_KEY_SLOT)?.as_str();
        let (sequence, subject) = text.split_once(' ')?;
        Some(Self {
            sequence: sequence.parse().ok()?,
            subject: subject.to_owned(),
        })
    }

    pub fn mark(&self, headers: &mut HeaderMap) {
        headers.insert(
            FLOTILLA_KEY_SLOT,
            format!("{} {}", self.sequence, self.subject).as_str(),
        );
    }

    /// The key token the slot's subject names.
    pub fn token(&self) -> Option<&str> {
        let rest = self
            .subject
            .strip_prefix(subjects::KEY_SLOT_SUBJECT_PREFIX)?
            .strip_prefix('.')?;
        rest.split_once('.').map(|(token, _)| token)
    }
}

/// Why a key slot could not be taken or checked (NATS trouble, not a full key).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeySlotError {
    #[error("taking a key slot: {0}")]
    Take(#[source] async_nats::jetstream::context::PublishError),
    #[error("renewing a key slot: {0}")]
    Renew(#[source] async_nats::jetstream::context::PublishError),
}

/// How long a slot outlives a holder that died: the call's longest attempt, the redelivery of
/// its message, and a margin.
fn slot_ttl(shared: &Shared, timeout: Duration) -> String {
    let ttl = timeout + shared.settings.ack_wait + Duration::from_secs(60);
    format!("{}s", ttl.as_secs())
}

/// Takes a free slot of key `token` of `function` (one of `slots`), or `None` when every slot is
/// held. Costs one publish per held slot tried.
pub(crate) async fn take(
    shared: &Shared,
    function: &FunctionName,
    token: &str,
    slots: u32,
    timeout: Duration,
) -> Result<Option<KeySlot>, KeySlotError> {
    for slot in 0..slots {
        let subject = subjects::key_slot_subject(function, token, slot);
        if let Some(taken) = hold(shared, subject, 0, timeout)
            .await
            .map_err(KeySlotError::Take)?
        {
            return Ok(Some(taken));
        }
    }
    Ok(None)
}

/// Renews `slot` with a fresh time to live, as its call starts: a publish that expects the slot
/// to hold the call's own message still. The renewed slot, or `None` when the slot is gone or
/// another call holds it now.
pub(crate) async fn renew(
    shared: &Shared,
    slot: &KeySlot,
    timeout: Duration,
) -> Result<Option<KeySlot>, KeySlotError> {
    hold(shared, slot.subject.clone(), slot.sequence, timeout)
        .await
        .map_err(KeySlotError::Renew)
}

/// Publishes to slot `subject` if its last message is `expected` (0: none), with a time to live;
/// `None` when it is not.
async fn hold(
    shared: &Shared,
    subject: String,
    expected: u64,
    timeout: Duration,
) -> Result<Option<KeySlot>, async_nats::jetstream::context::PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    headers.insert(
        async_nats::header::NATS_MESSAGE_TTL,
        slot_ttl(shared, timeout).as_str(),
    );
    let published = async {
        shared
            .nats
            .js
            .publish_with_headers(subject.clone(), headers, bytes::Bytes::new())
            .await?
            .await
    };
    match published.await {
        Ok(ack) => Ok(Some(KeySlot {
            sequence: ack.sequence,
            subject,
        })),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
        Err(e) => Err(e),
    }
}

/// Frees a slot a call held. A slot already gone (its time to live ran out) is not an error.
pub(crate) async fn release(shared: &Shared, slot: &KeySlot) {
    if let Err(error) = delete_message(shared, subjects::KEY_SLOT_STREAM, slot.sequence).await {
        tracing::debug!(%error, subject = %slot.subject, "key slot not freed (already gone?)");
    }
}

/// Deletes message `sequence` of `stream` without overwriting its bytes (`no_erase`): what is
/// deleted here (a claimed call, which lives on in its lane; an empty slot) hides nothing, and
/// the erase the API does by default costs nats-server a write (tens of milliseconds under load).
/// A message already gone is an error, which callers may ignore.
pub(crate) async fn delete_message(
    shared: &Shared,
    stream: &str,
    sequence: u64,
) -> Result<(), DeleteError> {
    let request = serde_json::json!({ "seq": sequence, "no_erase": true });
    remove(shared, format!("STREAM.MSG.DELETE.{stream}"), &request).await
}

/// Purges the messages of `subject` in `stream` below sequence `below`.
pub(crate) async fn purge_below(
    shared: &Shared,
    stream: &str,
    subject: &str,
    below: u64,
) -> Result<(), DeleteError> {
    let request = serde_json::json!({ "filter": subject, "seq": below });
    remove(shared, format!("STREAM.PURGE.{stream}"), &request).await
}

/// One JetStream API request that removes messages.
async fn remove(
    shared: &Shared,
    api: String,
    request: &serde_json::Value,
) -> Result<(), DeleteError> {
    let answer: async_nats::jetstream::response::Response<serde_json::Value> =
        shared.nats.js.request(api, request).await?;
    match answer {
        async_nats::jetstream::response::Response::Ok(_) => Ok(()),
        async_nats::jetstream::response::Response::Err { error } => {
            Err(DeleteError::Refused(error))
        }
    }
}

/// Why messages were not deleted or purged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeleteError {
    #[error("removing messages: {0}")]
    Request(#[from] async_nats::jetstream::context::RequestError),
    #[error("JetStream refused to remove messages: {0}")]
    Refused(async_nats::jetstream::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{High, Normal};

    fn tokens(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rounds_take_each_key_in_turn() {
        let r = KeyRings::default();
        let now = Instant::now();
        for t in ["a", "b", "c", "a"] {
            r.park(Normal, t);
        }
        assert_eq!(r.round(Normal, 2, now), tokens(&["a", "b"]));
        assert_eq!(r.round(Normal, 2, now), tokens(&["c", "a"]));
        assert_eq!(
            r.round(Normal, 5, now),
            tokens(&["b", "c", "a"]),
            "each key once a round"
        );
        assert!(r.round(High, 5, now).is_empty(), "lanes are apart");
        r.forget(Normal, "b", Instant::now());
        assert_eq!(
            r.parked(),
            3,
            "b was parked a moment ago: the read may have missed it"
        );
        r.forget(
            Normal,
            "b",
            Instant::now() + READ_LAG + Duration::from_millis(1),
        );
        assert_eq!(r.round(Normal, 5, now), tokens(&["c", "a"]));
        r.park(Normal, "b");
        assert_eq!(
            r.round(Normal, 5, now),
            tokens(&["c", "a", "b"]),
            "back of the ring"
        );
        assert_eq!(r.parked(), 3);
    }

    #[test]
    fn full_keys_are_passed_over_until_freed_or_due() {
        let r = KeyRings::default();
        let now = Instant::now();
        for t in ["a", "b"] {
            r.park(Normal, t);
        }
        r.full(Normal, "a", now + FULL_FOR);
        assert!(r.waiting(Normal, now));
        assert_eq!(r.round(Normal, 2, now), tokens(&["b"]));
        r.full(Normal, "b", now + FULL_FOR);
        assert!(!r.waiting(Normal, now), "every key full");
        assert!(r.round(Normal, 2, now).is_empty());
        assert!(r.waiting(Normal, now + FULL_FOR), "due again");
        r.freed("a");
        assert!(r.waiting(Normal, now));
        assert_eq!(r.round(Normal, 2, now), tokens(&["a"]));
        assert_eq!(r.round(Normal, 2, now + FULL_FOR), tokens(&["a", "b"]));
    }

    #[test]
    fn a_round_visits_a_bounded_number_of_keys() {
        let r = KeyRings::default();
        let now = Instant::now();
        for i in 0..10_000 {
            let t = i.to_string();
            r.park(Normal, &t);
            r.full(Normal, &t, now + FULL_FOR);
        }
        r.park(Normal, "open");
        // The open key is at the back: a round passes over at most SKIP_AT_MOST full ones.
        assert!(r.round(Normal, 1, now).is_empty());
        assert_eq!(r.parked(), 10_001);
    }

    #[test]
    fn calls_ahead_count_until_done_and_are_forgotten_after_a_while() {
        let ahead = KeysAhead::default();
        let now = Instant::now();
        assert!(!ahead.any("a", now));
        ahead.add("a", 2, now);
        assert!(ahead.any("a", now) && !ahead.any("b", now));
        ahead.done("a");
        assert!(ahead.any("a", now), "one left");
        ahead.done("a");
        assert!(!ahead.any("a", now));
        ahead.done("a");
        assert!(
            !ahead.any("a", now),
            "a start it did not count changes nothing"
        );
        // A call another replica started never comes down here: it is trusted for a while only,
        // and a stale count starts again from none.
        ahead.add("b", 1, now);
        assert!(!ahead.any("b", now + AHEAD_FOR));
        ahead.add("b", 1, now + AHEAD_FOR);
        ahead.done("b");
        assert!(
            !ahead.any("b", now + AHEAD_FOR),
            "the stale call no longer counts"
        );
        for i in 0..AHEAD_PRUNE_AT {
            ahead.add(&i.to_string(), 1, now);
        }
        ahead.add("c", 1, now + AHEAD_FOR);
        assert_eq!(
            ahead.state().counts.len(),
            1,
            "the stale ones were forgotten"
        );
    }

    #[test]
    fn a_slot_travels_in_its_header_and_names_its_key() {
        let slot = KeySlot {
            sequence: 42,
            subject: subjects::key_slot_subject(&FunctionName::parse("fn.ns").unwrap(), "6b", 1),
        };
        let mut h = HeaderMap::new();
        assert_eq!(KeySlot::of_headers(Some(&h)), None);
        slot.mark(&mut h);
        assert_eq!(KeySlot::of_headers(Some(&h)), Some(slot.clone()));
        assert_eq!(slot.token(), Some("6b"));
    }
}
