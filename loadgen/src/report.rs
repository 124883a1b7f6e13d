//! The report of a run: one serializable structure (what `--json` prints), a Markdown table a
//! person can paste into a ticket, and the throughput series the plot draws.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::audit::Audit;
use crate::ceiling::Ceiling;
use crate::config::{ModelKind, TargetKind};
use crate::cpu::CpuPerCall;
use crate::numbers::thousands;

/// Bumped when a field changes meaning or disappears; new fields do not bump it.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub loadgen_version: &'static str,
    /// Unix seconds at which the run started.
    pub started_at_unix_s: u64,
    pub target: TargetInfo,
    pub load: LoadInfo,
    pub enqueue: Enqueue,
    pub completion: Completion,
    /// Failed enqueue requests by kind: `status_<code>`, `connect`, `timeout`, `http`,
    /// `202_without_call_id`.
    pub errors: BTreeMap<String, u64>,
    /// Completed calls by the function's status as the callback reported it
    /// (`X-Function-Status`).
    pub function_status: BTreeMap<String, u64>,
    /// Calls the built-in function answered 429 for want of capacity (attempts, not calls).
    pub function_refusals: Option<u64>,
    /// With `--priority-mix` and the built-in function: each priority's start latency, from the
    /// gateway's acceptance (`X-Start-Time`) to the call's first arrival at the function.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub start_latency_ms: BTreeMap<String, Percentiles>,
    /// With `--fairness-keys` and the built-in function: how start latency spreads across the
    /// keys. `median`: the percentiles, across keys, of each key's median start latency; `p99`:
    /// likewise of each key's p99 (`count` is the number of keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub key_start_latency_ms: BTreeMap<String, Percentiles>,
    pub audit: Audit,
    pub ceiling: Option<Ceiling>,
    pub ratios: Option<Ratios>,
    pub series: Series,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    pub kind: TargetKind,
    pub gateway: String,
    pub callback_url: String,
    /// Local fleet only.
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    pub worker_concurrency: Option<u32>,
    /// Each worker's `--max-in-flight`.
    pub worker_max_in_flight: Option<u32>,
    pub function_latency: Option<String>,
    pub failure_rate: Option<f64>,
    pub response_size: Option<usize>,
    pub memory_streams: Option<bool>,
    /// Whether the local fleet kept call status.
    pub call_status: Option<bool>,
    /// The built-in function's capacity schedule (`--function-capacity`).
    pub function_capacity: Option<String>,
    /// Whether the local workers learned each function's concurrency.
    pub adaptive: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    pub model: ModelKind,
    /// Open loop: the rate of each step, calls per second.
    pub rates: Vec<f64>,
    /// Open loop: length of each step but the last, seconds.
    pub step_s: Option<f64>,
    /// Closed loop: requests in flight.
    pub concurrency: Option<usize>,
    pub duration_s: f64,
    pub count: Option<u64>,
    pub functions: usize,
    pub skew: f64,
    pub body_size: usize,
    /// True when every call was enqueued before the workers started.
    pub backlog: bool,
    /// True when calls asked for a callback (then a completion is a callback at the sink);
    /// false with `--no-callbacks` (then it is the call reaching the built-in function).
    pub callbacks: bool,
    /// `--audit status`: a call completes when the status API reports it final.
    #[serde(default)]
    pub status_api: bool,
    /// Calls per request (`--batch`; 1: one call a request).
    #[serde(default)]
    pub batch: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Enqueue {
    /// Requests sent.
    pub sent: u64,
    /// 202 answers.
    pub accepted: u64,
    /// Every other outcome (see `errors`).
    pub errors: u64,
    /// Seconds from the first send to the last answer.
    pub window_s: f64,
    /// Accepted calls per second over `window_s`.
    pub rate_per_s: f64,
    /// Intended send time (open loop) or send time (closed loop) to 202.
    pub latency_ms: Percentiles,
    /// With `--local --backlog` on Linux: the CPU each accepted call cost while the backlog was
    /// enqueued (the gateway's share, with the load's own requests and nats-server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_call: Option<CpuPerCall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// Accepted calls whose callback arrived.
    pub completed: u64,
    /// Seconds from the start of sending (with `backlog`: from the workers' start) to the last
    /// first callback.
    pub window_s: f64,
    /// Completed calls per second over `window_s`.
    pub rate_per_s: f64,
    /// Acceptance by the gateway (`X-Start-Time`) to callback arrival.
    pub latency_ms: Percentiles,
    /// With `--local` on Linux: the CPU each completed call cost, from the start of sending
    /// (with `backlog`: from the workers' start) to the last completion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_call: Option<CpuPerCall>,
}

/// Flotilla's rates divided by the ceiling's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    /// Enqueue rate / HTTP → JetStream ceiling (the gateway's goal is ≥ 0.8).
    pub enqueue_vs_http_to_jetstream: f64,
    /// Completion rate / pull → POST → ack ceiling (the workers' goal is ≥ 0.8 for calls
    /// without callbacks; meaningful when the workers, not the enqueue rate, limit completions:
    /// use `--backlog`).
    pub completion_vs_pull_post_ack: f64,
    /// Completion rate / pull → POST → POST → ack ceiling: the like-for-like yardstick of calls
    /// with callbacks (two HTTP requests each).
    pub completion_vs_pull_post_post_ack: f64,
    /// The ratio that compares like with like: `completion_vs_pull_post_post_ack` when the calls
    /// had callbacks, `completion_vs_pull_post_ack` when not.
    pub completion_vs_matching_ceiling: f64,
    /// Enqueue rate / pooled HTTP POSTs.
    pub enqueue_vs_http_post: f64,
    /// Enqueue rate / pipelined JetStream publishes: batch enqueue's yardstick.
    pub enqueue_vs_pipelined_publish: f64,
    /// Completion rate / pull → POST → ack with a consumer per function at the run's function
    /// count: how much of what that layout allows on its own the fleet reaches.
    pub completion_vs_per_function_pull_post_ack: f64,
    /// Completion rate / the full pipeline with every stage at once (HTTP → JetStream while
    /// pull → POST → POST → ack): the yardstick of a whole run. Like for like when the calls had
    /// callbacks and enqueue and completion ran at the same time (no `--backlog`).
    pub completion_vs_full_pipeline: f64,
}

impl Ratios {
    pub fn of(enqueue: f64, completion: f64, c: &Ceiling, callbacks: bool) -> Self {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let one = div(completion, c.pull_post_ack_per_s);
        let two = div(completion, c.pull_post_post_ack_per_s);
        Self {
            enqueue_vs_http_to_jetstream: div(enqueue, c.http_to_jetstream_per_s),
            completion_vs_pull_post_ack: one,
            completion_vs_pull_post_post_ack: two,
            completion_vs_matching_ceiling: if callbacks { two } else { one },
            enqueue_vs_http_post: div(enqueue, c.http_post_per_s),
            enqueue_vs_pipelined_publish: div(enqueue, c.pipelined_publish_per_s),
            completion_vs_per_function_pull_post_ack: div(
                completion,
                c.per_function_pull_post_ack_per_s,
            ),
            completion_vs_full_pipeline: div(completion, c.full_pipeline_per_s),
        }
    }
}

/// Throughput over time, in calls per second per bucket, from the start of sending.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Series {
    pub bucket_s: f64,
    /// 202s per second in each bucket.
    pub enqueue_per_s: Vec<f64>,
    /// First callbacks per second in each bucket.
    pub completion_per_s: Vec<f64>,
}

impl Series {
    /// Buckets `enqueue_ns` and `completion_ns` (offsets from the clock origin) from `start_ns`.
    pub fn build(start_ns: u64, enqueue_ns: &[u64], completion_ns: &[u64]) -> Self {
        let last = enqueue_ns
            .iter()
            .chain(completion_ns)
            .copied()
            .max()
            .unwrap_or(start_ns)
            .saturating_sub(start_ns);
        let span_s = last as f64 / 1e9;
        // About 150 buckets, on a round length.
        let bucket_s = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
            .into_iter()
            .find(|b| span_s / b <= 150.0)
            .unwrap_or(60.0);
        let n = (span_s / bucket_s).floor() as usize + 1;
        let fill = |ns: &[u64]| {
            let mut v = vec![0.0; n];
            for &t in ns {
                let i = (t.saturating_sub(start_ns) as f64 / 1e9 / bucket_s) as usize;
                if let Some(b) = v.get_mut(i) {
                    *b += 1.0 / bucket_s;
                }
            }
            v
        };
        Self {
            bucket_s,
            enqueue_per_s: fill(enqueue_ns),
            completion_per_s: fill(completion_ns),
        }
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// The Markdown summary: what ran, the stage table, then the ceiling, errors and audit.
    pub fn render(&self) -> String {
        let mut o = String::new();
        self.render_header(&mut o);
        self.render_stages(&mut o);
        self.render_starts(&mut o);
        self.render_ceiling(&mut o);
        self.render_errors(&mut o);
        self.render_audit(&mut o);
        o
    }

    /// The title and what was measured under which load.
    fn render_header(&self, o: &mut String) {
        let l = &self.load;
        let _ = writeln!(o, "### flotilla-loadgen {}", self.loadgen_version);
        let _ = writeln!(o);
        let _ = writeln!(o, "- target: {}", self.target.describe());
        let _ = writeln!(
            o,
            "- load: {}, {} function(s) (skew {}), {} B bodies, {:.1} s{}{}",
            l.describe_model(),
            l.functions,
            l.skew,
            l.body_size,
            l.duration_s,
            l.count
                .map(|c| format!(", at most {c} calls"))
                .unwrap_or_default(),
            if l.backlog {
                ", backlog first (workers start after enqueue)"
            } else {
                ""
            },
        );
        if l.status_api {
            let _ = writeln!(
                o,
                "- no callbacks: a call completes when the status API reports it final"
            );
        } else if !l.callbacks {
            let _ = writeln!(
                o,
                "- no callbacks: a call completes when it reaches the built-in function"
            );
        }
        let _ = writeln!(o);
    }

    /// The table: enqueue and end to end, each against its ceiling.
    fn render_stages(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "| stage | calls | rate/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | vs ceiling |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        let (vs_in, vs_out) = self.vs_ceiling();
        stage_row(
            o,
            "enqueue (202)",
            self.enqueue.accepted,
            self.enqueue.rate_per_s,
            &self.enqueue.latency_ms,
            &vs_in,
        );
        stage_row(
            o,
            match (self.load.callbacks, self.load.status_api) {
                (true, _) => "end to end (callback)",
                (false, true) => "end to end (status API)",
                (false, false) => "end to end (function)",
            },
            self.completion.completed,
            self.completion.rate_per_s,
            &self.completion.latency_ms,
            &vs_out,
        );
        let _ = writeln!(o);
        if let Some(cpu) = &self.enqueue.cpu_us_per_call {
            let _ = writeln!(o, "- CPU per call enqueued: {}", cpu.render());
        }
        if let Some(cpu) = &self.completion.cpu_us_per_call {
            let _ = writeln!(o, "- CPU per call completed: {}", cpu.render());
        }
        if self.enqueue.cpu_us_per_call.is_some() || self.completion.cpu_us_per_call.is_some() {
            let _ = writeln!(o);
        }
    }

    /// The "vs ceiling" cells of the enqueue and the end-to-end rows.
    fn vs_ceiling(&self) -> (String, String) {
        let (Some(r), Some(c)) = (&self.ratios, &self.ceiling) else {
            return ("no ceiling".into(), "no ceiling".into());
        };
        let vs_in = if self.load.batch > 1 {
            format!(
                "{:.2} of pipelined JetStream publish {}/s",
                r.enqueue_vs_pipelined_publish,
                thousands(c.pipelined_publish_per_s)
            )
        } else {
            format!(
                "{:.2} of HTTP→JetStream {}/s",
                r.enqueue_vs_http_to_jetstream,
                thousands(c.http_to_jetstream_per_s)
            )
        };
        let vs_out = if self.load.callbacks {
            // The full pipeline runs enqueue and completion at once, as a run without a backlog.
            let whole = if self.load.backlog {
                String::new()
            } else {
                format!(
                    "{:.2} of full pipeline {}/s; ",
                    r.completion_vs_full_pipeline,
                    thousands(c.full_pipeline_per_s)
                )
            };
            format!(
                "{whole}{:.2} of pull→POST→POST→ack {}/s ({:.2} of pull→POST→ack {}/s)",
                r.completion_vs_pull_post_post_ack,
                thousands(c.pull_post_post_ack_per_s),
                r.completion_vs_pull_post_ack,
                thousands(c.pull_post_ack_per_s)
            )
        } else {
            format!(
                "{:.2} of pull→POST→ack {}/s",
                r.completion_vs_pull_post_ack,
                thousands(c.pull_post_ack_per_s)
            )
        };
        (vs_in, vs_out)
    }

    fn render_ceiling(&self, o: &mut String) {
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                o,
                "- ceiling (same run, {} B, {} in flight, {} storage): HTTP→JetStream {}/s · \
                 pull→POST→ack {}/s · pull→POST→POST→ack {}/s · pooled HTTP POSTs {}/s · \
                 pipelined JetStream publish {}/s · full pipeline {}/s",
                c.body_size,
                c.concurrency,
                c.storage,
                thousands(c.http_to_jetstream_per_s),
                thousands(c.pull_post_ack_per_s),
                thousands(c.pull_post_post_ack_per_s),
                thousands(c.http_post_per_s),
                thousands(c.pipelined_publish_per_s),
                thousands(c.full_pipeline_per_s)
            );
            // Like for like only without callbacks: the measurement makes one POST per call.
            let measured = c.functions > 1 && c.per_function_pull_post_ack_per_s > 0.0;
            if let (true, false, Some(r)) = (measured, self.load.callbacks, &self.ratios) {
                let _ = writeln!(
                    o,
                    "- with a consumer per function ({} functions, one stream): pull→POST→ack \
                     {}/s; the fleet reached {:.2} of it",
                    c.functions,
                    thousands(c.per_function_pull_post_ack_per_s),
                    r.completion_vs_per_function_pull_post_ack
                );
            }
        }
    }

    /// Failed enqueues by kind, and the functions' statuses as the callbacks reported them.
    fn render_errors(&self, o: &mut String) {
        let errors = counts(&self.errors, |k, v| format!("{k} {v}"));
        let _ = writeln!(
            o,
            "- enqueue errors: {errors} (of {} sent)",
            thousands(self.enqueue.sent as f64)
        );
        let statuses = counts(&self.function_status, |k, v| format!("{k} × {v}"));
        let source = if self.load.status_api {
            "the status API"
        } else {
            "callbacks"
        };
        let _ = writeln!(o, "- function status in {source}: {statuses}");
        if let Some(refused) = self.function_refusals.filter(|r| *r > 0) {
            let _ = writeln!(
                o,
                "- the built-in function refused {} calls at its capacity (429)",
                thousands(refused as f64)
            );
        }
    }

    /// Start latency by priority, highest first, and across keys, when the run sent priorities
    /// or keys.
    fn render_starts(&self, o: &mut String) {
        if self.start_latency_ms.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "| start latency (accepted → function) | calls | p50 | p90 | p99 | max |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
        let row = |o: &mut String, label: String, calls: String, p: &Percentiles| {
            let (p50, p90, p99, max) = (ms(p.p50), ms(p.p90), ms(p.p99), ms(p.max));
            let _ = writeln!(o, "| {label} | {calls} | {p50} | {p90} | {p99} | {max} |");
        };
        for name in ["high", "normal", "low"] {
            if let Some(p) = self.start_latency_ms.get(name) {
                row(o, name.to_owned(), thousands(p.count as f64), p);
            }
        }
        for (name, what) in [("median", "each key's median"), ("p99", "each key's p99")] {
            if let Some(p) = self.key_start_latency_ms.get(name) {
                let label = format!("{what}, across {} keys", thousands(p.count as f64));
                row(o, label, String::new(), p);
            }
        }
        let _ = writeln!(o);
    }

    fn render_audit(&self, o: &mut String) {
        let a = &self.audit;
        let _ = writeln!(
            o,
            "- audit: accepted {} · completed {} · lost {} · duplicates {} · unexpected {} \
             (waited {:.1} s for stragglers) → {}",
            thousands(a.accepted as f64),
            thousands(a.completed as f64),
            thousands(a.lost as f64),
            thousands(a.duplicates as f64),
            thousands(a.unexpected as f64),
            a.drain_wait_s,
            if a.ok { "OK" } else { "CALLS LOST" }
        );
        if let Some(states) = &a.states {
            let by_state = counts(states, |k, v| format!("{k} × {v}"));
            let _ = writeln!(o, "  - final states (status API): {by_state}");
        }
        if !a.lost_ids.is_empty() {
            let _ = writeln!(o, "  - first lost: {}", a.lost_ids.join(", "));
        }
        if !a.duplicate_ids.is_empty() {
            let _ = writeln!(o, "  - first duplicated: {}", a.duplicate_ids.join(", "));
        }
    }
}

impl TargetInfo {
    /// The fleet as the summary names it.
    fn describe(&self) -> String {
        match self.kind {
            TargetKind::Local => format!(
                "local fleet: {} shard(s) × {} replica(s), function concurrency {}, {} calls in \
                 flight per worker, function latency {}, failure rate {}, {} B responses, {} streams{}",
                self.shards.unwrap_or(0),
                self.replicas.unwrap_or(0),
                self.worker_concurrency.unwrap_or(0),
                self.worker_max_in_flight.unwrap_or(0),
                self.function_latency.as_deref().unwrap_or("?"),
                self.failure_rate.unwrap_or(0.0),
                self.response_size.unwrap_or(0),
                if self.memory_streams == Some(true) {
                    "memory"
                } else {
                    "file"
                },
                if self.call_status == Some(false) {
                    ", no call status"
                } else {
                    ""
                },
            ),
            TargetKind::Gateway => {
                format!(
                    "gateway {} (callbacks to {})",
                    self.gateway, self.callback_url
                )
            }
        }
    }
}

impl LoadInfo {
    /// The model with its rate or concurrency: `open loop, 1,000 calls/s`.
    fn describe_model(&self) -> String {
        let model = self.model.describe();
        match (self.model, self.rates.as_slice()) {
            (ModelKind::Open, [rate]) => format!("{model}, {} calls/s", thousands(*rate)),
            (ModelKind::Open, rates) => format!(
                "{model}, stepped {} calls/s",
                rates
                    .iter()
                    .map(|r| thousands(*r))
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
            (ModelKind::Closed, _) => {
                format!("{model}, {} in flight", self.concurrency.unwrap_or(0))
            }
        }
    }
}

/// One row of the stage table.
fn stage_row(o: &mut String, name: &str, calls: u64, rate: f64, p: &Percentiles, vs: &str) {
    let _ = writeln!(
        o,
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {vs} |",
        thousands(calls as f64),
        thousands(rate),
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.p999),
        ms(p.max)
    );
}

/// Each key with its count (grouped by thousands), comma separated, or `none`.
fn counts(by_key: &BTreeMap<String, u64>, item: impl Fn(&str, String) -> String) -> String {
    if by_key.is_empty() {
        return "none".into();
    }
    by_key
        .iter()
        .map(|(k, v)| item(k, thousands(*v as f64)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How start latency spreads across keys: the percentiles, across keys, of each key's median
/// (`median`) and p99 (`p99`); empty without keys.
pub fn across_keys(
    by_key: &std::collections::HashMap<u32, Histogram<u64>>,
) -> BTreeMap<String, Percentiles> {
    let mut spread = BTreeMap::new();
    for (name, q) in [("median", 0.5), ("p99", 0.99)] {
        let mut h = crate::stats::latency_histogram();
        for key in by_key.values() {
            h.saturating_record(key.value_at_quantile(q));
        }
        if !h.is_empty() {
            spread.insert(name.to_owned(), Percentiles::of(&h));
        }
    }
    spread
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local run, open loop in two steps, against a ceiling, with errors and a lost call.
    fn local_open() -> Report {
        let ceiling = Ceiling {
            http_to_jetstream_per_s: 40000.0,
            pull_post_ack_per_s: 38000.0,
            pull_post_post_ack_per_s: 20000.0,
            http_post_per_s: 90000.0,
            pipelined_publish_per_s: 150000.0,
            full_pipeline_per_s: 12000.0,
            per_function_pull_post_ack_per_s: 30000.0,
            functions: 1,
            duration_s: 2.0,
            concurrency: 64,
            body_size: 256,
            storage: "memory",
        };
        Report {
            schema: SCHEMA,
            loadgen_version: "0.1.0",
            started_at_unix_s: 1,
            target: TargetInfo {
                kind: TargetKind::Local,
                gateway: "http://127.0.0.1:1".into(),
                callback_url: "http://127.0.0.1:2/callback".into(),
                shards: Some(2),
                replicas: Some(3),
                worker_concurrency: Some(64),
                worker_max_in_flight: Some(256),
                function_latency: Some("5ms".into()),
                failure_rate: Some(0.25),
                response_size: Some(128),
                memory_streams: Some(true),
                call_status: Some(true),
                function_capacity: None,
                adaptive: Some(true),
            },
            load: LoadInfo {
                model: ModelKind::Open,
                rates: vec![1000.0, 2500.0],
                step_s: Some(5.0),
                concurrency: None,
                duration_s: 10.0,
                count: Some(20000),
                functions: 4,
                skew: 1.5,
                body_size: 256,
                backlog: true,
                callbacks: true,
                status_api: false,
                batch: 1,
            },
            enqueue: Enqueue {
                sent: 17502,
                accepted: 17500,
                errors: 2,
                window_s: 10.0,
                rate_per_s: 1750.0,
                latency_ms: Percentiles {
                    count: 17500,
                    mean: 1.2,
                    p50: 0.9,
                    p90: 12.34,
                    p99: 150.2,
                    p999: 300.0,
                    max: 999.9,
                },
                cpu_us_per_call: None,
            },
            completion: Completion {
                completed: 17499,
                window_s: 11.0,
                rate_per_s: 1590.8,
                latency_ms: Percentiles::default(),
                cpu_us_per_call: None,
            },
            errors: BTreeMap::from([("status_503".into(), 1), ("timeout".into(), 1)]),
            function_status: BTreeMap::from([("200".into(), 13000), ("500".into(), 4499)]),
            function_refusals: None,
            start_latency_ms: BTreeMap::new(),
            key_start_latency_ms: BTreeMap::new(),
            audit: Audit {
                accepted: 17500,
                completed: 17499,
                lost: 1,
                duplicates: 1,
                unexpected: 0,
                lost_ids: vec!["c-1".into()],
                duplicate_ids: vec!["c-2".into()],
                drain_wait_s: 20.04,
                ok: false,
                states: None,
            },
            ceiling: Some(ceiling.clone()),
            ratios: Some(Ratios::of(1750.0, 1590.8, &ceiling, true)),
            series: Series::default(),
        }
    }

    /// A run against an existing gateway, closed loop, no ceiling, no callbacks.
    fn gateway_closed() -> Report {
        let mut r = local_open();
        r.target = TargetInfo {
            kind: TargetKind::Gateway,
            gateway: "http://gw:8080".into(),
            callback_url: "http://me:9000/callback".into(),
            shards: None,
            replicas: None,
            worker_concurrency: None,
            worker_max_in_flight: None,
            function_latency: None,
            failure_rate: None,
            response_size: None,
            memory_streams: None,
            call_status: None,
            function_capacity: None,
            adaptive: None,
        };
        r.load.model = ModelKind::Closed;
        r.load.rates = Vec::new();
        r.load.step_s = None;
        r.load.concurrency = Some(64);
        r.load.count = None;
        r.load.backlog = false;
        r.load.callbacks = false;
        r.errors.clear();
        r.function_status.clear();
        r.audit = Audit {
            accepted: 10,
            completed: 10,
            lost: 0,
            duplicates: 0,
            unexpected: 0,
            lost_ids: Vec::new(),
            duplicate_ids: Vec::new(),
            drain_wait_s: 0.0,
            states: None,
            ok: true,
        };
        r.ceiling = None;
        r.ratios = None;
        r
    }

    #[test]
    fn the_summary_has_every_section_in_order() {
        let text = local_open().render();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "### flotilla-loadgen 0.1.0",
                "",
                "- target: local fleet: 2 shard(s) × 3 replica(s), function concurrency 64, 256 calls in flight per worker, function latency 5ms, failure rate 0.25, 128 B responses, memory streams",
                "- load: open loop, stepped 1,000 → 2,500 calls/s, 4 function(s) (skew 1.5), 256 B bodies, 10.0 s, at most 20000 calls, backlog first (workers start after enqueue)",
                "",
                "| stage | calls | rate/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | vs ceiling |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|",
                "| enqueue (202) | 17,500 | 1,750 | 0.90 | 12.3 | 150 | 300 | 1000 | 0.04 of HTTP→JetStream 40,000/s |",
                "| end to end (callback) | 17,499 | 1,591 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 0.08 of pull→POST→POST→ack 20,000/s (0.04 of pull→POST→ack 38,000/s) |",
                "",
                "- ceiling (same run, 256 B, 64 in flight, memory storage): HTTP→JetStream 40,000/s · pull→POST→ack 38,000/s · pull→POST→POST→ack 20,000/s · pooled HTTP POSTs 90,000/s · pipelined JetStream publish 150,000/s · full pipeline 12,000/s",
                "- enqueue errors: status_503 1, timeout 1 (of 17,502 sent)",
                "- function status in callbacks: 200 × 13,000, 500 × 4,499",
                "- audit: accepted 17,500 · completed 17,499 · lost 1 · duplicates 1 · unexpected 0 (waited 20.0 s for stragglers) → CALLS LOST",
                "  - first lost: c-1",
                "  - first duplicated: c-2",
            ]
        );
    }

    #[test]
    fn a_local_run_tells_the_cpu_a_call_cost_under_the_table_and_in_the_json() {
        let mut report = local_open();
        report.enqueue.cpu_us_per_call = Some(CpuPerCall {
            process_us: 30.4,
            nats_server_us: Some(12.0),
            machine_us: 45.0,
        });
        report.completion.cpu_us_per_call = Some(CpuPerCall {
            process_us: 52.0,
            nats_server_us: None,
            machine_us: 71.2,
        });
        let text = report.render();
        let lines: Vec<_> = text.lines().collect();
        let table_end = lines
            .iter()
            .position(|l| l.starts_with("| end to end"))
            .unwrap();
        assert_eq!(
            lines[table_end + 1..table_end + 5],
            [
                "",
                "- CPU per call enqueued: 30 µs in this process, 12 µs in nats-server, 45 µs on the whole machine",
                "- CPU per call completed: 52 µs in this process, 71 µs on the whole machine",
                "",
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["enqueue"]["cpu_us_per_call"]["nats_server_us"], 12.0);
        assert_eq!(json["completion"]["cpu_us_per_call"]["process_us"], 52.0);
        assert!(json["completion"]["cpu_us_per_call"]["nats_server_us"].is_null());
        // Without marks (another system, or a fleet elsewhere) the field is left out.
        let plain = serde_json::to_value(local_open()).unwrap();
        assert!(plain["completion"].get("cpu_us_per_call").is_none());
    }

    #[test]
    fn the_summary_of_a_closed_loop_against_a_gateway_says_what_is_missing() {
        let text = gateway_closed().render();
        for line in [
            "- target: gateway http://gw:8080 (callbacks to http://me:9000/callback)",
            "- load: closed loop, 64 in flight, 4 function(s) (skew 1.5), 256 B bodies, 10.0 s",
            "- no callbacks: a call completes when it reaches the built-in function",
            "| end to end (function) | 17,499 | 1,591 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | no ceiling |",
            "- enqueue errors: none (of 17,502 sent)",
            "- function status in callbacks: none",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("- ceiling"), "{text}");
        assert!(text.trim_end().ends_with("→ OK"), "{text}");
    }

    #[test]
    fn the_end_to_end_row_of_a_run_without_backlog_compares_with_the_full_pipeline() {
        let mut report = local_open();
        report.load.backlog = false;
        let text = report.render();
        let line = "| end to end (callback) | 17,499 | 1,591 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | \
                    0.13 of full pipeline 12,000/s; 0.08 of pull→POST→POST→ack 20,000/s \
                    (0.04 of pull→POST→ack 38,000/s) |";
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        let ratios = serde_json::to_value(report.ratios).unwrap();
        assert!(
            (ratios["completion_vs_full_pipeline"].as_f64().unwrap() - 1590.8 / 12000.0).abs()
                < 1e-9
        );
    }

    #[test]
    fn one_rate_is_an_open_loop_without_steps() {
        let mut report = local_open();
        report.load.rates = vec![1000.0];
        assert!(
            report
                .render()
                .contains("- load: open loop, 1,000 calls/s, 4 function(s)")
        );
    }

    #[test]
    fn target_and_model_serialize_as_documented() {
        let local = serde_json::to_value(local_open()).unwrap();
        assert_eq!(local["target"]["kind"], "local");
        assert_eq!(local["load"]["model"], "open");
        let gateway = serde_json::to_value(gateway_closed()).unwrap();
        assert_eq!(gateway["target"]["kind"], "gateway");
        assert_eq!(gateway["load"]["model"], "closed");
    }

    #[test]
    fn series_buckets_counts_into_rates() {
        let s = Series::build(1_000, &[1_000, 50_000_000, 150_000_000], &[1_100_000_000]);
        assert_eq!(s.bucket_s, 0.1);
        assert_eq!(s.enqueue_per_s.len(), 11);
        assert!((s.enqueue_per_s[0] - 20.0).abs() < 1e-9);
        assert!((s.enqueue_per_s[1] - 10.0).abs() < 1e-9);
        assert!((s.completion_per_s[10] - 10.0).abs() < 1e-9);
    }
}
