//! The worker's Prometheus metrics. Per-function handles are registered once when a function's
//! pull loop starts, so the call path records into ready handles instead of looking names and
//! labels up (and allocating them) on every call.

use std::sync::Mutex;

use flotilla_queue::FunctionName;
use flotilla_runtime::Telemetry;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub const CALLS_TOTAL: &str = "worker_calls_total";
pub const CALL_DURATION: &str = "worker_call_duration_seconds";
pub const IN_FLIGHT: &str = "worker_in_flight";
pub const PENDING: &str = "worker_pending";
pub const SHARD_PENDING: &str = "worker_shard_pending";
pub const WAITED: &str = "worker_calls_waited_total";
pub const CONCURRENCY_LIMIT: &str = "worker_concurrency_limit";
pub const REFUSALS: &str = "worker_refusals_total";
pub const CONSUMERS: &str = "worker_consumers";
pub const CALLBACK_QUEUE_DEPTH: &str = "worker_callback_queue_depth";
pub const CALLBACKS_DELIVERED: &str = "worker_callbacks_delivered_total";
pub const CALLBACK_FAILURES: &str = "worker_callback_failures_total";
pub const CALLBACKS_REFUSED: &str = "worker_callbacks_refused_total";
pub const REPORTS_DROPPED: &str = "worker_reports_dropped_total";
pub const DEAD_LETTERS: &str = "worker_dead_letters_total";
pub const HANDED_BACK: &str = "worker_handed_back_total";
pub const RESOURCE_EXHAUSTED: &str = "worker_resource_exhausted_total";
pub const RETRIES_SCHEDULED: &str = "worker_retries_scheduled_total";
pub const RETRIES_WAITING: &str = "worker_retries_waiting";
pub const RETRIES_DUE: &str = "worker_retries_due_total";
pub const NATS_CONNECTED: &str = "worker_nats_connected";
pub const CANCELLED: &str = "worker_calls_cancelled_total";
pub const STATUS_WRITE_FAILURES: &str = "worker_status_write_failures_total";
pub const STATUS_ENDS_WAITING: &str = "worker_status_ends_waiting";

/// Gives every metric its HELP text (and histograms their unit), in the recorder
/// [`Telemetry::register`] runs it with. Safe to call more than once.
fn describe() {
    describe_counter!(
        CANCELLED,
        "Calls a client cancelled that this replica settled without a callback: not started, not retried, or aborted while running"
    );
    describe_counter!(
        STATUS_WRITE_FAILURES,
        "Call status changes JetStream did not store (the call itself went on)"
    );
    describe_gauge!(
        STATUS_ENDS_WAITING,
        "Calls that ended and wait for their final status record to be stored before their ack (at most 10,000: beyond, ending calls keep their place in the replica)"
    );
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CALLS_TOTAL,
        "Finished attempts by function and status code (502 when the function was unreachable, 504 when it timed out)"
    );
    describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "Time from the request to the function to its full response"
    );
    describe_gauge!(IN_FLIGHT, "Calls this replica is making now, by function");
    describe_gauge!(
        PENDING,
        "Calls waiting in the wait stream for their function to have room, by function"
    );
    describe_gauge!(
        SHARD_PENDING,
        "Calls of a shard not yet dispatched, by shard"
    );
    describe_counter!(
        WAITED,
        "Calls moved to the wait stream because their function had no room, by function"
    );
    describe_gauge!(
        CONCURRENCY_LIMIT,
        "Calls of a function this replica may have in flight now: its share of the fixed concurrency, or the limit learned from the function's refusals, by function"
    );
    describe_counter!(
        REFUSALS,
        "Answers of a function under adaptive control saying it is full (429, or 503 with Retry-After): the call waited again without using an attempt, by function"
    );
    describe_gauge!(
        CONSUMERS,
        "JetStream consumers this replica is pulling from"
    );
    describe_gauge!(CALLBACK_QUEUE_DEPTH, "Callbacks queued for delivery");
    describe_counter!(CALLBACKS_DELIVERED, "Callbacks the receiver accepted");
    describe_counter!(
        CALLBACK_FAILURES,
        "Callbacks given up on after their attempts, or dropped with the queue full"
    );
    describe_counter!(
        CALLBACKS_REFUSED,
        "Callbacks not sent because the callback policy refuses their target (never connected)"
    );
    describe_counter!(
        REPORTS_DROPPED,
        "Reports not published to NATS because the report queue was full"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Calls moved to the dead letters, by kind (poison, exhausted, redelivered) and function"
    );
    describe_counter!(
        HANDED_BACK,
        "Calls handed back to NATS unstarted or unfinished, to be delivered again (shutdown, local trouble)"
    );
    describe_counter!(
        RESOURCE_EXHAUSTED,
        "Calls handed back because this replica ran out of a local resource, by resource"
    );
    describe_counter!(
        RETRIES_SCHEDULED,
        "Failed attempts stored to be tried again, by function"
    );
    describe_gauge!(RETRIES_WAITING, "Stored retries not yet due, by shard");
    describe_counter!(
        RETRIES_DUE,
        "Stored retries that came due and were moved to their function's wait subject"
    );
    describe_gauge!(NATS_CONNECTED, "1 while the NATS connection is up");
}

/// `worker_nats_connected`, set at every scrape.
pub(crate) fn nats_connected(telemetry: &Telemetry) -> Gauge {
    telemetry.register(|| gauge!(NATS_CONNECTED))
}

/// Dead-letter kinds a worker writes, for the series made at start.
const DEAD_LETTER_KINDS: [&str; 4] = [
    flotilla_queue::dead_letter::KIND_POISON,
    flotilla_queue::dead_letter::KIND_EXHAUSTED,
    flotilla_queue::dead_letter::KIND_REDELIVERED,
    flotilla_queue::dead_letter::KIND_EXPIRED,
];

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
    /// This replica's limit for the function now.
    pub limit: Gauge,
    /// Refusals under adaptive control.
    pub refusals: Counter,
    /// `worker_calls_total` by status code; a function answers with few distinct codes, so a
    /// short list beats a map. Never held across an await.
    calls: Mutex<Vec<(u16, Counter)>>,
    /// Where the counter of a status code not seen before is registered.
    telemetry: Telemetry,
}

impl FunctionMetrics {
    /// The handles of `function`, registered with `telemetry`.
    pub fn new(telemetry: &Telemetry, function: &FunctionName) -> Self {
        let name = telemetry.function_label(function.as_str());
        telemetry.register(|| {
            // Functions beyond the series cap share `~other`: counters and the in-flight gauge
            // add up there, but a waiting count each function sets would overwrite the others'.
            let (pending, limit) = if name == flotilla_runtime::OTHER_FUNCTIONS {
                (Gauge::noop(), Gauge::noop())
            } else {
                (
                    gauge!(PENDING, "function_name" => name.clone()),
                    gauge!(CONCURRENCY_LIMIT, "function_name" => name.clone()),
                )
            };
            Self {
                in_flight: gauge!(IN_FLIGHT, "function_name" => name.clone()),
                pending,
                waited: counter!(WAITED, "function_name" => name.clone()),
                duration: histogram!(CALL_DURATION, "function_name" => name.clone()),
                retries_scheduled: counter!(RETRIES_SCHEDULED, "function_name" => name.clone()),
                limit,
                refusals: counter!(REFUSALS, "function_name" => name.clone()),
                calls: Mutex::new(Vec::new()),
                telemetry: telemetry.clone(),
                name,
            }
        })
    }

    pub fn call_done(&self, code: u16) {
        let Ok(mut calls) = self.calls.lock() else {
            return;
        };
        if let Some((_, c)) = calls.iter().find(|(k, _)| *k == code) {
            c.increment(1);
            return;
        }
        let c = self.telemetry.register(|| {
            counter!(CALLS_TOTAL, "function_name" => self.name.clone(), "code" => code.to_string())
        });
        c.increment(1);
        calls.push((code, c));
    }
}

/// The worker's series without labels, and its recorder for the rest.
#[derive(Debug, Clone)]
pub(crate) struct WorkerMetrics {
    pub consumers: Gauge,
    pub callback_queue_depth: Gauge,
    pub callbacks_delivered: Counter,
    pub callback_failures: Counter,
    /// Callbacks the callback policy refused: never connected.
    pub callbacks_refused: Counter,
    pub reports_dropped: Counter,
    pub handed_back: Counter,
    pub cancelled: Counter,
    /// Calls handed back because this replica ran out of a local resource, by resource.
    pub exhausted: [Counter; 3],
    /// Call status changes JetStream did not store.
    pub status_write_failures: Counter,
    /// Ended calls whose final record (and so their ack) waits for the status writer.
    pub status_ends_waiting: Gauge,
    /// This worker's recorder and series cap, for the series made as functions and shards come.
    telemetry: Telemetry,
}

impl WorkerMetrics {
    /// The worker's handles in `telemetry`, after describing every metric. Each function the
    /// policy file names gets its series at once (counters at 0), so `increase()` sees its first
    /// event.
    pub fn new<'a>(telemetry: Telemetry, named: impl Iterator<Item = &'a FunctionName>) -> Self {
        telemetry.register(describe);
        nats_connected(&telemetry).set(0.0);
        for function in named {
            // Registering is enough: the recorder keeps the series from now on.
            drop(FunctionMetrics::new(&telemetry, function));
            let label = telemetry.function_label(function.as_str());
            for kind in DEAD_LETTER_KINDS {
                telemetry
                    .register(
                        || counter!(DEAD_LETTERS, "kind" => kind, "function_name" => label.clone()),
                    )
                    .increment(0);
            }
        }
        let metrics = telemetry.register(|| Self {
            consumers: gauge!(CONSUMERS),
            callback_queue_depth: gauge!(CALLBACK_QUEUE_DEPTH),
            callbacks_delivered: counter!(CALLBACKS_DELIVERED),
            callback_failures: counter!(CALLBACK_FAILURES),
            callbacks_refused: counter!(CALLBACKS_REFUSED),
            reports_dropped: counter!(REPORTS_DROPPED),
            handed_back: counter!(HANDED_BACK),
            cancelled: counter!(CANCELLED),
            exhausted: [
                crate::outcome::Exhausted::FileDescriptors,
                crate::outcome::Exhausted::Memory,
                crate::outcome::Exhausted::Ports,
            ]
            .map(|r| counter!(RESOURCE_EXHAUSTED, "resource" => r.label())),
            status_write_failures: counter!(STATUS_WRITE_FAILURES),
            status_ends_waiting: gauge!(STATUS_ENDS_WAITING),
            telemetry: telemetry.clone(),
        });
        // Incremented where it happens (`status.rs`); registered now so it is scraped at 0.
        metrics.status_write_failures.increment(0);
        metrics.status_ends_waiting.set(0.0);
        metrics
    }

    /// The handles of `function`, made when this replica first sees it.
    pub fn function(&self, function: &FunctionName) -> FunctionMetrics {
        FunctionMetrics::new(&self.telemetry, function)
    }

    /// Calls of `shard` not yet dispatched.
    pub fn shard_pending(&self, shard: u32) -> Gauge {
        self.telemetry
            .register(|| gauge!(SHARD_PENDING, "shard" => shard.to_string()))
    }

    /// Stored retries of `shard` not yet due.
    pub fn retries_waiting(&self, shard: u32) -> Gauge {
        self.telemetry
            .register(|| gauge!(RETRIES_WAITING, "shard" => shard.to_string()))
    }

    /// Stored retries of `shard` that came due.
    pub fn retries_due(&self, shard: u32) -> Counter {
        self.telemetry
            .register(|| counter!(RETRIES_DUE, "shard" => shard.to_string()))
    }

    /// Counts a dead letter; rare, so the label lookup is fine here.
    pub fn dead_letter(&self, kind: &'static str, function: &str) {
        let label = self.telemetry.function_label(function);
        self.telemetry
            .register(|| counter!(DEAD_LETTERS, "kind" => kind, "function_name" => label))
            .increment(1);
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
