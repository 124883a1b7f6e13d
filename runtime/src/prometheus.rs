//! Each server's Prometheus recorder and series cap ([`Telemetry`]), the latency buckets every
//! histogram shares (so the gateway's and the workers' histograms line up on one dashboard), and
//! the scrape. Invariant: no recorder is installed process-wide.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Latency buckets (seconds) for every histogram, from 1 ms to 5 minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// One server's metrics: its own Prometheus recorder, the handle that renders it, and its cap on
/// distinct `function_name` label values. Each gateway and each worker makes one, so servers
/// that share a process (tests, `flotilla_fleet`, loadgen `--local`) keep separate series and
/// separate caps. No recorder is installed globally: handles are made through
/// [`Telemetry::register`] and stay bound to this recorder after. Clones share it.
#[derive(Clone)]
pub struct Telemetry(Arc<Registry>);

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    functions: FunctionLabels,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("max_function_series", &self.0.functions.cap)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A recorder with [`LATENCY_BUCKETS`], admitting at most `max_function_series` distinct
    /// function names to labels.
    pub fn new(max_function_series: usize) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        Self(Arc::new(Registry {
            recorder,
            handle,
            functions: FunctionLabels {
                cap: max_function_series,
                admitted: RwLock::default(),
            },
        }))
    }

    /// Runs `register` with this recorder behind the `metrics` macros (`counter!`, `gauge!`,
    /// `histogram!`, `describe_*!`): what it describes and the handles it makes belong to this
    /// server, and the handles keep recording here wherever they are used later. The recorder
    /// is set for this thread only while `register` runs, so make handles inside, never await.
    pub fn register<T>(&self, register: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.0.recorder, register)
    }

    /// The handle that renders this server's scrape (see [`render`]) and runs its upkeep.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.0.handle
    }

    /// The `function_name` label of `function`: its name while the cap allows (a name admitted
    /// once keeps its series), else [`OTHER_FUNCTIONS`].
    pub fn function_label(&self, function: &str) -> String {
        let labels = &self.0.functions;
        if labels.admitted.read().is_ok_and(|a| a.contains(function)) {
            return function.to_owned();
        }
        match labels.admitted.write() {
            Ok(mut a) if a.len() < labels.cap || a.contains(function) => {
                a.insert(function.into());
                function.to_owned()
            }
            _ => OTHER_FUNCTIONS.to_owned(),
        }
    }
}

/// The `function_name` value of functions beyond the series cap.
pub const OTHER_FUNCTIONS: &str = "~other";

/// Default of `--max-function-series`.
pub const DEFAULT_FUNCTION_SERIES: usize = 1000;

/// A server's cap on distinct `function_name` label values, and the names admitted so far.
/// Calls to new names cost no new series once the cap is reached: they count under
/// [`OTHER_FUNCTIONS`].
struct FunctionLabels {
    cap: usize,
    admitted: RwLock<HashSet<Box<str>>>,
}

/// The scrape: the recorder's metrics, then `flotilla_build_info` and the process metrics that
/// Prometheus client libraries export by convention (`process_*`, read from `/proc` now). The
/// recorder cannot hold them: its counters are integers, and CPU seconds are not.
pub fn render(handle: &PrometheusHandle, binary: &str) -> String {
    let mut out = handle.render();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let version = env!("CARGO_PKG_VERSION");
    out.push_str(&format!(
        "# HELP flotilla_build_info Always 1; the labels name the binary and its version\n\
         # TYPE flotilla_build_info gauge\n\
         flotilla_build_info{{binary=\"{binary}\",version=\"{version}\"}} 1\n"
    ));
    let p = ProcessStats::read();
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds",
        p.cpu_seconds,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes",
        p.resident_bytes,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes",
        p.virtual_bytes,
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds",
        p.start_time_seconds,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors",
        p.open_fds,
    );
    metric(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors (the soft limit)",
        p.max_fds,
    );
    out
}

/// What `/proc` says about this process; a field is `None` where `/proc` is missing or unreadable
/// (not Linux), and is then left out of the scrape.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let mut stats = parse_stat(&stat, ticks, page, boot);
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        stats.max_fds = Some(crate::open_files_limit() as f64);
        stats
    }
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the Unix epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads CPU time, memory and start time from `/proc/self/stat`. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted from its closing parenthesis.
fn parse_stat(stat: &str, ticks: f64, page: f64, boot: Option<f64>) -> ProcessStats {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return ProcessStats::default();
    };
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks);
    ProcessStats {
        cpu_seconds: cpu,
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|pages| pages * page),
        start_time_seconds: field(22).zip(boot).map(|(t, b)| b + t / ticks),
        ..ProcessStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_command_names_closing_parenthesis() {
        // A command name with a space and a parenthesis, as the kernel prints it.
        let stat = "4242 (my (odd) bin) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    3 0 1000 104857600 2048 18446744073709551615";
        let s = parse_stat(stat, 100.0, 4096.0, Some(1_700_000_000.0));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.virtual_bytes, Some(104_857_600.0));
        assert_eq!(s.resident_bytes, Some(2048.0 * 4096.0));
        assert_eq!(s.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(
            parse_stat("garbage", 100.0, 4096.0, None),
            ProcessStats::default()
        );
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1.7e9)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn a_scrape_carries_build_info_and_this_process() {
        let text = render(Telemetry::new(1).handle(), "flotilla-test");
        assert!(text.contains(&format!(
            "flotilla_build_info{{binary=\"flotilla-test\",version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in {text}"))
                .parse()
                .unwrap();
            // A short test may not have used a whole clock tick of CPU yet.
            let least = if name == "process_cpu_seconds_total" {
                0.0
            } else {
                1.0
            };
            assert!(value >= least, "{name} {value}");
        }
    }

    #[test]
    fn two_servers_keep_their_own_series_and_their_own_cap() {
        let (one, two) = (Telemetry::new(1), Telemetry::new(2));
        let count = |t: &Telemetry, function: &str| {
            let label = t.function_label(function);
            t.register(|| metrics::counter!("calls_total", "function_name" => label))
        };
        // Handles keep recording into their server's recorder once the closure has returned.
        let (a, b) = (count(&one, "a"), count(&two, "a"));
        a.increment(3);
        b.increment(5);
        count(&one, "b").increment(1);
        count(&two, "b").increment(1);
        count(&two, "c").increment(1);
        let one = one.handle().render();
        let two = two.handle().render();
        assert!(
            one.contains("calls_total{function_name=\"a\"} 3\n"),
            "{one}"
        );
        assert!(
            two.contains("calls_total{function_name=\"a\"} 5\n"),
            "{two}"
        );
        // The cap of one admitted `a` alone; the cap of two admitted `a` and `b`.
        assert!(
            one.contains("calls_total{function_name=\"~other\"} 1\n"),
            "{one}"
        );
        assert!(!one.contains("function_name=\"b\""), "{one}");
        assert!(
            two.contains("calls_total{function_name=\"b\"} 1\n"),
            "{two}"
        );
        assert!(
            two.contains("calls_total{function_name=\"~other\"} 1\n"),
            "{two}"
        );
    }
}
