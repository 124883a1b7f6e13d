//! The bookkeeping of one function's pull loop, as a plain struct: the slots it holds (the
//! function's own and the replica's), the messages it asked NATS for and has not received, and
//! the rate tokens it paid for. The loop in `pull.rs` only feeds it events, so every rule about
//! how much to ask for lives here, with unit tests.
//!
//! Invariant: a message is only ever requested with a function slot and a replica permit set
//! aside for it, so whatever arrives starts at once and no `ack_wait` clock runs in a buffer.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::{Budget, Running, Slot};

/// This replica's share of a function's cluster-wide rate: `rate / replicas` starts per second.
/// The burst is a tenth of a second's worth (at least one start), and it also caps the starts
/// requested from NATS and not yet arrived, so the starts in any window stay close to the rate
/// instead of a second's worth at once after a quiet spell.
#[derive(Debug)]
pub(crate) struct RateShare {
    limiter: DefaultDirectRateLimiter,
    /// Starts this replica may have paid for and not yet begun (tokens plus requested messages).
    pub burst: usize,
    pub replicas: u32,
}

impl RateShare {
    pub fn new(rate: NonZeroU32, replicas: u32) -> Self {
        let replicas = replicas.max(1);
        let per_second = f64::from(rate.get()) / f64::from(replicas);
        let burst = (per_second / 10.0).floor().clamp(1.0, f64::from(u32::MAX)) as u32;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
            .unwrap_or(Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            burst: burst.get() as usize,
            replicas,
        }
    }

    /// Resolves when the next start may be paid for.
    pub async fn until_ready(&self) {
        self.limiter.until_ready().await;
    }
}

/// What the loop should do next about requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Messages to request now (0: none).
    pub request: usize,
    /// Free function slots to wait for before planning again.
    pub wake_at: u32,
    /// More could be requested as soon as a rate token is due.
    pub rate_blocked: bool,
    /// More could be requested as soon as a replica permit is free.
    pub budget_blocked: bool,
}

/// One function's slots, requests and rate credit in this replica.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The function's per-replica concurrency.
    limit: usize,
    slots: Arc<Semaphore>,
    budget: Arc<Budget>,
    running: Arc<Running>,
    /// Function slots set aside for messages requested or about to be.
    held_slots: Option<OwnedSemaphorePermit>,
    /// Replica permits set aside likewise; never more than `held_slots`.
    held_permits: Option<OwnedSemaphorePermit>,
    /// Messages requested from NATS and not yet arrived.
    outstanding: usize,
    /// Rate tokens taken for starts not yet requested.
    rate_credit: usize,
    /// The function has work: it asks for its share of the replica's cap, not one at a time.
    busy: bool,
}

fn count(p: &Option<OwnedSemaphorePermit>) -> usize {
    p.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
    match held {
        Some(h) => h.merge(p),
        None => *held = Some(p),
    }
}

impl Ledger {
    pub fn new(limit: usize, slots: Arc<Semaphore>, running: Arc<Running>) -> Self {
        Self {
            limit: limit.max(1),
            slots,
            budget: running.budget().clone(),
            running,
            held_slots: None,
            held_permits: None,
            outstanding: 0,
            rate_credit: 0,
            busy: false,
        }
    }

    /// Messages requested and not yet arrived.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Function slots set aside and not yet used by a call.
    pub fn held_slots(&self) -> usize {
        count(&self.held_slots)
    }

    /// Calls this function may hold in flight now: its own limit, or its share of the replica's
    /// cap when that is smaller. A function without work asks for one at a time.
    fn allowance(&self) -> usize {
        let share = if self.busy { self.budget.share() } else { 1 };
        self.limit.min(share)
    }

    /// Whether the function has work: a busy function takes an equal share of the replica's cap,
    /// an idle one a single permit for its waiting request.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Sets aside every free function slot, and as many free replica permits as go with them
    /// within the function's allowance.
    pub fn reserve(&mut self) {
        let free = self.slots.available_permits();
        if free > 0
            && let Ok(p) = self.slots.clone().try_acquire_many_owned(free as u32)
        {
            merge(&mut self.held_slots, p);
        }
        let want = self.held_slots().min(self.allowance());
        let more = want.saturating_sub(count(&self.held_permits));
        let free = self.budget.permits().available_permits().min(more);
        if free > 0
            && let Ok(p) = self
                .budget
                .permits()
                .clone()
                .try_acquire_many_owned(free as u32)
        {
            merge(&mut self.held_permits, p);
        }
    }

    /// A replica permit obtained by waiting for one.
    pub fn add_permit(&mut self, p: OwnedSemaphorePermit) {
        merge(&mut self.held_permits, p);
    }

    /// Function slots obtained by waiting for them.
    pub fn add_slots(&mut self, p: OwnedSemaphorePermit) {
        merge(&mut self.held_slots, p);
    }

    /// How much to request now. Requests come in batches of at least a quarter of what the
    /// function may hold (fewer requests under load), or as soon as anything is free when nothing
    /// is requested at all (low latency when idle). A rate-limited function requests only what
    /// it holds tokens for, and no more than its burst in all, so its starts stay spread out.
    pub fn plan(&mut self, rate: Option<&RateShare>, paused: bool) -> Plan {
        let usable = self.held_slots().min(count(&self.held_permits));
        let unrequested = usable.saturating_sub(self.outstanding);
        let allowance = self.allowance();
        let cap = rate.map_or(allowance, |s| s.burst.min(allowance));
        let threshold = (cap / 4).max(1);
        let mut want = unrequested;
        let mut rate_blocked = false;
        if let Some(share) = rate {
            let allowed = want.min(share.burst.saturating_sub(self.outstanding));
            while self.rate_credit < allowed && share.limiter.check().is_ok() {
                self.rate_credit += 1;
            }
            want = allowed.min(self.rate_credit);
            rate_blocked = want < allowed;
        }
        let request = if !paused && want > 0 && (self.outstanding == 0 || want >= threshold) {
            want
        } else {
            0
        };
        // Wake once enough slots are free for a batch rather than on every finished call; when
        // nothing is requested, wake for the first free slot.
        let wake_at = if self.outstanding == 0 {
            1
        } else {
            threshold.saturating_sub(unrequested).max(1) as u32
        };
        let held_permits = count(&self.held_permits);
        let budget_blocked = held_permits < self.held_slots().min(allowance)
            && held_permits <= self.outstanding
            && self.budget.permits().available_permits() == 0;
        Plan {
            request,
            wake_at,
            rate_blocked,
            budget_blocked,
        }
    }

    /// A request for `n` messages went out.
    pub fn requested(&mut self, n: usize, rated: bool) {
        self.outstanding += n;
        if rated {
            self.rate_credit = self.rate_credit.saturating_sub(n);
        }
    }

    /// A rate token came due while the loop waited for one.
    pub fn rate_token(&mut self) {
        self.rate_credit += 1;
    }

    /// A message arrived: the slot it starts in. `None` when more arrived than was asked for
    /// (a lost expiry notice followed by a late one): the caller waits for what [`Ledger::lacks`]
    /// names rather than exceed a limit, then takes the slot with [`Ledger::take_slot`].
    pub fn arrived(&mut self) -> Option<Slot> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.take_slot()
    }

    /// One function slot and one replica permit from those set aside, if both are there.
    pub fn take_slot(&mut self) -> Option<Slot> {
        if self.held_slots() == 0 || count(&self.held_permits) == 0 {
            return None;
        }
        let function = self.held_slots.as_mut()?.split(1)?;
        let replica = self.held_permits.as_mut()?.split(1)?;
        Some(Slot::new(function, replica, &self.running))
    }

    /// What is missing for a slot: (a function slot, a replica permit).
    pub fn lacks(&self) -> (bool, bool) {
        (self.held_slots() == 0, count(&self.held_permits) == 0)
    }

    /// A request ended with `unfulfilled` messages it will never deliver (`None`: unknown, so
    /// all). The replica permits set aside for them go back, so a function with nothing to do
    /// does not sit on the replica's cap and others waiting for permits get them.
    pub fn expired(&mut self, unfulfilled: Option<usize>) {
        self.outstanding = match unfulfilled {
            Some(n) => self.outstanding.saturating_sub(n),
            None => 0,
        };
        self.release_unrequested();
    }

    /// Nothing waits any more: gives back every function slot and replica permit set aside, so
    /// the function's new calls start directly and other functions get the permits, while the
    /// open request (if any) runs out. A message that still arrives waits for what it lacks
    /// ([`Ledger::lacks`]).
    pub fn stand_down(&mut self) {
        self.held_slots = None;
        self.held_permits = None;
    }

    /// Gives back the replica permits beyond the messages still requested.
    pub fn release_unrequested(&mut self) {
        let keep = self.outstanding;
        if let Some(p) = self.held_permits.as_mut() {
            let extra = p.num_permits().saturating_sub(keep);
            if extra > 0 {
                drop(p.split(extra));
            }
        }
        if count(&self.held_permits) == 0 {
            self.held_permits = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::budget::tests::call;

    fn ledger(limit: usize, cap: usize) -> (Ledger, Arc<Semaphore>, Arc<Budget>) {
        let budget = Arc::new(Budget::with_express(cap, 0));
        let (l, slots) = another(limit, &budget);
        (l, slots, budget)
    }

    /// A second function's ledger on the same replica.
    fn another(limit: usize, budget: &Arc<Budget>) -> (Ledger, Arc<Semaphore>) {
        let slots = Arc::new(Semaphore::new(limit));
        let running = Arc::new(Running::new(budget.clone()));
        (Ledger::new(limit, slots.clone(), running), slots)
    }

    #[test]
    fn standing_down_gives_back_what_an_open_request_held() {
        let (mut l, slots, budget) = ledger(10, 50);
        l.set_busy(true);
        l.reserve();
        let plan = l.plan(None, false);
        l.requested(plan.request, false);
        assert!(plan.request > 0 && budget.permits().available_permits() < 50);
        l.stand_down();
        assert_eq!(budget.permits().available_permits(), 50);
        assert_eq!(slots.available_permits(), 10);
        assert_eq!(l.outstanding(), plan.request, "the request is still open");
        assert_eq!(
            l.arrived().map(|_| ()),
            None,
            "a late message waits for a slot"
        );
        assert_eq!(l.lacks(), (true, true));
    }

    #[test]
    fn an_idle_function_asks_for_one_message_with_one_permit() {
        let (mut l, _, budget) = ledger(100, 50);
        l.reserve();
        let plan = l.plan(None, false);
        assert_eq!(plan.request, 1);
        l.requested(1, false);
        assert_eq!(budget.permits().available_permits(), 49);
    }

    #[test]
    fn a_busy_function_takes_its_share_of_the_replica_cap() {
        let (mut a, _, budget) = ledger(100, 40);
        let (mut b, _) = another(100, &budget);
        // Both have a call in flight already (outside the cap of this test's budget).
        let _calls = [call(&a.running), call(&b.running)];
        a.set_busy(true);
        b.set_busy(true);
        a.reserve();
        b.reserve();
        assert_eq!(a.plan(None, false).request, 20);
        assert_eq!(b.plan(None, false).request, 20);
        assert_eq!(budget.permits().available_permits(), 0);
        // Alone, a function may take the whole cap, within its own limit.
        drop(b);
        let (mut c, _, budget) = ledger(30, 40);
        c.set_busy(true);
        c.reserve();
        assert_eq!(c.plan(None, false).request, 30);
        assert_eq!(budget.permits().available_permits(), 10);
    }

    #[test]
    fn never_requests_beyond_the_function_limit() {
        let (mut l, slots, _) = ledger(3, 100);
        l.set_busy(true);
        l.reserve();
        assert_eq!(l.plan(None, false).request, 3);
        l.requested(3, false);
        l.reserve();
        assert_eq!(l.plan(None, false).request, 0);
        let s = l.arrived().expect("a slot was set aside");
        assert_eq!(slots.available_permits(), 0);
        drop(s);
        assert_eq!(slots.available_permits(), 1);
    }

    #[test]
    fn waits_for_a_batch_while_requests_are_outstanding() {
        let (mut l, slots, _) = ledger(8, 100);
        l.set_busy(true);
        l.reserve();
        assert_eq!(l.plan(None, false).request, 8);
        l.requested(8, false);
        let mut calls: Vec<Slot> = (0..8).filter_map(|_| l.arrived()).collect();
        assert_eq!(calls.len(), 8);
        assert_eq!(slots.available_permits(), 0);
        drop(calls.pop());
        l.reserve();
        // One free slot and nothing outstanding: ask at once.
        let plan = l.plan(None, false);
        assert_eq!(plan.request, 1);
        l.requested(1, false);
        // Now one is outstanding: a batch is a quarter of the limit (2), so one free slot waits.
        let plan = l.plan(None, false);
        assert_eq!((plan.request, plan.wake_at), (0, 2));
    }

    #[test]
    fn an_expired_request_gives_its_permits_back() {
        let (mut l, _, budget) = ledger(10, 10);
        l.set_busy(true);
        l.reserve();
        assert_eq!(l.plan(None, false).request, 10);
        l.requested(10, false);
        assert_eq!(budget.permits().available_permits(), 0);
        let _call = l.arrived().expect("slot");
        l.expired(Some(9));
        assert_eq!(l.outstanding(), 0);
        assert_eq!(budget.permits().available_permits(), 9);
        // Unknown remainder: everything outstanding is cleared.
        l.reserve();
        let n = l.plan(None, false).request;
        l.requested(n, false);
        l.expired(None);
        assert_eq!(budget.permits().available_permits(), 9);
    }

    #[test]
    fn an_exhausted_cap_blocks_on_the_budget() {
        let (mut a, _, budget) = ledger(10, 2);
        a.set_busy(true);
        a.reserve();
        let n = a.plan(None, false).request;
        a.requested(n, false);
        let (mut b, _) = another(10, &budget);
        b.set_busy(true);
        b.reserve();
        let plan = b.plan(None, false);
        assert_eq!(plan.request, 0);
        assert!(plan.budget_blocked);
    }

    #[test]
    fn a_pause_requests_nothing() {
        let (mut l, _, _) = ledger(10, 10);
        l.reserve();
        assert_eq!(l.plan(None, true).request, 0);
    }

    #[test]
    fn a_rate_limit_requests_only_paid_starts_within_the_burst() {
        let rate = RateShare::new(NonZeroU32::new(50).expect("nonzero"), 1);
        assert_eq!(rate.burst, 5);
        let (mut l, _, _) = ledger(100, 1000);
        l.set_busy(true);
        l.reserve();
        let plan = l.plan(Some(&rate), false);
        assert_eq!(plan.request, 5);
        l.requested(5, true);
        let plan = l.plan(Some(&rate), false);
        assert_eq!(plan.request, 0);
        assert!(
            !plan.rate_blocked,
            "the burst is outstanding, not the tokens"
        );
    }

    #[test]
    fn a_rate_is_split_among_replicas_with_a_small_burst() {
        let rate = NonZeroU32::new(50).expect("nonzero");
        let alone = RateShare::new(rate, 1);
        assert_eq!((alone.burst, alone.replicas), (5, 1));
        let shared = RateShare::new(rate, 3);
        assert_eq!(shared.burst, 1);
        // The burst goes at once, then one start per 60 ms (50/s split three ways).
        assert!(shared.limiter.check().is_ok());
        assert!(shared.limiter.check().is_err());
        let fast = RateShare::new(NonZeroU32::MAX, 1);
        assert!(fast.burst > 1000);
        assert_eq!(RateShare::new(rate, 0).replicas, 1);
    }
}
