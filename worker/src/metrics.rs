//! The worker's Prometheus metrics. Per-function handles are registered once when a function's
//! pull loop starts, so the call path records into ready handles instead of looking names and
//! labels up (and allocating them) on every call.

use std::sync::Mutex;

use flotilla_queue::FunctionName;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub const CALLS_TOTAL: &str = "worker_calls_total";
pub const CALL_DURATION: &str = "worker_call_duration_seconds";
pub const IN_FLIGHT: &str = "worker_in_flight";
pub const PENDING: &str = "worker_pending";
pub const SHARD_PENDING: &str = "worker_shard_pending";
pub const WAITED: &str = "worker_calls_waited_total";
pub const CONSUMERS: &str = "worker_consumers";
pub const CALLBACK_QUEUE_DEPTH: &str = "worker_callback_queue_depth";
pub const CALLBACKS_DELIVERED: &str = "worker_callbacks_delivered_total";
pub const CALLBACK_FAILURES: &str = "worker_callback_failures_total";
pub const REPORTS_DROPPED: &str = "worker_reports_dropped_total";
pub const DEAD_LETTERS: &str = "worker_dead_letters_total";
pub const HANDED_BACK: &str = "worker_handed_back_total";
pub const RESOURCE_EXHAUSTED: &str = "worker_resource_exhausted_total";
pub const RETRIES_SCHEDULED: &str = "worker_retries_scheduled_total";
pub const RETRIES_WAITING: &str = "worker_retries_waiting";
pub const RETRIES_DUE: &str = "worker_retries_due_total";

/// Handles of one function's series.
#[derive(Debug)]
pub(crate) struct FunctionMetrics {
    name: String,
    pub in_flight: Gauge,
    /// Calls waiting in the wait stream.
    pub pending: Gauge,
    /// Calls moved to the wait stream because the function had no room.
    pub waited: Counter,
    pub duration: Histogram,
    /// Failed attempts stored to be tried again.
    pub retries_scheduled: Counter,
    /// `worker_calls_total` by status code; a function answers with few distinct codes, so a
    /// short list beats a map. Never held across an await.
    calls: Mutex<Vec<(u16, Counter)>>,
}

impl FunctionMetrics {
    pub fn new(function: &FunctionName) -> Self {
        let name = function.as_str().to_owned();
        Self {
            in_flight: gauge!(IN_FLIGHT, "function_name" => name.clone()),
            pending: gauge!(PENDING, "function_name" => name.clone()),
            waited: counter!(WAITED, "function_name" => name.clone()),
            duration: histogram!(CALL_DURATION, "function_name" => name.clone()),
            retries_scheduled: counter!(RETRIES_SCHEDULED, "function_name" => name.clone()),
            calls: Mutex::new(Vec::new()),
            name,
        }
    }

    pub fn call_done(&self, code: u16) {
        let Ok(mut calls) = self.calls.lock() else {
            return;
        };
        if let Some((_, c)) = calls.iter().find(|(k, _)| *k == code) {
            c.increment(1);
            return;
        }
        let c =
            counter!(CALLS_TOTAL, "function_name" => self.name.clone(), "code" => code.to_string());
        c.increment(1);
        calls.push((code, c));
    }
}

/// Process-wide series without labels.
#[derive(Debug, Clone)]
pub(crate) struct WorkerMetrics {
    pub consumers: Gauge,
    pub callback_queue_depth: Gauge,
    pub callbacks_delivered: Counter,
    pub callback_failures: Counter,
    pub reports_dropped: Counter,
    pub handed_back: Counter,
    /// Calls handed back because this replica ran out of a local resource, by resource.
    pub exhausted: [Counter; 3],
}

impl WorkerMetrics {
    pub fn new() -> Self {
        Self {
            consumers: gauge!(CONSUMERS),
            callback_queue_depth: gauge!(CALLBACK_QUEUE_DEPTH),
            callbacks_delivered: counter!(CALLBACKS_DELIVERED),
            callback_failures: counter!(CALLBACK_FAILURES),
            reports_dropped: counter!(REPORTS_DROPPED),
            handed_back: counter!(HANDED_BACK),
            exhausted: [
                crate::outcome::Exhausted::FileDescriptors,
                crate::outcome::Exhausted::Memory,
                crate::outcome::Exhausted::Ports,
            ]
            .map(|r| counter!(RESOURCE_EXHAUSTED, "resource" => r.label())),
        }
    }
}

impl WorkerMetrics {
    pub fn exhausted(&self, resource: crate::outcome::Exhausted) -> &Counter {
        use crate::outcome::Exhausted;
        match resource {
            Exhausted::FileDescriptors => &self.exhausted[0],
            Exhausted::Memory => &self.exhausted[1],
            Exhausted::Ports => &self.exhausted[2],
        }
    }
}

/// Calls of a shard not yet dispatched.
pub(crate) fn shard_pending(shard: u32) -> Gauge {
    gauge!(SHARD_PENDING, "shard" => shard.to_string())
}

/// Counts a dead letter; rare, so the label lookup is fine here.
pub(crate) fn dead_letter(kind: &'static str, function: String) {
    counter!(DEAD_LETTERS, "kind" => kind, "function_name" => function).increment(1);
}
