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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_queue::policy::expand;
use flotilla_queue::{FunctionName, FunctionPolicy, Policies};
use tokio::sync::{Semaphore, watch};

use crate::budget::{Budget, Running};
use crate::metrics::FunctionMetrics;

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
    /// The size `slots` is being brought to.
    limit: Mutex<usize>,
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
}

impl FunctionRt {
    pub fn new(
        name: FunctionName,
        shard: u32,
        policies: &Policies,
        budget: Arc<Budget>,
        membership: watch::Receiver<Membership>,
    ) -> Self {
        let policy = policies.get(&name).clone();
        let base_url = policy
            .url
            .clone()
            .unwrap_or_else(|| expand(&policies.url_template, &name));
        let limit = local_limit(&policy, *membership.borrow());
        Self {
            metrics: FunctionMetrics::new(&name),
            slots: Arc::new(Semaphore::new(limit)),
            limit: Mutex::new(limit),
            running: Arc::new(Running::new(budget)),
            name,
            shard,
            policy,
            membership,
            base_url,
            waiting: AtomicBool::new(false),
            moving: AtomicUsize::new(0),
            recent_micros: AtomicU64::new(0),
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

    /// The function's calls this replica may hold at once now.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Resizes the slots for a new membership. Slots in use are not taken back: a shrinking
    /// function starts nothing more until enough of its calls end.
    pub fn rebalance(&self, membership: Membership) {
        let new = local_limit(&self.policy, membership);
        let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *limit, new);
        drop(limit);
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
        if new != old {
            tracing::debug!(function = %self.name, limit = new, "concurrency shared anew");
        }
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

/// This replica's limit for a function: its share of the cluster-wide concurrency, within the
/// function's per-replica limit.
fn local_limit(policy: &FunctionPolicy, membership: Membership) -> usize {
    membership
        .share_of(policy.concurrency)
        .min(policy.replica_concurrency) as usize
}

/// The functions of one shard that this replica has seen.
#[derive(Debug)]
pub(crate) struct Functions {
    shard: u32,
    budget: Arc<Budget>,
    membership: watch::Receiver<Membership>,
    known: Mutex<HashMap<FunctionName, Arc<FunctionRt>>>,
}

impl Functions {
    pub fn new(shard: u32, budget: Arc<Budget>, membership: watch::Receiver<Membership>) -> Self {
        Self {
            shard,
            budget,
            membership,
            known: Mutex::new(HashMap::new()),
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
        ));
        known.insert(name.clone(), f.clone());
        f
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
        f.call_took(Duration::from_micros(300));
        assert!(f.is_quick(hold));
        f.call_took(Duration::from_secs(1));
        assert!(
            !f.is_quick(hold),
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
        let (_, rx) = watch::channel(Membership::ALONE);
        Arc::new(FunctionRt::new(
            FunctionName::parse("f").unwrap(),
            0,
            &policies,
            Arc::new(Budget::new(100)),
            rx,
        ))
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
