use super::*;
use crate::pull::refused;

fn name(n: &str) -> FunctionName {
    FunctionName::parse(n).unwrap()
}

/// A loop that has ended with `result`.
async fn ended(result: Result<Ended, PullError>) -> Loop {
    let handle = tokio::spawn(async move { result });
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    handle
}

#[tokio::test(start_paused = true)]
async fn a_failed_wait_loop_starts_again_only_after_its_wait() {
    let consumers = Gauge::noop();
    let (a, b, c, d) = (name("a"), name("b"), name("c"), name("d"));
    let mut loops = WaitLoops::default();
    loops.started(a.clone(), ended(Ok(Ended::Drained)).await);
    loops.started(b.clone(), ended(Err(PullError::Closed)).await);
    loops.started(c.clone(), ended(Err(refused())).await);
    loops.started(
        d.clone(),
        tokio::spawn(async { std::future::pending().await }),
    );
    let now = Instant::now();
    assert!(!loops.may_start(&a, now), "ended but not reaped yet");
    loops.reap(0, &consumers).await;
    assert!(loops.may_start(&a, now), "drained: starts at once");
    assert!(!loops.may_start(&b, now) && !loops.may_start(&c, now));
    assert!(loops.runs(&d) && !loops.may_start(&d, now), "still running");
    tokio::time::advance(RESTART_AFTER).await;
    let now = Instant::now();
    assert!(
        loops.may_start(&b, now),
        "a retryable failure waits a second"
    );
    assert!(!loops.may_start(&c, now), "a refused consumer waits longer");
    tokio::time::advance(REFUSED_RETRY_AFTER - RESTART_AFTER).await;
    assert!(loops.may_start(&c, Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn a_panicked_wait_loop_restarts_after_a_second() {
    let f = name("p");
    let mut loops = WaitLoops::default();
    let handle: Loop = tokio::spawn(async { panic!("in a test") });
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    loops.started(f.clone(), handle);
    loops.reap(0, &Gauge::noop()).await;
    assert!(!loops.runs(&f) && !loops.may_start(&f, Instant::now()));
    tokio::time::advance(RESTART_AFTER).await;
    assert!(loops.may_start(&f, Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn the_dispatch_loop_is_ready_once_and_retried_after_a_wait() {
    let mut d = DispatchLoop::new();
    let now = Instant::now();
    assert!(d.due(now));
    d.failed(false, now);
    assert!(!d.due(now + RESTART_AFTER));
    assert!(d.due(now + REFUSED_RETRY_AFTER));
    d.failed(true, now);
    assert!(d.due(now + RESTART_AFTER));
    assert!(d.started(tokio::spawn(std::future::pending())), "ready");
    assert!(!d.due(now + RESTART_AFTER), "running");
    let failed = tokio::spawn(async { Err(PullError::Closed) });
    while !failed.is_finished() {
        tokio::task::yield_now().await;
    }
    assert!(!d.started(failed), "ready once only");
    assert!(d.due(now + RESTART_AFTER), "a finished loop is restarted");
    d.reap(0).await;
    assert!(d.due(now + RESTART_AFTER));
}

#[test]
fn discovery_health_reports_each_change_once() {
    let mut h = Health::new();
    assert!(!h.worked());
    assert!(h.failed());
    assert!(!h.failed());
    assert!(h.worked());
    assert!(!h.worked());
}
