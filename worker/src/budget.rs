//! The replica's cap on calls in flight across all its functions (`--max-in-flight`). Every call
//! holds a socket to its function (hyper's pool opens one per concurrent request), so without a
//! cap a replica serving many functions takes the sum of their limits at once and runs out of
//! file descriptors. The cap is shared fairly: a function that has calls in flight may hold at
//! most its share (the cap divided among the functions that have calls in flight), and functions
//! waiting for a permit are served first come, first served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// File descriptors kept back from `--max-in-flight`'s default for NATS, the admin server,
/// callbacks' own sockets and the process itself.
const RESERVED_FDS: u64 = 256;
/// The default cap never goes above this, however high the open-files limit: beyond it a replica
/// is better scaled out than up.
const DEFAULT_CAP_MAX: u64 = 10_000;

/// The default `--max-in-flight` for an open-files limit: half of what is left after a reserve
/// (a call may hold its function's socket and its callback's at once), at least 16.
pub fn default_max_in_flight(open_files: u64) -> usize {
    let usable = open_files.saturating_sub(RESERVED_FDS) / 2;
    usable.clamp(16, DEFAULT_CAP_MAX) as usize
}

/// A started call's place: one of its function's slots in this replica and one of the replica's
/// permits, and its count among the function's calls in flight. All are released when it is
/// dropped; the function slot may go earlier, once the function has answered.
#[derive(Debug)]
pub(crate) struct Slot {
    function: Option<OwnedSemaphorePermit>,
    _replica: OwnedSemaphorePermit,
    running: Arc<Running>,
}

impl Slot {
    pub fn new(
        function: OwnedSemaphorePermit,
        replica: OwnedSemaphorePermit,
        running: &Arc<Running>,
    ) -> Self {
        if running.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            running.budget.busy.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            function: Some(function),
            _replica: replica,
            running: running.clone(),
        }
    }

    /// The function has answered: its slot goes to its next call now, while the replica permit
    /// stays with this call until it is settled (its status recorded, its callback handed over).
    pub fn function_answered(&mut self) {
        self.function = None;
    }
}

impl Slot {
    /// The function refused the call: the replica permit goes back now, and the function slot
    /// stays taken for `pause` (zero: goes back now too), so that after a refusal at the
    /// limit's floor the replica sends the function nothing more meanwhile.
    pub fn pause_function(mut self, pause: Duration) {
        if let Some(permit) = self.function.take()
            && !pause.is_zero()
        {
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                drop(permit);
            });
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.running.calls.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.running.budget.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One function's calls in flight in this replica. A function counts among those sharing the
/// replica's cap while it has any.
#[derive(Debug)]
pub(crate) struct Running {
    calls: AtomicUsize,
    budget: Arc<Budget>,
}

impl Running {
    pub fn new(budget: Arc<Budget>) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            budget,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

/// The replica-wide budget of calls in flight: `cap` permits, of which an eighth (at most 256) is
/// kept for functions with no call in flight, so a quiet function starts at once however busy the
/// others keep the replica.
#[derive(Debug)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    express: Arc<Semaphore>,
    /// Permits any function may take: the cap less those kept for quiet functions.
    shared: usize,
    cap: usize,
    /// Functions with calls in flight now; the cap is split among them.
    busy: AtomicUsize,
    /// Until when the replica pulls nothing after running out of a local resource, in
    /// milliseconds since `epoch`.
    paused_until_ms: AtomicU64,
    epoch: Instant,
}

impl Budget {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self::with_express(cap, (cap / 8).min(256))
    }

    /// A budget of `cap` permits of which `express` are kept for quiet functions.
    pub fn with_express(cap: usize, express: usize) -> Self {
        let express = express.min(cap.saturating_sub(1));
        Self {
            permits: Arc::new(Semaphore::new(cap - express)),
            express: Arc::new(Semaphore::new(express)),
            shared: cap - express,
            cap,
            busy: AtomicUsize::new(0),
            paused_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The permits any function may take.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// A permit for a function with no call in flight, when every other permit is taken.
    pub fn express(&self) -> Option<OwnedSemaphorePermit> {
        self.express.clone().try_acquire_owned().ok()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many calls in flight one function that has calls in flight may hold: an equal part of
    /// the permits any function may take, at least one.
    pub fn share(&self) -> usize {
        (self.shared / self.busy.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Stops pulling for `for_`: the replica ran out of file descriptors, memory or ports, and
    /// must let its calls in flight finish before it takes more. True when this starts a pause
    /// (pulling was not paused), so the trouble is logged once per pause, not once per call.
    pub fn pause(&self, for_: Duration) -> bool {
        let now = self.epoch.elapsed();
        let until = (now + for_).as_millis() as u64;
        self.paused_until_ms.fetch_max(until, Ordering::Relaxed) <= now.as_millis() as u64
    }

    /// When pulling may resume, if it is paused now.
    pub fn paused_until(&self) -> Option<Instant> {
        let until =
            self.epoch + Duration::from_millis(self.paused_until_ms.load(Ordering::Relaxed));
        (until > Instant::now()).then_some(until)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_open_files_limit() {
        assert_eq!(default_max_in_flight(1024), 384);
        assert_eq!(default_max_in_flight(512), 128);
        assert_eq!(default_max_in_flight(100), 16);
        assert_eq!(default_max_in_flight(1 << 20), 10_000);
    }

    /// A started call of `running`'s function.
    pub(crate) fn call(running: &Arc<Running>) -> Slot {
        let permit = || Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Slot::new(permit(), permit(), running)
    }

    #[test]
    fn the_cap_is_split_among_functions_with_calls_in_flight() {
        assert_eq!(
            Budget::new(100).permits().available_permits(),
            88,
            "12 kept for quiet functions"
        );
        let b = Arc::new(Budget::with_express(100, 0));
        assert_eq!(b.share(), 100);
        let fs: Vec<Arc<Running>> = (0..3).map(|_| Arc::new(Running::new(b.clone()))).collect();
        let mut calls: Vec<Slot> = fs.iter().map(call).collect();
        assert_eq!(b.share(), 33);
        // A second call of the same function counts once.
        calls.push(call(&fs[0]));
        assert_eq!((b.share(), fs[0].calls()), (33, 2));
        calls.remove(0);
        assert_eq!(b.share(), 33, "function 0 still has a call in flight");
        calls.pop();
        assert_eq!(b.share(), 50);
        let many = Arc::new(Budget::with_express(10, 0));
        let fs: Vec<Arc<Running>> = (0..50)
            .map(|_| Arc::new(Running::new(many.clone())))
            .collect();
        let _calls: Vec<Slot> = fs.iter().map(call).collect();
        assert_eq!(many.share(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_call_gives_its_function_slot_back_after_its_pause() {
        let running = Arc::new(Running::new(Arc::new(Budget::new(4))));
        let function = Arc::new(Semaphore::new(1));
        let replica = Arc::new(Semaphore::new(1));
        let take = |s: &Arc<Semaphore>| s.clone().try_acquire_owned().unwrap();
        Slot::new(take(&function), take(&replica), &running).pause_function(Duration::ZERO);
        assert_eq!(function.available_permits(), 1, "no pause: back at once");
        assert_eq!((replica.available_permits(), running.calls()), (1, 0));
        Slot::new(take(&function), take(&replica), &running).pause_function(Duration::from_secs(2));
        assert_eq!(
            replica.available_permits(),
            1,
            "the replica permit is back at once"
        );
        assert_eq!(function.available_permits(), 0, "the function slot is held");
        tokio::time::sleep(Duration::from_millis(2001)).await;
        assert_eq!(function.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_by_itself() {
        let b = Budget::new(4);
        assert!(b.paused_until().is_none());
        assert!(b.pause(Duration::from_secs(2)), "a new pause");
        assert!(b.paused_until().is_some());
        // A shorter pause does not cut a longer one short.
        assert!(!b.pause(Duration::from_millis(10)), "within the pause");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(b.paused_until().is_some());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(b.paused_until().is_none());
    }
}
