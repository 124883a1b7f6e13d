//! What a replica knows about each function of a shard it serves: its policy, its slots in this
//! replica, and whether its calls are waiting in the shard's wait stream. One [`FunctionRt`] per
//! function, made when its first call arrives and shared by the shard's dispatch loop, the
//! function's wait loop and its calls.
//!
//! A function's cluster-wide concurrency is split among the shard's replicas: replica `i` of `n`
//! (in the order of their presence ids, which every replica sees alike) may hold
//! `concurrency / n` calls, one more when `i < concurrency % n`, and never more than the
//! function's `replica_concurrency`. The shares add up to the concurrency exactly, so the whole
//! budget is used and never exceeded once the replicas have heard of each other (within a
//! round trip of one joining, see `discovery::presence`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_queue::policy::expand;
use flotilla_queue::{FunctionName, FunctionPolicy, Policies, Priority};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::adaptive::{self, Refusal};
use crate::budget::{Budget, Running};
use crate::keys::{KeyRings, KeysAhead};
use crate::metrics::{FunctionMetrics, WorkerMetrics};
use crate::outcome::Outcome;

/// Where this replica stands among the replicas of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership {
    /// Replicas serving the shard now, this one included.
    pub replicas: u32,
    /// This replica's place among them, from 0.
    pub index: u32,
}

impl Membership {
    pub const ALONE: Self = Self {
        replicas: 1,
        index: 0,
    };

    /// This replica's part of a cluster-wide `limit`.
    pub fn share_of(self, limit: u32) -> u32 {
        let n = self.replicas.max(1);
        limit / n + u32::from(self.index < limit % n)
    }
}

/// What this replica knows about one function; shared with its calls.
#[derive(Debug)]
pub(crate) struct FunctionRt {
    pub name: FunctionName,
    pub shard: u32,
    pub policy: FunctionPolicy,
    /// The function's calls this replica may hold at once: [`FunctionRt::limit`] permits.
    pub slots: Arc<Semaphore>,
    /// What sizes `slots`, and the size it is being brought to.
    sizing: Mutex<Sizing>,
    /// This replica's calls at the function now (sent, not yet answered).
    at_function: AtomicU32,
    /// Answers of the function other than refusals, counted since start.
    answered: AtomicU64,
    /// Refusals under adaptive control, counted since start.
    refused: AtomicU64,
    /// Calls acknowledged with their final outcome, counted since start (for the limit report,
    /// whose successive counts give the console its completion rate).
    settled: AtomicU64,
    /// The size `slots` is being brought to, read without the lock on every call.
    learned: AtomicUsize,
    pub running: Arc<Running>,
    pub metrics: FunctionMetrics,
    /// The shard's replicas, to split the function's rate and concurrency among them.
    pub membership: watch::Receiver<Membership>,
    /// The function's base URL (its policy's, or the template's), expanded once; each call
    /// appends its path and query exactly as `Policies::url_for` does.
    pub base_url: String,
    /// Its calls are waiting in the wait stream: new ones queue behind them rather than overtake.
    waiting: AtomicBool,
    /// Calls being moved to the wait stream now.
    moving: AtomicUsize,
    /// How long its recent calls took, in microseconds: a moving average, 0 before the first.
    recent_micros: AtomicU64,
    /// Its calls' priority lanes in the wait stream (see `pull/lanes.rs`).
    pub lanes: LaneMarks,
}

impl FunctionRt {
    pub fn new(
        name: FunctionName,
        shard: u32,
        policies: &Policies,
        budget: Arc<Budget>,
        membership: watch::Receiver<Membership>,
        metrics: FunctionMetrics,
    ) -> Self {
        let policy = policies.get(&name).clone();
        let base_url = policy
            .url
            .clone()
            .unwrap_or_else(|| expand(&policies.url_template, &name));
        let sizing = Sizing::new(&policy, *membership.borrow());
        metrics.limit.set(sizing.applied as f64);
        Self {
            metrics,
            slots: Arc::new(Semaphore::new(sizing.applied)),
            learned: AtomicUsize::new(sizing.applied),
            sizing: Mutex::new(sizing),
            at_function: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            running: Arc::new(Running::new(budget)),
            name,
            shard,
            policy,
            membership,
            base_url,
            waiting: AtomicBool::new(false),
            moving: AtomicUsize::new(0),
            recent_micros: AtomicU64::new(0),
            lanes: LaneMarks::default(),
        }
    }

    /// One of its calls took `d` (from the request to the end of the answer).
    pub fn call_took(&self, d: Duration) {
        let sample = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let old = self.recent_micros.load(Ordering::Relaxed);
        // An eighth of each new sample: a slow call shows at once, one odd call does not rule.
        let new = old - old / 8 + sample / 8;
        self.recent_micros.store(new, Ordering::Relaxed);
    }

    /// Whether its recent calls ended within `within` on average (a function not yet called
    /// counts as quick).
    pub fn is_quick(&self, within: Duration) -> bool {
        u128::from(self.recent_micros.load(Ordering::Relaxed)) < within.as_micros()
    }

    /// Whether calls of it were seen to end, within `within` on average.
    pub fn is_known_quick(&self, within: Duration) -> bool {
        let micros = self.recent_micros.load(Ordering::Relaxed);
        micros > 0 && u128::from(micros) < within.as_micros()
    }

    /// One of the function's calls was acknowledged with its final outcome.
    pub fn settled(&self) {
        self.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// The function's calls this replica may hold at once now.
    pub fn limit(&self) -> usize {
        self.sizing().applied
    }

    fn sizing(&self) -> std::sync::MutexGuard<'_, Sizing> {
        self.sizing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call is sent to the function now; the guard counts it there until it is answered.
    /// `None` when the function's learned limit came down after the call took its slot and
    /// enough calls are at the function already: the function would only refuse it.
    pub fn sending(&self) -> Option<AtFunction<'_>> {
        let in_flight = self.at_function.fetch_add(1, Ordering::Relaxed) + 1;
        let answered = self.answered.load(Ordering::Relaxed);
        let at = AtFunction {
            f: self,
            in_flight,
            answered,
        };
        let beyond =
            self.policy.adaptive && in_flight as usize > self.learned.load(Ordering::Relaxed);
        (!beyond).then_some(at)
    }

    /// Calls of the function wait for its slots: a function under adaptive control that never
    /// refused a call (slow start) doubles its limit to meet them. `true` when it grew.
    pub fn grow_on_demand(&self) -> bool {
        let mut sizing = self.sizing();
        let grew = sizing
            .adaptive
            .as_mut()
            .is_some_and(adaptive::Limit::grow_on_demand);
        if grew {
            self.apply(&mut sizing);
        }
        grew
    }

    /// Whether an answer is the function saying it is full: under adaptive control, a 429, or a
    /// 503 that says when to come back.
    pub fn is_refusal(&self, outcome: &Outcome) -> bool {
        self.policy.adaptive
            && outcome.error.is_none()
            && (outcome.status == http::StatusCode::TOO_MANY_REQUESTS
                || (outcome.status == http::StatusCode::SERVICE_UNAVAILABLE
                    && outcome.retry_after().is_some()))
    }

    /// Every call of a rate-limited function passes through the wait stream, whose loop starts
    /// them at the rate without burning deliveries.
    pub fn always_waits(&self) -> bool {
        self.policy.rate_per_second.is_some()
    }

    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::SeqCst);
    }

    /// A call is being moved to the wait stream: the function is waiting from now on.
    pub fn moving(self: &Arc<Self>) -> MoveGuard {
        self.moving.fetch_add(1, Ordering::SeqCst);
        let began = !self.waiting.swap(true, Ordering::SeqCst);
        MoveGuard {
            f: self.clone(),
            began,
        }
    }

    /// Calls being moved to the wait stream now.
    pub fn moves_in_progress(&self) -> usize {
        self.moving.load(Ordering::SeqCst)
    }

    /// Resizes the slots for a new membership.
    pub fn rebalance(&self, membership: Membership) {
        let mut sizing = self.sizing();
        sizing.membership = membership;
        let share = share(&self.policy, membership);
        if let Some(a) = sizing.adaptive.as_mut() {
            a.set_max(share);
        }
        self.apply(&mut sizing);
    }

    /// Brings the slots to the size `sizing` says. Slots in use are not taken back: a shrinking
    /// function starts nothing more until enough of its calls end.
    fn apply(&self, sizing: &mut Sizing) {
        let new = sizing.size(&self.policy);
        let old = std::mem::replace(&mut sizing.applied, new);
        if new == old {
            return;
        }
        self.metrics.limit.set(new as f64);
        self.learned.store(new, Ordering::Relaxed);
        if sizing.adaptive.is_some() && sizing.worth_logging(new) {
            tracing::info!(function = %self.name, limit = new, was = sizing.logged, "concurrency limit learned anew");
            sizing.logged = new;
            sizing.logged_at = Instant::now();
        }
        if new > old {
            self.slots.add_permits(new - old);
        } else if old > new {
            let debt = old - new;
            let forgotten = self.slots.forget_permits(debt);
            if forgotten < debt {
                // The rest is in use: take it as it comes back.
                let slots = self.slots.clone();
                let rest = (debt - forgotten) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = slots.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        tracing::debug!(function = %self.name, limit = new, "concurrency limit changed");
    }
}

/// One call at the function, counted from its request to its answer.
pub(crate) struct AtFunction<'a> {
    f: &'a FunctionRt,
    /// Calls of this replica at the function when it was sent, itself included.
    in_flight: u32,
    /// The function's answers (refusals aside) before it was sent.
    answered: u64,
}

impl AtFunction<'_> {
    /// The function answered: its answer teaches the adaptive limit. `Some` when the answer is
    /// a refusal, which the call must treat as backpressure rather than as an attempt.
    pub fn answered(self, outcome: &Outcome) -> Option<Refusal> {
        let f = self.f;
        // A fixed limit learns nothing, and its refusals are answers like any other.
        if !f.policy.adaptive {
            return None;
        }
        let refused = f.is_refusal(outcome);
        if refused {
            f.metrics.refusals.increment(1);
            f.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            f.answered.fetch_add(1, Ordering::Relaxed);
        }
        let mut sizing = f.sizing();
        let limit = sizing.adaptive.as_mut()?;
        let refusal = if refused {
            // What the function held: this call's siblings still at it, and those answered
            // since it was sent (their answers crossed the refusal).
            let still = f.at_function.load(Ordering::Relaxed).saturating_sub(1);
            let crossed = f.answered.load(Ordering::Relaxed) - self.answered;
            let others = u32::try_from(crossed).map_or(u32::MAX, |c| still.saturating_add(c));
            Some(limit.refused(Instant::now(), self.in_flight, others))
        } else {
            limit.succeeded(Instant::now(), self.in_flight);
            None
        };
        f.apply(&mut sizing);
        refusal
    }
}

impl Drop for AtFunction<'_> {
    fn drop(&mut self) {
        self.f.at_function.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What decides the size of a function's slots in this replica.
#[derive(Debug)]
struct Sizing {
    membership: Membership,
    /// The learned limit, for a function under adaptive control.
    adaptive: Option<adaptive::Limit>,
    /// The size the slots are being brought to.
    applied: usize,
    /// The limit last logged, and when: a change is logged when it halves or doubles that, at
    /// most every [`LOG_EVERY`].
    logged: usize,
    logged_at: Instant,
}

/// How often a function's learned limit is logged at most.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Sizing {
    fn new(policy: &FunctionPolicy, membership: Membership) -> Self {
        let adaptive = policy.adaptive.then(|| {
            let ceiling = share(policy, membership);
            adaptive::Limit::new(policy.min_concurrency, ceiling, membership.replicas)
        });
        let mut s = Self {
            membership,
            adaptive,
            applied: 0,
            logged: 0,
            logged_at: Instant::now(),
        };
        s.applied = s.size(policy);
        s.logged = s.applied;
        s
    }

    /// This replica's limit for the function: its share of the cluster-wide concurrency,
    /// within the function's per-replica limit, and within the learned limit when adaptive.
    fn size(&self, policy: &FunctionPolicy) -> usize {
        let share = share(policy, self.membership);
        let learned = self
            .adaptive
            .as_ref()
            .map_or(share, adaptive::Limit::current);
        share.min(learned) as usize
    }

    fn worth_logging(&self, new: usize) -> bool {
        (new >= self.logged * 2 || new * 2 <= self.logged) && self.logged_at.elapsed() >= LOG_EVERY
    }
}

/// What a replica knows about a function's lanes, shared by its dispatch loop (which moves calls
/// into them), discovery (which finds calls other replicas moved) and its wait loop.
#[derive(Debug, Default)]
pub(crate) struct LaneMarks {
    /// A call of another priority than normal, or with a fairness key, was seen: the wait loop
    /// serves lanes from now on.
    used: AtomicBool,
    /// A call of another priority than normal was seen.
    prioritised: AtomicBool,
    /// A call with a fairness key was seen: the function's waiting calls are parked by key.
    keyed: AtomicBool,
    /// The keys with calls parked (see `keys.rs`).
    pub keys: KeyRings,
    /// Calls of each key on their way to being parked, or claimed and not started yet.
    pub ahead: KeysAhead,
    /// Moves into each lane (and discoveries of calls in it), counted.
    marks: [AtomicU64; 3],
    /// Wakes the function's wait loop when lanes come into use, and when a lane is marked once
    /// they are.
    marked: tokio::sync::Notify,
}

impl LaneMarks {
    /// A call of `priority` arrived: from the first of another priority than normal on, the
    /// function's calls wait by priority.
    pub fn saw(&self, priority: Priority) {
        if !priority.is_normal() {
            if !self.prioritised.load(Ordering::Relaxed) {
                self.prioritised.store(true, Ordering::SeqCst);
            }
            self.use_lanes();
        }
    }

    /// A call with a fairness key arrived: from now on the function's waiting calls are parked
    /// by key, and served from lanes.
    pub fn saw_key(&self) {
        if !self.keyed.load(Ordering::Relaxed) {
            self.keyed.store(true, Ordering::SeqCst);
            self.use_lanes();
        }
    }

    fn use_lanes(&self) {
        if !self.used.load(Ordering::Relaxed) && !self.used.swap(true, Ordering::SeqCst) {
            // The wait loop gives up the long polls it had open (see `pull/lanes.rs`).
            self.marked.notify_one();
        }
    }

    /// Whether the function's waiting calls are parked by key.
    pub fn keyed(&self) -> bool {
        self.keyed.load(Ordering::SeqCst)
    }

    /// Whether a call of `priority` and key `token`, of a function whose calls are parked by
    /// key, may take a free slot at once although the function's calls wait: what must stay in
    /// order is a key's calls, so a key with none waiting (none parked, none on its way there,
    /// none claimed and not started) need not queue behind other keys. Not once calls of
    /// another priority than normal were seen: a free slot goes to a waiting higher call first.
    pub fn nothing_waits_for(&self, priority: Priority, token: &str) -> bool {
        !self.prioritised.load(Ordering::SeqCst)
            && !self.keys.has(priority, token)
            && !self.ahead.any(token, Instant::now())
    }

    /// Calls of the key whose token is `token` are parked in lane `priority` now.
    pub fn park(&self, priority: Priority, token: &str) {
        self.saw_key();
        self.keys.park(priority, token);
        self.mark(priority);
    }

    /// This replica freed a slot of the key whose token is `token`: its calls may be claimed.
    pub fn freed(&self, token: &str) {
        self.keys.freed(token);
        self.marked.notify_one();
    }

    /// Calls of `priority` wait in its lane now.
    pub fn mark(&self, priority: Priority) {
        self.saw(priority);
        self.marks[priority.index()].fetch_add(1, Ordering::SeqCst);
        if self.used() {
            self.marked.notify_one();
        }
    }

    /// Resolves once a lane was marked (at once if one was since the last wait).
    pub async fn marked(&self) {
        self.marked.notified().await;
    }

    /// Whether the function's calls wait by priority.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_of(&self, priority: Priority) -> u64 {
        self.marks[priority.index()].load(Ordering::SeqCst)
    }
}

/// Ends a move to the wait stream when dropped.
pub(crate) struct MoveGuard {
    f: Arc<FunctionRt>,
    /// This move made the function waiting: its wait loop must start.
    pub began: bool,
}

impl Drop for MoveGuard {
    fn drop(&mut self) {
        self.f.moving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// This replica's share of the function's cluster-wide concurrency, within its per-replica limit.
fn share(policy: &FunctionPolicy, membership: Membership) -> u32 {
    membership
        .share_of(policy.concurrency)
        .min(policy.replica_concurrency)
}

/// The functions of one shard that this replica has seen.
#[derive(Debug)]
pub(crate) struct Functions {
    shard: u32,
    budget: Arc<Budget>,
    membership: watch::Receiver<Membership>,
    known: Mutex<HashMap<FunctionName, Arc<FunctionRt>>>,
    /// Where a function's handles are registered when it is first seen.
    metrics: WorkerMetrics,
}

impl Functions {
    pub fn new(
        shard: u32,
        budget: Arc<Budget>,
        membership: watch::Receiver<Membership>,
        metrics: WorkerMetrics,
    ) -> Self {
        Self {
            shard,
            budget,
            membership,
            known: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The function's record, made on first use.
    pub fn get(&self, name: &FunctionName, policies: &Policies) -> Arc<FunctionRt> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = known.get(name) {
            return f.clone();
        }
        let f = Arc::new(FunctionRt::new(
            name.clone(),
            self.shard,
            policies,
            self.budget.clone(),
            self.membership.clone(),
            self.metrics.function(name),
        ));
        known.insert(name.clone(), f.clone());
        f
    }

    /// Every known function's limit in this replica, for the limit report.
    pub fn limits(&self) -> Vec<flotilla_queue::limits::FunctionLimit> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .values()
            .map(|f| flotilla_queue::limits::FunctionLimit {
                function: f.name.as_str().to_owned(),
                limit: u32::try_from(f.learned.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
                adaptive: f.policy.adaptive,
                refusals: f.refused.load(Ordering::Relaxed),
                settled: f.settled.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Splits every known function's concurrency anew among the shard's replicas.
    pub fn rebalance(&self, membership: Membership) {
        let all: Vec<Arc<FunctionRt>> = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for f in all {
            f.rebalance(membership);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(replicas: u32, index: u32) -> Membership {
        Membership { replicas, index }
    }

    #[test]
    fn shares_add_up_to_the_cluster_limit() {
        for limit in [1, 2, 5, 7, 100] {
            for n in 1..=6 {
                let sum: u32 = (0..n).map(|i| m(n, i).share_of(limit)).sum();
                assert_eq!(sum, limit, "{limit} over {n}");
            }
        }
        assert_eq!([0, 1, 2].map(|i| m(3, i).share_of(5)), [2, 2, 1]);
        assert_eq!(m(3, 2).share_of(2), 0, "more replicas than slots");
    }

    #[test]
    fn a_slow_call_shows_at_once_and_quick_ones_bring_the_average_back() {
        let f = function(10, 10);
        let hold = Duration::from_millis(5);
        assert!(f.is_quick(hold), "not called yet");
        assert!(!f.is_known_quick(hold), "not known yet");
        f.call_took(Duration::from_micros(300));
        assert!(f.is_quick(hold) && f.is_known_quick(hold));
        f.call_took(Duration::from_secs(1));
        assert!(
            !f.is_quick(hold) && !f.is_known_quick(hold),
            "one call of a second is an eighth of the average"
        );
        for _ in 0..60 {
            f.call_took(Duration::from_micros(300));
        }
        assert!(f.is_quick(hold));
    }

    fn function(concurrency: u32, replica_concurrency: u32) -> Arc<FunctionRt> {
        let mut policies = Policies::default();
        policies.defaults.concurrency = concurrency;
        policies.defaults.replica_concurrency = replica_concurrency;
        policies.defaults.adaptive = false;
        let (_, rx) = watch::channel(Membership::ALONE);
        let name = FunctionName::parse("f").unwrap();
        let metrics = handles(&name);
        Arc::new(FunctionRt::new(
            name,
            0,
            &policies,
            Arc::new(Budget::new(100)),
            rx,
            metrics,
        ))
    }

    /// Handles in a recorder of the test's own.
    fn handles(function: &FunctionName) -> FunctionMetrics {
        let telemetry = flotilla_runtime::Telemetry::new(flotilla_runtime::DEFAULT_FUNCTION_SERIES);
        FunctionMetrics::new(&telemetry, function)
    }

    #[tokio::test]
    async fn slots_follow_the_membership_and_shrink_as_calls_end() {
        let f = function(10, 8);
        assert_eq!((f.limit(), f.slots.available_permits()), (8, 8));
        let held = f.slots.clone().try_acquire_many_owned(6).unwrap();
        f.rebalance(m(3, 2));
        assert_eq!(f.limit(), 3);
        assert_eq!(f.slots.available_permits(), 0, "two forgotten, three owed");
        drop(held);
        tokio::task::yield_now().await;
        assert_eq!(f.slots.available_permits(), 3);
        f.rebalance(Membership::ALONE);
        assert_eq!(f.slots.available_permits(), 8);
    }

    #[tokio::test]
    async fn refusals_shrink_the_slots_of_an_adaptive_function() {
        let mut policies = Policies::default();
        policies.defaults.concurrency = 40;
        policies.defaults.replica_concurrency = 40;
        let (_, rx) = watch::channel(Membership::ALONE);
        let name = FunctionName::parse("f").unwrap();
        let metrics = handles(&name);
        let f = FunctionRt::new(name, 0, &policies, Arc::new(Budget::new(100)), rx, metrics);
        assert_eq!(
            f.limit(),
            adaptive::INITIAL as usize,
            "starts below its ceiling"
        );
        let answer = |status: u16| Outcome {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
            error: None,
            duration: Duration::ZERO,
            attempt: crate::outcome::Attempt {
                earlier: 0,
                delivered: 1,
            },
        };
        // Six calls at the function; the sixth is refused while five are still there.
        let mut sent: Vec<_> = (0..6).map(|_| f.sending().unwrap()).collect();
        let refused = sent.pop().unwrap();
        assert_eq!(refused.answered(&answer(429)), Some(Refusal::Lowered));
        assert_eq!(f.limit(), 5);
        assert_eq!(f.slots.available_permits(), 5, "eleven slots forgotten");
        // A 503 without Retry-After is an answer, not a refusal; a 500 neither.
        let other = sent.pop().unwrap();
        assert_eq!(other.answered(&answer(503)), None);
        assert_eq!(f.limit(), 5);
        // Beyond the learned limit, a call is not sent at all.
        let more: Vec<_> = (0..6).map(|_| f.sending()).collect();
        assert_eq!(more.iter().filter(|a| a.is_some()).count(), 5 - sent.len());
        drop((sent, more));
        assert_eq!(f.at_function.load(Ordering::Relaxed), 0);

        let mut fixed = policies.clone();
        fixed.defaults.adaptive = false;
        let (_, rx) = watch::channel(Membership::ALONE);
        let name = FunctionName::parse("g").unwrap();
        let metrics = handles(&name);
        let g = FunctionRt::new(name, 0, &fixed, Arc::new(Budget::new(100)), rx, metrics);
        assert_eq!(g.limit(), 40);
        assert_eq!(
            g.sending().unwrap().answered(&answer(429)),
            None,
            "a fixed limit learns nothing"
        );
        assert_eq!(g.limit(), 40);
    }

    #[test]
    fn a_move_marks_the_function_waiting() {
        let f = function(10, 10);
        assert!(!f.is_waiting());
        let first = f.moving();
        let second = f.moving();
        assert!(f.is_waiting());
        assert!(
            first.began && !second.began,
            "only the first starts the wait loop"
        );
        assert_eq!(f.moves_in_progress(), 2);
        drop((first, second));
        assert_eq!(f.moves_in_progress(), 0);
        assert!(f.is_waiting(), "until its wait loop finds the stream empty");
    }
}
