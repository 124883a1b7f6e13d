//! The replica's cap on calls in flight across all its functions (`--max-in-flight`). Every call
//! holds a socket to its function (hyper's pool opens one per concurrent request), so without a
//! cap a replica serving many functions takes the sum of their limits at once and runs out of
//! file descriptors. The cap is shared fairly: a function that has work may hold at most its
//! share (the cap divided among the functions that have work), and functions waiting for a
//! permit are served first come, first served.

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
/// permits. Both are released when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _function: OwnedSemaphorePermit,
    _replica: OwnedSemaphorePermit,
}

impl Slot {
    pub fn new(function: OwnedSemaphorePermit, replica: OwnedSemaphorePermit) -> Self {
        Self {
            _function: function,
            _replica: replica,
        }
    }
}

/// The replica-wide budget of calls in flight.
#[derive(Debug)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    cap: usize,
    /// Functions that have work now; the cap is split among them.
    busy: AtomicUsize,
    /// Until when the replica pulls nothing after running out of a local resource, in
    /// milliseconds since `epoch`.
    paused_until_ms: AtomicU64,
    epoch: Instant,
}

impl Budget {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
            busy: AtomicUsize::new(0),
            paused_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many calls in flight one function that has work may hold: an equal part of the cap,
    /// at least one.
    pub fn share(&self) -> usize {
        (self.cap / self.busy.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Marks a function as having work (or not); `flag` is the function's own record of it, so
    /// the count never drifts.
    pub fn set_busy(&self, flag: &mut bool, busy: bool) {
        if *flag == busy {
            return;
        }
        *flag = busy;
        if busy {
            self.busy.fetch_add(1, Ordering::Relaxed);
        } else {
            self.busy.fetch_sub(1, Ordering::Relaxed);
        }
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
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_open_files_limit() {
        assert_eq!(default_max_in_flight(1024), 384);
        assert_eq!(default_max_in_flight(512), 128);
        assert_eq!(default_max_in_flight(100), 16);
        assert_eq!(default_max_in_flight(1 << 20), 10_000);
    }

    #[test]
    fn the_cap_is_split_among_functions_with_work() {
        let b = Budget::new(100);
        assert_eq!(b.share(), 100);
        let mut flags = [false; 3];
        for f in &mut flags {
            b.set_busy(f, true);
        }
        assert_eq!(b.share(), 33);
        // Marking twice counts once.
        b.set_busy(&mut flags[0], true);
        assert_eq!(b.share(), 33);
        b.set_busy(&mut flags[0], false);
        b.set_busy(&mut flags[0], false);
        assert_eq!(b.share(), 50);
        let many = Budget::new(10);
        let mut f = vec![false; 50];
        for x in &mut f {
            many.set_busy(x, true);
        }
        assert_eq!(many.share(), 1);
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
