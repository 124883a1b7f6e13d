//! The worker's side of call status (`flotilla_queue::status`). Nothing on a call's way reads
//! its record: the worker follows the cancel stream, so it knows a cancelled call before it
//! starts it, and writes each state as a compare-and-set on the sequence the call carries
//! (`Flotilla-Status-Rev`, from the gateway or from the write before). It records `running` once
//! an attempt has run a moment, `retrying` when a retry is stored, and the final state before the
//! callback (that one tried again for a while when NATS does not take it, so that status and
//! callback agree). When a client's cancel got in first, the write fails, and the worker neither
//! calls back nor records another state. A cancel heard while the call runs here aborts the function's
//! request. A numbered call's records go to its status page (`flotilla_queue::status::pages`),
//! grouped with the replica's other records, each yielding to a cancel stored first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use flotilla_queue::Envelope;
use flotilla_queue::status::pages::{self, Guard, Page, Written};
use flotilla_queue::status::{
    CANCEL_STREAM, CallState, Cancel, Known, Record, Store, Transition, revision_of,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// How long an attempt runs before `running` is recorded. A call that ends sooner goes from
/// `queued` (or `retrying`) straight to its end, one write instead of two: most calls of a busy
/// fleet take less, and a client polling a call sees it running well before it could act on it.
pub(crate) const RUNNING_AFTER: Duration = Duration::from_millis(100);

/// How long the state an attempt ends with is tried again when NATS does not take it: longer
/// than a stream leader's election, shorter than the call's `ack_wait` (30 s), after which NATS
/// would hand the call to another replica.
pub(crate) const END_RECORD_PATIENCE: Duration = Duration::from_secs(20);

/// Between tries of such a write.
const END_RECORD_BACKOFF: flotilla_queue::Backoff = flotilla_queue::Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(2),
    flotilla_queue::Jitter::None,
);

/// Between attempts to follow the cancel stream again.
const FOLLOW_BACKOFF: flotilla_queue::Backoff = flotilla_queue::Backoff::new(
    Duration::from_millis(250),
    Duration::from_secs(5),
    flotilla_queue::Jitter::None,
);

/// Call ends handed to the status writer and not yet answered, at most; past it, a call ending
/// waits for room. About half a kilobyte each.
const ENDS_ON_THEIR_WAY: usize = 10_000;

/// Cancels remembered at most; past it the oldest are forgotten (their calls, if they still
/// come, are then stopped by the failed write of their end instead of before they start).
const MAX_CANCELS: usize = 1_000_000;

/// The status store, the calls running in this replica and the cancels heard, by call id.
#[derive(Debug)]
pub(crate) struct CallStatus {
    store: Store,
    /// How long cancels are remembered: the status retention.
    retention: Duration,
    running: Mutex<HashMap<String, (u128, CancellationToken)>>,
    cancelled: Mutex<Cancels>,
    /// Fires once every cancel stored when the worker started has been heard.
    caught_up: CancellationToken,
    /// `worker_status_write_failures_total`.
    write_failures: metrics::Counter,
    /// Room for [`ENDS_ON_THEIR_WAY`].
    ending: Arc<tokio::sync::Semaphore>,
    /// `worker_status_ends_waiting`: the room taken.
    ends_waiting: metrics::Gauge,
}

/// Cancels heard, oldest first.
#[derive(Debug, Default)]
struct Cancels {
    by_id: HashMap<String, u128>,
    order: VecDeque<(Instant, String)>,
}

impl Cancels {
    fn insert(&mut self, cancel: Cancel, retention: Duration) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < retention && self.order.len() < MAX_CANCELS {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
        self.order.push_back((now, cancel.call_id.clone()));
        self.by_id.insert(cancel.call_id, cancel.accepted_at);
    }
}

/// What the worker should do with a call it is about to start.
pub(crate) enum Begin<'a> {
    /// A client cancelled it: settle it without running it.
    Cancelled,
    Run(Tracked<'a>),
}

/// What came of recording a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Stored (or NATS refused it and the call goes on regardless; logged and counted).
    Done,
    /// A client cancelled the call first: no callback, no further state.
    Cancelled,
}

impl CallStatus {
    pub(crate) fn new(
        store: Store,
        retention: Duration,
        write_failures: metrics::Counter,
        ends_waiting: metrics::Gauge,
    ) -> Self {
        Self {
            store,
            retention,
            write_failures,
            ends_waiting,
            running: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(Cancels::default()),
            caught_up: CancellationToken::new(),
            ending: Arc::new(tokio::sync::Semaphore::new(ENDS_ON_THEIR_WAY)),
        }
    }

    /// Waits until the cancels stored before the worker started have been heard, so no call
    /// cancelled while queued is started; at most `limit`, after which calls are pulled anyway
    /// (a cancel heard late still stops the call's callback and aborts it if it runs here).
    pub(crate) async fn caught_up(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.caught_up.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(?limit, "cancels not all read yet; pulling calls anyway");
        }
    }

    /// Starts tracking a call about to run, unless a client cancelled it. A call with a record
    /// of its own carries the record's revision in its message's `Flotilla-Status-Rev`
    /// (`headers`); a call on a status page needs none, and its headers are not read.
    pub(crate) fn begin<'a>(
        &'a self,
        env: &'a Envelope,
        headers: Option<&async_nats::HeaderMap>,
    ) -> Begin<'a> {
        if self.heard_cancel(env) {
            return Begin::Cancelled;
        }
        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(env.call_id.clone(), (env.start_time, token.clone()));
        }
        let paged = pages::page_of(&env.call_id).map(|page| {
            let mut base = Record::queued(
                &env.call_id,
                env.function.as_str(),
                env.start_time,
                env.batch_id.as_deref(),
            )
            .with_priority(env.priority)
            .with_key(env.fairness_key.as_ref());
            base.attempts = env.attempt;
            (page, Box::new(base))
        });
        let known = match paged {
            Some(_) => Known::Unknown,
            None => revision_of(headers).map_or(Known::Unknown, Known::Revision),
        };
        Begin::Run(Tracked {
            status: self,
            env,
            known,
            paged,
            token,
        })
    }

    /// Whether a client's cancel of this very call (not an earlier one with its id) was heard.
    fn heard_cancel(&self, env: &Envelope) -> bool {
        self.heard_cancel_of(&env.call_id, env.start_time)
    }

    fn heard_cancel_of(&self, call_id: &str, accepted_at: u128) -> bool {
        let heard = self
            .cancelled
            .lock()
            .ok()
            .and_then(|c| c.by_id.get(call_id).copied());
        heard == Some(accepted_at)
    }

    /// A state NATS did not take: the call goes on, unless this replica heard that a client
    /// cancelled it (the write may have failed on that very cancel).
    fn not_recorded(&self, call: &CallRef, error: &flotilla_queue::status::StoreError) -> Recorded {
        self.write_failures.increment(1);
        let CallRef {
            id,
            accepted_at,
            function,
        } = call;
        if self.heard_cancel_of(id, *accepted_at) {
            tracing::warn!(%error, call_id = %id, %function, "call status not recorded, and the call was cancelled: it ends here");
            return Recorded::Cancelled;
        }
        tracing::warn!(%error, call_id = %id, %function, "call status not recorded; the call goes on");
        Recorded::Done
    }

    /// Remembers a cancel and aborts its call if it runs here.
    fn heard(&self, cancel: Cancel) {
        let token = self.running.lock().ok().and_then(|running| {
            running
                .get(&cancel.call_id)
                .filter(|(accepted_at, _)| *accepted_at == cancel.accepted_at)
                .map(|(_, token)| token.clone())
        });
        if let Some(token) = token {
            tracing::debug!(call_id = %cancel.call_id, "cancelled while running; aborting its request");
            token.cancel();
        }
        if let Ok(mut cancelled) = self.cancelled.lock() {
            cancelled.insert(cancel, self.retention);
        }
    }

    /// Follows the cancel stream from its start until `stop`, remembering every cancel and
    /// aborting the calls that run here. Followed again after an error.
    pub(crate) async fn follow(self: Arc<Self>, js: jetstream::Context, stop: CancellationToken) {
        let mut delays = FOLLOW_BACKOFF.delays();
        loop {
            let followed = tokio::select! {
                r = self.follow_once(&js) => r,
                () = stop.cancelled() => return,
            };
            if let Err(error) = followed {
                // Cancels still take effect when the call's next state is written; only the
                // start check and the abort wait for this.
                tracing::warn!(%error, "not following cancels; following again");
            }
            tokio::select! {
                () = tokio::time::sleep(delays.next_delay()) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn follow_once(&self, js: &jetstream::Context) -> Result<(), FollowError> {
        let mut stream = js.get_stream(CANCEL_STREAM).await?;
        let last = stream.info().await?.state.last_sequence;
        if last == 0 {
            self.caught_up.cancel();
        }
        let consumer = stream.create_consumer(OrderedConfig::default()).await?;
        let mut messages = consumer.messages().await?;
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            if let Some(cancel) = Cancel::decode(&msg.payload) {
                self.heard(cancel);
            }
            if msg.info().is_ok_and(|i| i.stream_sequence >= last) {
                self.caught_up.cancel();
            }
        }
        Ok(())
    }
}

/// Why following the cancel stream stopped (it is followed again after a pause).
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("opening the cancel stream: {0}")]
    Open(#[from] jetstream::context::GetStreamError),
    #[error("reading the cancel stream's state: {0}")]
    Info(#[from] jetstream::context::RequestError),
    #[error("following the cancel stream: {0}")]
    Consumer(#[from] jetstream::stream::ConsumerError),
    #[error("following the cancel stream: {0}")]
    Messages(#[from] jetstream::consumer::StreamError),
    #[error("reading a cancel: {0}")]
    Message(#[from] jetstream::consumer::pull::OrderedError),
}

/// A record of the same call as `env`: a client may reuse a call id once the duplicate window
/// has passed, and the earlier call's record must not steer the new one.
fn same_call(record: &Record, env: &Envelope) -> bool {
    record.accepted_at == env.start_time && record.function == env.function.as_str()
}

/// One call's status while this replica handles it.
pub(crate) struct Tracked<'a> {
    status: &'a CallStatus,
    env: &'a Envelope,
    /// What is known of the record, to compare-and-set against (a call with a record of its own).
    known: Known,
    /// A numbered call's page and its record as this replica last wrote it (or as the call's
    /// message tells, before).
    paged: Option<(Page, Box<Record>)>,
    /// Fires when a client cancels the call while it runs here.
    token: CancellationToken,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.status.running.lock() {
            running.remove(&self.env.call_id);
        }
    }
}

impl Tracked<'_> {
    /// Runs `work` (one attempt), recording `running` once it has run for [`RUNNING_AFTER`].
    /// `None` when the call was cancelled meanwhile: `work` is dropped, which aborts the
    /// function's request.
    pub(crate) async fn run<F: Future + Unpin>(
        &mut self,
        attempts: u32,
        mut work: F,
    ) -> Option<F::Output> {
        let token = self.token.clone();
        let mark = async {
            tokio::time::sleep(RUNNING_AFTER).await;
            // Boxed: most calls end before it, and every call's task would otherwise be
            // allocated with room for a status write.
            Box::pin(self.record(|r| {
                r.state = CallState::Running;
                r.attempts = attempts;
                r.next_attempt_at = None;
            }))
            .await
        };
        tokio::select! {
            biased;
            () = token.cancelled() => return None,
            out = &mut work => return Some(out),
            marked = mark => if marked == Recorded::Cancelled {
                return None;
            },
        }
        tokio::select! {
            biased;
            () = token.cancelled() => None,
            out = work => Some(out),
        }
    }

    /// Moves the call's record on with `change`, unless a client cancelled it first. A write
    /// NATS does not take is not repeated: the next state replaces it (for `running`).
    pub(crate) async fn record(&mut self, change: impl Fn(&mut Record)) -> Recorded {
        match self.try_record(&change).await {
            Ok(recorded) => recorded,
            Err(error) => self.status.not_recorded(&CallRef::of(self.env), &error),
        }
    }

    /// Records the state an attempt ends with (`retrying`, or the final state before the
    /// callback). A write NATS does not take (a partition, a leader being elected) is tried
    /// again for up to [`END_RECORD_PATIENCE`], so that the status a client reads agrees with
    /// the callback it gets; a cancel heard meanwhile ends the tries.
    pub(crate) async fn record_end(&mut self, change: impl Fn(&mut Record)) -> Recorded {
        let mut patience = Patience::new();
        loop {
            match self.try_record(&change).await {
                Ok(recorded) => return recorded,
                Err(error) => {
                    let call = CallRef::of(self.env);
                    if !patience.again(self.status, &call, &error).await {
                        return self.status.not_recorded(&call, &error);
                    }
                }
            }
        }
    }

    /// Lets go of the call for the status writer to finish ([`Later`]), when its records go to
    /// a page; else gives it back. Waits while [`ENDS_ON_THEIR_WAY`] ends wait for the writer
    /// (the call keeping its place in the replica meanwhile), so a slow status store slows
    /// pulling rather than piling up ends.
    pub(crate) async fn later(mut self, status: Arc<CallStatus>) -> Result<Later, Self> {
        let Some((page, last)) = self.paged.take() else {
            return Err(self);
        };
        match Arc::clone(&status.ending).acquire_owned().await {
            Ok(permit) => Ok(Later {
                room: Room::taken(permit, &status.ends_waiting),
                status,
                page,
                last,
            }),
            Err(_) => {
                self.paged = Some((page, last));
                Err(self)
            }
        }
    }

    /// One write of the record moved on with `change`.
    async fn try_record(
        &mut self,
        change: &impl Fn(&mut Record),
    ) -> Result<Recorded, flotilla_queue::status::StoreError> {
        let env = self.env;
        let now = flotilla_queue::time::unix_nanos();
        if let Some((page, last)) = &mut self.paged {
            let mut next = Record::clone(last);
            change(&mut next);
            next.updated_at = now;
            let written = self
                .status
                .store
                .write_paged(*page, &next, Guard::Cancels)
                .await?;
            return Ok(match written {
                Written::Stored => {
                    **last = next;
                    Recorded::Done
                }
                Written::Cancelled => Recorded::Cancelled,
            });
        }
        let result = self
            .status
            .store
            .transition(
                &env.call_id,
                std::mem::replace(&mut self.known, Known::Unknown),
                |current| {
                    let mut next = match current {
                        Some(r) if same_call(r, env) => {
                            if r.state == CallState::Cancelled {
                                return None;
                            }
                            r.clone()
                        }
                        _ => Record::queued(
                            &env.call_id,
                            env.function.as_str(),
                            env.start_time,
                            env.batch_id.as_deref(),
                        )
                        .with_priority(env.priority)
                        .with_key(env.fairness_key.as_ref()),
                    };
                    change(&mut next);
                    next.updated_at = now;
                    Some(next)
                },
            )
            .await?;
        Ok(match result {
            Transition::Written(stored) => {
                self.known = Known::Stored(Box::new(stored));
                Recorded::Done
            }
            Transition::Declined(current) => {
                if let Some(current) = current {
                    self.known = Known::Stored(Box::new(current));
                }
                Recorded::Cancelled
            }
        })
    }

    /// The revision a retry of this call carries, when the last write is known.
    pub(crate) fn revision(&self) -> Option<u64> {
        if self.paged.is_some() {
            return None;
        }
        match &self.known {
            Known::Stored(s) => Some(s.revision),
            Known::Revision(r) => Some(*r),
            Known::Unknown => None,
        }
    }

    /// Keeps the call's final answer for `GET /async-call/<id>/result`. A failure is logged
    /// and counted; the record then says the result is not kept.
    pub(crate) async fn keep_result(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> bool {
        match self
            .status
            .store
            .keep_result(&self.env.call_id, status, content_type, body)
            .await
        {
            Ok(()) => true,
            Err(error) => {
                self.status.write_failures.increment(1);
                tracing::warn!(%error, call_id = %self.env.call_id, "result not kept");
                false
            }
        }
    }
}

/// Which call a record is of, owned, for work that outlives the call's task.
#[derive(Debug, Clone)]
struct CallRef {
    id: String,
    accepted_at: u128,
    function: String,
}

impl CallRef {
    fn of(env: &Envelope) -> Self {
        Self {
            id: env.call_id.clone(),
            accepted_at: env.start_time,
            function: env.function.as_str().to_owned(),
        }
    }
}

/// How long the state an attempt ends with is tried again ([`END_RECORD_PATIENCE`]).
struct Patience {
    deadline: tokio::time::Instant,
    delays: flotilla_queue::backoff::Delays,
}

impl Patience {
    fn new() -> Self {
        Self {
            deadline: tokio::time::Instant::now() + END_RECORD_PATIENCE,
            delays: END_RECORD_BACKOFF.delays(),
        }
    }

    /// After a write NATS did not take: waits and says to try again, unless patience ran out
    /// or the call was cancelled meanwhile.
    async fn again(
        &mut self,
        status: &CallStatus,
        call: &CallRef,
        error: &flotilla_queue::status::StoreError,
    ) -> bool {
        if tokio::time::Instant::now() >= self.deadline
            || status.heard_cancel_of(&call.id, call.accepted_at)
        {
            return false;
        }
        tracing::debug!(%error, call_id = %call.id, "call status not recorded yet; trying again");
        tokio::time::sleep(self.delays.next_delay()).await;
        true
    }
}

/// A numbered call's end, recorded by the status writer while the call's task is already gone
/// ([`Tracked::later`]). Waking each call's task when its record is stored cost a busy replica
/// more than the write itself (`docs/call-status.md`), so what must follow the record (the ack)
/// travels with it instead: a crash before the record is stored still returns the call.
pub(crate) struct Later {
    status: Arc<CallStatus>,
    page: Page,
    last: Box<Record>,
    /// Its place among the [`ENDS_ON_THEIR_WAY`], until its record has an answer.
    room: Room,
}

/// A place among the [`ENDS_ON_THEIR_WAY`], counted in `worker_status_ends_waiting` while held.
struct Room {
    _permit: tokio::sync::OwnedSemaphorePermit,
    waiting: metrics::Gauge,
}

impl Room {
    fn taken(permit: tokio::sync::OwnedSemaphorePermit, waiting: &metrics::Gauge) -> Self {
        waiting.increment(1.0);
        Self {
            _permit: permit,
            waiting: waiting.clone(),
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.waiting.decrement(1.0);
    }
}

impl Later {
    /// Records the call's end, as [`Tracked::record_end`] does, then runs `then` with what came
    /// of it: started on the writer's task, and moved to a task of its own when it cannot finish
    /// at once (as when a write NATS did not take is tried again first).
    pub(crate) fn end(
        self,
        change: impl Fn(&mut Record),
        then: impl FnOnce(Recorded) -> futures_util::future::BoxFuture<'static, ()> + Send + 'static,
    ) {
        let Self {
            status,
            page,
            last,
            room,
        } = self;
        let mut record = *last;
        change(&mut record);
        record.updated_at = flotilla_queue::time::unix_nanos();
        let line = pages::Line::of(&record);
        // Counted from the hand-over, as `record_end` counts from its first try, so that the
        // record and its ack still come well within `ack_wait`.
        let patience = Patience::new();
        let writer = Arc::clone(&status);
        writer.store.write_paged_then(
            page,
            line,
            Guard::Cancels,
            Box::new(move |written| match written {
                Ok(Written::Stored) => {
                    drop(room);
                    then(Recorded::Done)
                }
                Ok(Written::Cancelled) => {
                    drop(room);
                    then(Recorded::Cancelled)
                }
                // Waits between tries: the writer moves it to a task of its own.
                Err(error) => Box::pin(async move {
                    let recorded = patiently(&status, page, &record, patience, error).await;
                    drop(room);
                    then(recorded).await;
                }),
            }),
        );
    }
}

/// Writes `record` again after `error`, for as long as `patience` allows.
async fn patiently(
    status: &CallStatus,
    page: Page,
    record: &Record,
    mut patience: Patience,
    mut error: flotilla_queue::status::StoreError,
) -> Recorded {
    let call = CallRef {
        id: record.call_id.clone(),
        accepted_at: record.accepted_at,
        function: record.function.clone(),
    };
    while patience.again(status, &call, &error).await {
        match status.store.write_paged(page, record, Guard::Cancels).await {
            Ok(Written::Stored) => return Recorded::Done,
            Ok(Written::Cancelled) => return Recorded::Cancelled,
            Err(e) => error = e,
        }
    }
    status.not_recorded(&call, &error)
}
