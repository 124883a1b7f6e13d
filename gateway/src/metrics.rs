//! The gateway's Prometheus metrics: OpenFaaS's own names for invocations, plus enqueue latency,
//! refusals by reason and the NATS connection. Handles for the asynchronous hot path are made
//! once per function (`hot::HotFunctions` holds them) so an enqueue costs a few atomic updates,
//! not a registry lookup with label allocation.

use flotilla_runtime::Telemetry;
use metrics::{Counter, Gauge, Histogram};

pub const INVOCATIONS: &str = "gateway_function_invocation_total";
pub const FUNCTION_SECONDS: &str = "gateway_functions_seconds";
pub const ENQUEUE_SECONDS: &str = "gateway_enqueue_seconds";
pub const DUPLICATES: &str = "gateway_enqueue_duplicates_total";
pub const ERRORS: &str = "gateway_http_errors_total";
pub const NATS_CONNECTED: &str = "gateway_nats_connected";
pub const TOPOLOGY_SHARDS: &str = "gateway_topology_shards";
pub const DEAD_LETTER_REPLAYS: &str = "gateway_dead_letter_replays_total";
pub const CANCELS: &str = "gateway_calls_cancelled_total";
pub const STATUS_WRITE_FAILURES: &str = "gateway_status_write_failures_total";

/// One function's handles for accepted asynchronous calls.
pub struct Accepted {
    invocations: Counter,
    seconds: Histogram,
}

impl Accepted {
    /// The handles of `function`, registered with this gateway's recorder.
    pub fn new(telemetry: &Telemetry, function: &str) -> Self {
        let label = telemetry.function_label(function);
        telemetry.register(|| Self {
            invocations: metrics::counter!(INVOCATIONS, "function_name" => label.clone(), "code" => "202"),
            seconds: metrics::histogram!(FUNCTION_SECONDS, "function_name" => label, "code" => "202"),
        })
    }

    fn record(&self, seconds: f64) {
        self.invocations.increment(1);
        self.seconds.record(seconds);
    }
}

/// The gateway's metric handles, in its own recorder.
pub struct Metrics {
    enqueue_seconds: Histogram,
    cancels: Counter,
    status_write_failures: Counter,
    nats_connected: Gauge,
    shards: Gauge,
    /// This gateway's recorder and series cap: renders a scrape, folds idle histogram data in,
    /// registers the series made as calls come.
    telemetry: Telemetry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The handles, after describing every metric. Each function the policy file names gets its
    /// accepted-call and duplicate counters at once (at 0), so `increase()` sees its first event.
    pub fn new<'a>(
        telemetry: Telemetry,
        named: impl Iterator<Item = &'a flotilla_queue::FunctionName>,
    ) -> Self {
        telemetry.register(describe);
        for function in named {
            drop(Accepted::new(&telemetry, function.as_str()));
            let label = telemetry.function_label(function.as_str());
            telemetry
                .register(|| metrics::counter!(DUPLICATES, "function_name" => label))
                .increment(0);
        }
        let metrics = telemetry.register(|| Self {
            enqueue_seconds: metrics::histogram!(ENQUEUE_SECONDS),
            cancels: metrics::counter!(CANCELS),
            status_write_failures: metrics::counter!(STATUS_WRITE_FAILURES),
            nats_connected: metrics::gauge!(NATS_CONNECTED),
            shards: metrics::gauge!(TOPOLOGY_SHARDS),
            telemetry: telemetry.clone(),
        });
        metrics.cancels.increment(0);
        metrics.status_write_failures.increment(0);
        metrics.nats_connected.set(0.0);
        metrics
    }

    /// This gateway's recorder and series cap, for what registers series of its own.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The scrape `/metrics` answers.
    pub fn render(&self) -> String {
        flotilla_runtime::render(self.telemetry.handle(), "flotilla-gateway")
    }

    /// Folds idle histogram data in, so memory stays flat between scrapes.
    pub fn upkeep(&self) {
        self.telemetry.handle().run_upkeep();
    }

    /// An asynchronous call was enqueued (`seconds` from request to PubAck); `function` holds
    /// the function's handles.
    pub fn accepted(&self, function: &Accepted, seconds: f64) {
        self.enqueue_seconds.record(seconds);
        function.record(seconds);
    }

    /// JetStream reported the publish as a duplicate.
    pub fn duplicate(&self, function: &str) {
        let label = self.telemetry.function_label(function);
        self.telemetry
            .register(|| metrics::counter!(DUPLICATES, "function_name" => label))
            .increment(1);
    }

    /// A synchronous call ended with `code` (the function's, or 502/504).
    pub fn sync_call(&self, function: &str, code: u16, seconds: f64) {
        let code = code_label(code);
        let function = self.telemetry.function_label(function);
        self.telemetry.register(|| {
            metrics::counter!(INVOCATIONS, "function_name" => function.clone(), "code" => code.clone())
                .increment(1);
            metrics::histogram!(FUNCTION_SECONDS, "function_name" => function, "code" => code)
                .record(seconds);
        });
    }

    /// A request was refused or failed at the gateway.
    pub fn error(&self, code: u16, reason: &'static str) {
        self.telemetry
            .register(|| metrics::counter!(ERRORS, "code" => code_label(code), "reason" => reason))
            .increment(1);
    }

    /// A dead letter's replay ended with `outcome`: `replayed`, `duplicate` (JetStream already
    /// held this replay), `skipped` or `failed`.
    pub fn replay(&self, function: &str, outcome: &'static str) {
        let label = self.telemetry.function_label(function);
        self.telemetry
            .register(|| metrics::counter!(DEAD_LETTER_REPLAYS, "function_name" => label, "outcome" => outcome))
            .increment(1);
    }

    /// A client cancelled a call.
    pub fn cancelled(&self) {
        self.cancels.increment(1);
    }

    /// The queued status of an accepted call was not stored.
    pub fn status_write_failed(&self) {
        self.status_write_failures.increment(1);
    }

    pub fn nats_connected(&self, up: bool) {
        self.nats_connected.set(if up { 1.0 } else { 0.0 });
    }

    pub fn shards(&self, shards: u32) {
        self.shards.set(f64::from(shards));
    }
}

/// Gives every metric its HELP text (and histograms their unit), in the recorder
/// [`Telemetry::register`] runs it with.
fn describe() {
    metrics::describe_counter!(
        INVOCATIONS,
        "Function calls by function and response code (202 for accepted asynchronous calls)"
    );
    metrics::describe_histogram!(
        FUNCTION_SECONDS,
        metrics::Unit::Seconds,
        "Time to the function's response head (synchronous) or to the PubAck (asynchronous)"
    );
    metrics::describe_histogram!(
        ENQUEUE_SECONDS,
        metrics::Unit::Seconds,
        "Time from request to JetStream PubAck for asynchronous calls"
    );
    metrics::describe_counter!(
        DUPLICATES,
        "Asynchronous calls JetStream dropped as duplicates of an earlier Idempotency-Key or X-Call-Id"
    );
    metrics::describe_counter!(
        ERRORS,
        "Requests refused or failed, by status code and reason"
    );
    metrics::describe_gauge!(NATS_CONNECTED, "1 while the NATS connection is up");
    metrics::describe_gauge!(TOPOLOGY_SHARDS, "Agreed shard count (0 until agreed)");
    metrics::describe_counter!(
        DEAD_LETTER_REPLAYS,
        "Dead letters handled by replay requests, by function and outcome (replayed, duplicate, skipped, failed)"
    );
    metrics::describe_counter!(
        CANCELS,
        "Asynchronous calls cancelled through DELETE /async-call/<id>"
    );
    metrics::describe_counter!(
        STATUS_WRITE_FAILURES,
        "Accepted calls whose queued status JetStream did not store (the call itself was stored)"
    );
    crate::queues::describe();
}

fn code_label(code: u16) -> metrics::SharedString {
    match code {
        200 => metrics::SharedString::const_str("200"),
        202 => metrics::SharedString::const_str("202"),
        _ => metrics::SharedString::from(code.to_string()),
    }
}
