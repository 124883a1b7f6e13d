//! What the senders record while a run is under way: counters the progress line reads, the
//! enqueue latency histogram, the accepted call ids for the audit, and errors by kind.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_queue::Priority;
use hdrhistogram::Histogram;

use crate::net::Clock;

/// Highest latency a histogram holds, in microseconds (one hour); above it values saturate.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram in microseconds, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// One call the gateway accepted (202).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub call_id: String,
    /// When the 202 arrived, nanoseconds since the clock origin.
    pub at_ns: u64,
    /// The `X-Priority` it was sent with (`--priority-mix`), if any.
    pub priority: Option<Priority>,
    /// The fairness key it was sent with (`--fairness-keys`), if any.
    pub key: Option<u32>,
}

/// Shared by every sender task of a run.
#[derive(Debug)]
pub struct Recorder {
    pub clock: Clock,
    /// Requests started.
    pub sent: AtomicU64,
    /// Requests that got an answer or failed.
    pub answered: AtomicU64,
    /// 202 answers with a call id.
    pub accepted: AtomicU64,
    /// Everything else.
    pub errors: AtomicU64,
    enqueue_us: Mutex<Histogram<u64>>,
    accepted_log: Mutex<Vec<Accepted>>,
    error_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Recorder {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            enqueue_us: Mutex::new(latency_histogram()),
            accepted_log: Mutex::new(Vec::new()),
            error_kinds: Mutex::new(BTreeMap::new()),
        }
    }

    /// A 202 with its call id, `latency_ns` counted from the intended send time.
    pub fn accepted(
        &self,
        call_id: String,
        at_ns: u64,
        latency_ns: u64,
        (priority, key): (Option<Priority>, Option<u32>),
    ) {
        if let Ok(mut h) = self.enqueue_us.lock() {
            h.saturating_record(latency_ns / 1000);
        }
        if let Ok(mut v) = self.accepted_log.lock() {
            v.push(Accepted {
                call_id,
                at_ns,
                priority,
                key,
            });
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed enqueue: `kind` is `status_503`, `connect`, `timeout`, ...
    pub fn error(&self, kind: &str) {
        if let Ok(mut m) = self.error_kinds.lock() {
            *m.entry(kind.to_owned()).or_default() += 1;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn enqueue_histogram(&self) -> Histogram<u64> {
        self.enqueue_us
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| latency_histogram())
    }

    pub fn accepted_calls(&self) -> Vec<Accepted> {
        self.accepted_log
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub fn error_kinds(&self) -> BTreeMap<String, u64> {
        self.error_kinds
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}
