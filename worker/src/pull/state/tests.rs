use std::sync::Arc;

use tokio::sync::Semaphore;

use super::*;
use crate::budget::{Budget, Running};
use crate::pull::pace::QUIET;

const IDLE: Duration = Duration::from_secs(300);

/// A waiting function's state with `limit` slots on a replica capped at `cap` calls.
fn state(limit: usize, cap: usize, rate: Option<u32>) -> (WaitState, Arc<Budget>) {
    let budget = Arc::new(Budget::with_express(cap, 0));
    let running = Arc::new(Running::new(budget.clone()));
    let ledger = Ledger::new(limit, Arc::new(Semaphore::new(limit)), running);
    let rate = rate.and_then(NonZeroU32::new);
    (WaitState::new(ledger, rate, 1, IDLE), budget)
}

#[tokio::test(start_paused = true)]
async fn requests_count_as_lost_after_silence_at_the_pace_they_were_sent() {
    let (mut s, _) = state(4, 10, None);
    let plan = s.plan(true, false).expect("calls wait");
    assert_eq!(plan.request, 4);
    let sent = Instant::now();
    s.requested(plan.request, &s.pace());
    assert_eq!(s.lost_at(), sent + BUSY.lost_after);
    tokio::time::advance(Duration::from_secs(2)).await;
    s.heard();
    assert_eq!(s.lost_at(), sent + Duration::from_secs(2) + BUSY.lost_after);
    s.lost();
    assert_eq!(s.outstanding(), 0, "a lost request is asked for again");
}

#[tokio::test(start_paused = true)]
async fn a_function_with_nothing_delivered_goes_quiet_and_a_message_wakes_it() {
    let (mut s, _) = state(4, 10, None);
    assert_eq!(s.pace().expires, BUSY.expires);
    s.info_read();
    assert_eq!(s.next_info(), Instant::now() + BUSY.info_every);
    tokio::time::advance(QUIET_AFTER).await;
    assert_eq!(s.pace().expires, QUIET.expires);
    s.info_read();
    assert_eq!(s.next_info(), Instant::now() + QUIET.info_every);
    let plan = s.plan(true, false).expect("calls wait");
    assert_eq!(plan.request, 1, "a quiet function asks for one at a time");
    s.requested(plan.request, &s.pace());
    assert_eq!(s.lost_at(), Instant::now() + QUIET.lost_after);
    let _slot = s.delivered().expect("a slot was set aside");
    assert_eq!(s.pace().expires, BUSY.expires);
}

#[tokio::test(start_paused = true)]
async fn the_loop_ends_only_once_its_last_request_is_closed() {
    let (mut s, budget) = state(4, 10, None);
    let plan = s.plan(true, false).expect("calls wait");
    s.requested(plan.request, &s.pace());
    assert!(budget.permits().available_permits() < 10);
    // Nothing waits any more, but a request is open: it runs out holding nothing back.
    let plan = s.plan(false, false).expect("a request is still open");
    assert_eq!(plan.request, 0);
    assert_eq!(budget.permits().available_permits(), 10);
    s.expired(None);
    assert!(s.plan(false, false).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pause_requests_nothing_until_it_ends() {
    let (mut s, _) = state(4, 10, None);
    assert_eq!(s.plan(true, true).expect("calls wait").request, 0);
    assert_eq!(s.plan(true, false).expect("calls wait").request, 4);
}

#[tokio::test(start_paused = true)]
async fn a_rate_is_split_anew_only_when_the_replicas_change() {
    let (mut s, _) = state(100, 1000, Some(50));
    assert!(s.watch_replicas());
    assert_eq!(s.share().map(|r| (r.burst, r.replicas)), Some((5, 1)));
    assert!(!s.replicas(Some(1)));
    assert!(s.replicas(Some(3)));
    assert_eq!(s.share().map(|r| (r.burst, r.replicas)), Some((1, 3)));
    // The shard's heartbeat ended: the last share stays.
    assert!(!s.replicas(None));
    assert!(!s.watch_replicas());
    assert_eq!(s.share().map(|r| r.replicas), Some(3));
    let (unrated, _) = state(100, 1000, None);
    assert!(!unrated.watch_replicas() && unrated.share().is_none());
}

#[tokio::test(start_paused = true)]
async fn rate_credit_is_spent_by_requests_and_earned_by_tokens() {
    // One start a second: the burst is one, so the second start needs a token.
    let (mut s, _) = state(100, 1000, Some(1));
    let plan = s.plan(true, false).expect("calls wait");
    assert_eq!((plan.request, plan.rate_blocked), (1, false));
    s.requested(1, &s.pace());
    s.expired(Some(1));
    let plan = s.plan(true, false).expect("calls wait");
    assert_eq!((plan.request, plan.rate_blocked), (0, true));
    s.rate_token();
    let plan = s.plan(true, false).expect("calls wait");
    assert_eq!((plan.request, plan.rate_blocked), (1, false));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_function_lingers_while_its_calls_keep_coming() {
    let (s, _) = state(4, 10, Some(50));
    assert!(!s.drained(0, true, 0), "busy and rate-limited");
    assert!(s.drained(0, false, 0));
    assert!(!s.drained(1, false, 0), "calls still pending");
    assert!(!s.drained(0, false, 1), "a move is under way");
    tokio::time::advance(QUIET_AFTER).await;
    assert!(s.drained(0, true, 0));
}
