//! Status pages: the records of calls whose id tells where to look, many to a message.
//!
//! A gateway numbers the calls it accepts (`CallIds`): a call id is a UUID (version 8) holding
//! the gateway process's random instance number, the call's number in that process and 50 random
//! bits. Calls 64 at a time share a *page*, two subjects of `FLOTILLA_STATUS_PAGES`:
//!
//! - `flotilla.page.<instance>.<page>.r`: records. The gateway's `queued` record when it accepts
//!   a call; the workers' `running`, `retrying`, `queued` again and final records. Each message
//!   holds many records (one JSON line each): what the writer had for that page at that moment.
//! - `flotilla.page.<instance>.<page>.c`: cancels.
//!
//! `GET` reads the page's few messages and picks the call's record ([`resolve`]). (What this saves:
//! `docs/call-status.md`.)
//!
//! **A cancel and a call's end cannot both win**, as with one record per call. The stream's order
//! decides: a worker's records are stored only if the page's cancels are those it knows
//! (expected last sequence of `.c`, through `Nats-Expected-Last-Subject-Sequence-Subject`), so
//! none lands after a cancel unseen; a worker whose compare fails reads the cancels and drops the
//! cancelled call's record (and its callback). The gateway appends a cancel, then reads the page
//! from the stream leader up to it: when the call's end came first, the cancel lost (409 with
//! that end) and [`resolve`] keeps showing the end, the first final record.
//!
//! The layout follows the id's shape alone, so every reader and writer agrees: any UUID version 8
//! is read as a page. An id derived from an `Idempotency-Key` is one too (its bits a hash of the
//! key), so it gets a page of its own; the gateway then records its acceptance only once JetStream
//! took the call as new, so a retried POST records no second one. Other ids (a client's own, the
//! UUID v4 ids of earlier releases) keep one record per call in `FLOTILLA_STATUS` (`Store` picks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::keyed::publish_compared;
use super::record::{CallState, Record, StoreError, Stored};

pub const PAGE_STREAM: &str = "FLOTILLA_STATUS_PAGES";
pub const PAGE_SUBJECT_PREFIX: &str = "flotilla.page";

/// Calls to a page: a power of two.
pub const PAGE_CALLS: u64 = 64;
const PAGE_SHIFT: u32 = PAGE_CALLS.trailing_zeros();

/// The bits of a call's number in its gateway process (about 10^12 calls).
const COUNTER_BITS: u32 = 40;
/// Random bits of a numbered call id: what makes it unguessable.
const RANDOM_BITS: u32 = 50;

/// Records of one message at most (about 250 bytes each, far below NATS's 1 MiB).
const MAX_GROUP: usize = 256;
/// Records taken from the queue for one round of messages.
const MAX_ROUND: usize = 4_096;
/// Rounds of messages in flight at once; while all are, records wait and the next round groups
/// more of them.
const FLIGHTS: usize = 4;
/// Compare-and-set attempts before a write gives up on a page that keeps changing.
const MAX_TRIES: u32 = 8;
/// Messages read from one page at most: a page of 64 calls holds far fewer (a few a call). A page
/// past it is an error, never a partial answer.
const MAX_PAGE_MESSAGES: usize = 65_536;
/// Pages whose last cancel a writer remembers; past it, it forgets them all (and learns again
/// from a failed compare).
const MAX_REMEMBERED: usize = 16_384;
/// How long a writer trusts what it read of a page's cancels; then it compares against none, and
/// a failed compare reads them again.
const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a numbered call's records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Page {
    pub instance: u32,
    pub number: u64,
}

impl Page {
    /// Records: `queued`, `running`, `retrying`, the end.
    pub fn records(&self) -> String {
        format!("{}.r", self.base())
    }

    pub fn cancels(&self) -> String {
        format!("{}.c", self.base())
    }

    /// Both of the page's subjects.
    pub fn all(&self) -> String {
        format!("{}.*", self.base())
    }

    fn base(&self) -> String {
        format!(
            "{PAGE_SUBJECT_PREFIX}.{:08x}.{:x}",
            self.instance, self.number
        )
    }
}

/// The page of a numbered call id; `None` for any other id (a client's, a derived one, an
/// earlier release's UUID v4).
pub fn page_of(call_id: &str) -> Option<Page> {
    let uuid = uuid::Uuid::try_parse(call_id).ok()?;
    let v = uuid.as_u128();
    if (v >> 76) & 0xf != 8 || (v >> 62) & 0b11 != 0b10 {
        return None;
    }
    let instance = (v >> 96) as u32;
    let high = ((v >> 80) & 0xffff) as u64;
    let middle = ((v >> 64) & 0xfff) as u64;
    let low = ((v >> RANDOM_BITS) & 0xfff) as u64;
    let counter = (high << 24) | (middle << 12) | low;
    Some(Page {
        instance,
        number: counter >> PAGE_SHIFT,
    })
}

/// Numbers the calls one gateway process accepts.
#[derive(Debug)]
pub struct CallIds {
    instance: u32,
    next: AtomicU64,
}

impl Default for CallIds {
    fn default() -> Self {
        Self::new()
    }
}

impl CallIds {
    /// A random instance number: two processes that draw the same one share pages, which costs
    /// reads, never a wrong answer (records carry the whole id).
    pub fn new() -> Self {
        Self {
            instance: fastrand::u32(..),
            next: AtomicU64::new(0),
        }
    }

    /// The next call id: `iiiiiiii-cccc-8ccc-Vccr-rrrrrrrrrrrr` (instance, counter, random).
    pub fn next(&self) -> String {
        let counter = self.next.fetch_add(1, Ordering::Relaxed) & ((1 << COUNTER_BITS) - 1);
        let random =
            u128::from_be_bytes(crate::envelope::random_bytes()) & ((1 << RANDOM_BITS) - 1);
        let v = (u128::from(self.instance) << 96)
            | (u128::from(counter >> 24) << 80)
            | (8 << 76)
            | (u128::from((counter >> 12) & 0xfff) << 64)
            | (0b10 << 62)
            | (u128::from(counter & 0xfff) << RANDOM_BITS)
            | random;
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::from_u128(v)
            .hyphenated()
            .encode_lower(&mut text)
            .to_owned()
    }
}

/// One record read from a page, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The sequence of the message holding it.
    pub seq: u64,
    pub record: Record,
}

impl Entry {
    /// The record, with the sequence of its message as its revision.
    pub fn stored(&self) -> Stored {
        Stored {
            record: self.record.clone(),
            revision: self.seq,
        }
    }
}

/// A page as read: its records in stream order, and the last sequence of each subject.
#[derive(Debug, Default)]
pub struct PageRead {
    pub entries: Vec<Entry>,
    pub last_record: u64,
    pub last_cancel: u64,
}

/// The record that says where `call_id` is: of the latest call with that id, and of its latest
/// round (a `queued` after an end starts another: a dead letter replayed), the first final record
/// (a cancel and an end never both land; a call run twice keeps its first end), else the most
/// recent change (a worker's over the gateway's `queued`, written at acceptance).
pub fn resolve<'a>(entries: &'a [Entry], call_id: &str) -> Option<&'a Entry> {
    let latest = entries
        .iter()
        .filter(|e| e.record.call_id == call_id)
        .map(|e| e.record.accepted_at)
        .max()?;
    let mine: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.record.call_id == call_id && e.record.accepted_at == latest)
        .collect();
    let mut from = 0;
    let mut ended = false;
    for (i, e) in mine.iter().enumerate() {
        if e.record.state.is_final() {
            ended = true;
        } else if ended && e.record.state == CallState::Queued && !is_acceptance(&e.record) {
            from = i;
            ended = false;
        }
    }
    let round = &mine[from..];
    if let Some(end) = round.iter().find(|e| e.record.state.is_final()) {
        return Some(end);
    }
    round
        .iter()
        .copied()
        .max_by_key(|e| (!is_acceptance(&e.record), e.record.updated_at, e.seq))
}

/// The gateway's record of a call's acceptance, which may land after the worker's records of
/// the same call (it is written while the call is published): it never outranks them and never
/// starts a round.
fn is_acceptance(r: &Record) -> bool {
    r.state == CallState::Queued && r.updated_at == r.accepted_at
}

/// Records of one message's payload: one JSON line each; a line that does not parse is skipped.
fn records_of(payload: &[u8]) -> impl Iterator<Item = Record> + '_ {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| Record::from_json(line).ok())
}

/// Reads a page: through direct gets, which any replica answers, or, with `leader`, through the
/// stream leader (after a compare failed, so the next one starts from the latest).
pub async fn read(
    stream: &jetstream::stream::Stream<()>,
    page: &Page,
    subject: String,
    leader: bool,
) -> Result<PageRead, StoreError> {
    let mut read = PageRead::default();
    let mut from = 1;
    let cancels = page.cancels();
    for _ in 0..MAX_PAGE_MESSAGES {
        let Some(msg) = next_message(stream, &subject, from, leader).await? else {
            return Ok(read);
        };
        if msg.subject.as_str() == cancels {
            read.last_cancel = msg.sequence;
        } else {
            read.last_record = msg.sequence;
        }
        read.entries
            .extend(records_of(&msg.payload).map(|record| Entry {
                seq: msg.sequence,
                record,
            }));
        from = msg.sequence + 1;
    }
    Err(StoreError::PageOverflow {
        subject,
        messages: MAX_PAGE_MESSAGES,
    })
}

/// The first message on `subject` at or after sequence `from`, if any, from any replica or from
/// the `leader`.
async fn next_message(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
    from: u64,
    leader: bool,
) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
    use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind};
    if leader {
        let got = stream
            .raw_message_builder()
            .next_by_subject(subject.to_owned())
            .sequence(from)
            .send()
            .await;
        return match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(StoreError::PageLeader(e)),
        };
    }
    let got = stream
        .direct_get_builder()
        .next_by_subject(subject.to_owned())
        .sequence(from)
        .send()
        .await;
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Read(e)),
    }
}

/// What became of a record handed to the [`Writer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored,
    /// A client cancelled the call first: the record was not stored.
    Cancelled,
}

/// Whether a record yields to a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    /// The gateway's `queued` at acceptance: no cancel can precede it.
    None,
    /// A worker's: not stored once a cancel of the call is in the page.
    Cancels,
}

/// What a [`Writer`] does once a record's fate is known.
pub type Then = Box<
    dyn FnOnce(Result<Written, StoreError>) -> futures_util::future::BoxFuture<'static, ()> + Send,
>;

/// Who learns a record's fate: a caller waiting for it, or work handed over with the record.
enum Reply {
    Wait(oneshot::Sender<Result<Written, StoreError>>),
    Then(Then),
}

/// A record on its way: already a JSON line (made by the caller's task, not the writer's), and
/// the call it belongs to, which a cancel names.
struct Pending {
    page: Page,
    line: Vec<u8>,
    call_id: String,
    accepted_at: u128,
    guard: Guard,
    reply: Reply,
}

/// Groups the records of a process into page messages: each caller awaits its own record's fate;
/// what arrives while earlier messages are in flight goes together in the next round.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("page", &self.page)
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer's task, which ends when the last handle is dropped.
    pub fn start(js: jetstream::Context, stream: jetstream::stream::Stream<()>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(js, stream, rx));
        Self { tx }
    }

    /// Stores `record` in `page`, grouped with whatever else is being written.
    pub async fn write(
        &self,
        page: Page,
        record: &Record,
        guard: Guard,
    ) -> Result<Written, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(page, Line::of(record), guard, Reply::Wait(done))
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Hands a record (made into its `line`) over with what to do once its fate is known (`then`,
    /// started on the writer's task once the record's message is answered, and moved to a task of
    /// its own if it cannot finish at once): the caller goes on at once. Waking a caller for each
    /// record cost a busy replica more than the write itself (`docs/call-status.md`).
    pub fn write_then(&self, page: Page, line: Line, guard: Guard, then: Then) {
        if let Err(mpsc::error::SendError(gone)) = self.send(page, line, guard, Reply::Then(then)) {
            // The writer's task ends only with the runtime; the call's message then returns.
            tracing::warn!(call_id = %gone.call_id, "status writer gone");
        }
    }

    fn send(
        &self,
        page: Page,
        line: Line,
        guard: Guard,
        reply: Reply,
    ) -> Result<(), mpsc::error::SendError<Pending>> {
        self.tx.send(Pending {
            page,
            line: line.line,
            call_id: line.call_id,
            accepted_at: line.accepted_at,
            guard,
            reply,
        })
    }
}

/// A record made into its line of a page message, with the call it is of (which a cancel names).
#[derive(Debug)]
pub struct Line {
    line: Vec<u8>,
    call_id: String,
    accepted_at: u128,
}

impl Line {
    pub fn of(record: &Record) -> Self {
        let mut line = record.to_json();
        line.push(b'\n');
        Self {
            line,
            call_id: record.call_id.clone(),
            accepted_at: record.accepted_at,
        }
    }
}

/// The cancels of a page as a writer last read them: a record is compared against the last
/// one's sequence, so a call among them must never be written after it.
#[derive(Debug, Clone)]
struct PageCancels {
    /// When they were read; knowledge older than [`KNOWN_FOR`] is read again.
    at: std::time::Instant,
    last: u64,
    /// (call id, accepted at) of each.
    calls: Vec<(String, u128)>,
}

impl Default for PageCancels {
    fn default() -> Self {
        Self {
            at: std::time::Instant::now(),
            last: 0,
            calls: Vec::new(),
        }
    }
}

impl PageCancels {
    fn cancels(&self, call_id: &str, accepted_at: u128) -> bool {
        self.calls
            .iter()
            .any(|(id, at)| id == call_id && *at == accepted_at)
    }
}

/// What each page's cancels are known to be, shared by the rounds in flight.
type Known = Arc<Mutex<HashMap<Page, PageCancels>>>;

async fn run(
    js: jetstream::Context,
    stream: jetstream::stream::Stream<()>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let flights = Arc::new(Semaphore::new(FLIGHTS));
    let known: Known = Arc::default();
    while let Some(first) = rx.recv().await {
        let Ok(permit) = flights.clone().acquire_owned().await else {
            return;
        };
        let mut round = vec![first];
        while round.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(p) => round.push(p),
                Err(_) => break,
            }
        }
        let mut groups: HashMap<(Page, Guard), Vec<Pending>> = HashMap::new();
        for p in round {
            groups.entry((p.page, p.guard)).or_default().push(p);
        }
        let (js, stream, known) = (js.clone(), stream.clone(), known.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let flushes = groups.into_iter().flat_map(|((page, guard), mut items)| {
                let mut chunks = Vec::new();
                while items.len() > MAX_GROUP {
                    let rest = items.split_off(MAX_GROUP);
                    chunks.push(std::mem::replace(&mut items, rest));
                }
                chunks.push(items);
                chunks
                    .into_iter()
                    .map(move |chunk| (page, guard, chunk))
                    .collect::<Vec<_>>()
            });
            futures_util::future::join_all(
                flushes.map(|(page, guard, items)| flush(&js, &stream, &known, page, guard, items)),
            )
            .await;
        });
    }
}

/// Stores one message of `items` in `page`; under [`Guard::Cancels`], drops the records of calls
/// cancelled meanwhile and tries again.
async fn flush(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream<()>,
    known: &Known,
    page: Page,
    guard: Guard,
    mut items: Vec<Pending>,
) {
    for _ in 0..MAX_TRIES {
        // Under a guard, the cancels this writer knows of the page (none at first): their calls
        // are not written, and the rest are compared against the last of them.
        let cancels = match guard {
            Guard::None => None,
            Guard::Cancels => Some(
                known
                    .lock()
                    .ok()
                    .and_then(|k| k.get(&page).cloned())
                    .filter(|c| c.at.elapsed() < KNOWN_FOR)
                    .unwrap_or_default(),
            ),
        };
        if let Some(cancels) = &cancels {
            let (cancelled, rest): (Vec<_>, Vec<_>) = items
                .into_iter()
                .partition(|p| cancels.cancels(&p.call_id, p.accepted_at));
            answer(cancelled, |_| Ok(Written::Cancelled));
            if rest.is_empty() {
                return;
            }
            items = rest;
        }
        let mut payload = Vec::with_capacity(items.iter().map(|p| p.line.len()).sum());
        for p in &items {
            payload.extend_from_slice(&p.line);
        }
        let publish = async {
            match &cancels {
                None => {
                    let publish = async { js.publish(page.records(), payload.into()).await?.await };
                    publish.await.map(|ack| Some(ack.sequence))
                }
                Some(cancels) => {
                    let guard = page.cancels();
                    let records = page.records();
                    publish_compared(js, records, payload.into(), cancels.last, Some(&guard)).await
                }
            }
        };
        // A round whose connection died would wait out the timeout for an answer that cannot
        // come, holding one of the writer's few flights: every caller waits behind it.
        let Some(stored) = while_connected(&js.client(), publish).await else {
            answer(items, |_| Err(StoreError::ConnectionLost));
            return;
        };
        match stored {
            Ok(Some(_)) => {
                answer(items, |_| Ok(Written::Stored));
                return;
            }
            Ok(None) => {
                // Cancels came since: learn them, and go round again.
                let read = match read(stream, &page, page.cancels(), true).await {
                    Ok(read) => read,
                    Err(error) => {
                        let error = Arc::new(error);
                        answer(items, |_| Err(StoreError::Page(error.clone())));
                        return;
                    }
                };
                let learned = PageCancels {
                    at: std::time::Instant::now(),
                    last: read.last_cancel,
                    calls: read
                        .entries
                        .into_iter()
                        .filter(|c| c.record.state == CallState::Cancelled)
                        .map(|c| (c.record.call_id, c.record.accepted_at))
                        .collect(),
                };
                if let Ok(mut k) = known.lock() {
                    if k.len() >= MAX_REMEMBERED {
                        k.clear();
                    }
                    // The leader's answer, even when its last is lower than what was known: a
                    // cancel can leave (the budget, the retention, a cancel that lost).
                    k.insert(page, learned);
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                answer(items, |_| Err(StoreError::Group(error.clone())));
                return;
            }
        }
    }
    answer(items, |p| {
        Err(StoreError::Contended {
            call_id: p.call_id.clone(),
            tries: MAX_TRIES,
        })
    });
}

/// `work`, unless the client's connection to NATS drops or is replaced first (`None`): what was
/// sent on a connection that died is answered on none. Checked every 100 ms.
pub async fn while_connected<F: std::future::Future>(
    client: &async_nats::Client,
    work: F,
) -> Option<F::Output> {
    use std::sync::atomic::Ordering;
    let stats = client.statistics();
    let connects = stats.connects.load(Ordering::Relaxed);
    let lost = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if client.connection_state() != async_nats::connection::State::Connected
                || stats.connects.load(Ordering::Relaxed) != connects
            {
                return;
            }
        }
    };
    tokio::select! {
        out = work => Some(out),
        () = lost => None,
    }
}

/// Tells each of `items`' callers what became of its record (a caller gone is no matter), and
/// starts the work handed over with the others. What finishes at once (an ack handed to the
/// client) is done here; what must wait (a client whose buffer is full while it reconnects) goes
/// on in a task of its own, so the writer's next rounds never wait for it.
fn answer(items: Vec<Pending>, what: impl Fn(&Pending) -> Result<Written, StoreError>) {
    use futures_util::FutureExt;
    for p in items {
        let result = what(&p);
        match p.reply {
            Reply::Wait(done) => {
                let _ = done.send(result);
            }
            Reply::Then(then) => {
                let mut work = then(result);
                if (&mut work).now_or_never().is_none() {
                    tokio::spawn(work);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed_over(call_id: &str, then: Then) -> Pending {
        Pending {
            page: page_of("d2ed7c72-0000-8000-80b9-ad112583c277").unwrap(),
            line: Vec::new(),
            call_id: call_id.to_owned(),
            accepted_at: 1,
            guard: Guard::Cancels,
            reply: Reply::Then(then),
        }
    }

    /// A continuation that cannot finish (an ack into a client's full buffer during a reconnect)
    /// must not hold the writer's round, which would stall every status write behind it.
    #[tokio::test]
    async fn work_handed_over_with_a_record_never_holds_the_writer_back() {
        let (unblock, blocked) = oneshot::channel::<()>();
        let (finished_tx, mut finished) = mpsc::unbounded_channel();
        let (quick_tx, slow_tx) = (finished_tx.clone(), finished_tx);
        let items = vec![
            handed_over(
                "slow",
                Box::new(move |written| {
                    Box::pin(async move {
                        let _ = blocked.await;
                        let _ = slow_tx.send(("slow", written.ok()));
                    })
                }),
            ),
            handed_over(
                "quick",
                Box::new(move |written| {
                    Box::pin(async move {
                        let _ = quick_tx.send(("quick", written.ok()));
                    })
                }),
            ),
        ];
        // Returns with the slow one still waiting; the quick one was done in the same breath.
        answer(items, |_| Ok(Written::Stored));
        assert_eq!(
            finished.try_recv().ok(),
            Some(("quick", Some(Written::Stored)))
        );
        assert!(finished.try_recv().is_err(), "the slow one waits");
        // And the slow one still finishes, on its own task.
        unblock.send(()).unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), finished.recv()).await;
        assert_eq!(done.unwrap(), Some(("slow", Some(Written::Stored))));
    }

    fn rec(id: &str, state: CallState, accepted: u128, updated: u128) -> Record {
        let mut r = Record::queued(id, "echo", accepted, None);
        r.state = state;
        r.updated_at = updated;
        r
    }

    #[test]
    fn numbered_ids_are_uuids_that_name_their_page() {
        let ids = CallIds::new();
        let first: Vec<String> = (0..130).map(|_| ids.next()).collect();
        for (n, id) in first.iter().enumerate() {
            let uuid = uuid::Uuid::try_parse(id).unwrap();
            assert_eq!(uuid.get_version_num(), 8, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            let page = page_of(id).unwrap();
            assert_eq!(page.instance, ids.instance);
            assert_eq!(page.number, n as u64 / PAGE_CALLS, "{id}");
        }
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), first.len());
        // Far counters keep every bit.
        ids.next.store((1 << 40) - 2, Ordering::Relaxed);
        let id = ids.next();
        assert_eq!(
            page_of(&id).unwrap().number,
            ((1u64 << 40) - 2) >> PAGE_SHIFT
        );
        assert_eq!(page_of(&crate::envelope::new_call_id()), None);
        assert_eq!(page_of("my-own-id"), None);
        assert_eq!(
            Page {
                instance: 0xab,
                number: 0x1f
            }
            .records(),
            "flotilla.page.000000ab.1f.r"
        );
    }

    #[test]
    fn the_first_end_wins_else_the_latest_change() {
        let e = |seq, r| Entry { seq, record: r };
        let entries = vec![
            e(1, rec("a", CallState::Queued, 10, 10)),
            e(2, rec("b", CallState::Queued, 10, 10)),
            e(3, rec("a", CallState::Running, 10, 30)),
            e(4, rec("a", CallState::Retrying, 10, 40)),
        ];
        assert_eq!(resolve(&entries, "a").unwrap().seq, 4);
        assert_eq!(resolve(&entries, "b").unwrap().seq, 2);
        assert!(resolve(&entries, "c").is_none());
        // A worker's record that landed before the gateway's `queued` still wins.
        let early = vec![
            e(1, rec("a", CallState::Running, 10, 30)),
            e(2, rec("a", CallState::Queued, 10, 10)),
        ];
        assert_eq!(
            resolve(&early, "a").unwrap().record.state,
            CallState::Running
        );
        // The acceptance landing after the call's end starts no round: the end stands.
        let late = vec![
            e(1, rec("a", CallState::Succeeded, 10, 30)),
            e(2, rec("a", CallState::Queued, 10, 10)),
        ];
        assert_eq!(resolve(&late, "a").unwrap().seq, 1);
        // A worker's clock behind the gateway's: its change still outranks the acceptance.
        let skewed = vec![
            e(1, rec("a", CallState::Queued, 10, 10)),
            e(2, rec("a", CallState::Running, 10, 5)),
        ];
        assert_eq!(resolve(&skewed, "a").unwrap().seq, 2);
        // The first end wins over a later one (a call run twice), and over later changes.
        let mut ended = entries.clone();
        ended.push(e(5, rec("a", CallState::Succeeded, 10, 50)));
        ended.push(e(6, rec("a", CallState::Failed, 10, 60)));
        ended.push(e(7, rec("a", CallState::Running, 10, 70)));
        assert_eq!(resolve(&ended, "a").unwrap().seq, 5);
        // A dead letter replayed: its `queued` starts another round, whose end then counts.
        let mut replayed = vec![
            e(1, rec("a", CallState::Queued, 10, 10)),
            e(2, rec("a", CallState::Dead, 10, 20)),
            e(3, rec("a", CallState::Queued, 10, 30)),
        ];
        assert_eq!(resolve(&replayed, "a").unwrap().seq, 3);
        replayed.push(e(4, rec("a", CallState::Succeeded, 10, 40)));
        assert_eq!(resolve(&replayed, "a").unwrap().seq, 4);
        // A later call reusing the id is the one shown.
        ended.push(e(8, rec("a", CallState::Queued, 99, 99)));
        assert_eq!(resolve(&ended, "a").unwrap().seq, 8);
    }

    #[test]
    fn a_message_holds_a_record_a_line() {
        let mut payload = rec("a", CallState::Queued, 1, 1).to_json();
        payload.extend_from_slice(b"\nnot json\n");
        payload.extend(rec("b", CallState::Running, 1, 2).to_json());
        let ids: Vec<_> = records_of(&payload).map(|r| r.call_id).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
