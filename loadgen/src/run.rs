//! One load run from start to report: start what `--local` needs, measure the ceiling, offer
//! the load, wait (bounded) for stragglers, audit, stop everything, report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use flotilla_fleet::{Fleet, FleetError, NatsServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Matched};
use crate::ceiling::{self, Ceiling, CeilingError};
use crate::config::{AuditBy, LoadModel, ModelKind, RunArgs};
use crate::cpu::{CpuMark, CpuPerCall};
use crate::driver::{self, DriverError, Load};
use crate::function::{FunctionServer, FunctionSpec};
use crate::local;
use crate::net::{self, Clock};
use crate::progress::{self, note};
use crate::report::{
    Completion, Enqueue, LoadInfo, Percentiles, Ratios, Report, SCHEMA, Series, TargetInfo,
};
use crate::sink::{Callback, CallbackSink, SinkState};
use crate::stats::Recorder;
use crate::status_audit;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("ceiling: {0} (skip it with --no-ceiling)")]
    Ceiling(#[from] CeilingError),
    #[error("local fleet: {0}")]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cannot write the plot to {path}: {source}")]
    Plot {
        path: String,
        source: std::io::Error,
    },
}

fn bind_err(what: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Bind { what, source }
}

/// Runs the load `args` describes, prints the summary (and JSON, and the plot) and returns the
/// report. `report.audit.ok` is false when calls were lost.
pub async fn run(args: &RunArgs) -> Result<Report, RunError> {
    let clock = Clock::new();
    let started_at_unix_s = (flotilla_queue::time::unix_nanos() / 1_000_000_000) as u64;
    let (nats, ceiling) = start_nats_and_measure(args).await?;
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let mut stage = Stage::start(args, nats.as_ref(), clock, &stop).await?;
    // The CPU a call costs is read where it is all in view: this process holds the local fleet.
    let cpu_of = args
        .is_local()
        .then(|| nats.as_ref().and_then(NatsServer::pid));
    let offered = offer_load(args, &mut stage, clock, cpu_of).await?;
    let (gateway_url, callback_url) = (stage.gateway_url.clone(), stage.callback_url.clone());
    let function_refusals = stage.stop(&stop).await;
    drop(nats);
    let mut built = build_report(
        args,
        Context {
            started_at_unix_s,
            gateway_url: &gateway_url,
            callback_url: &callback_url,
            ceiling,
        },
        offered,
    );
    built.report.function_refusals = function_refusals;
    print_report(args, &built.report);
    if let Some(path) = &args.plot {
        write_plot(args, &built, &gateway_url, path)?;
    }
    Ok(built.report)
}

/// The nats-server of the local fleet and of the ceiling (none when neither is wanted), and the
/// ceiling measured on it unless `--no-ceiling`.
async fn start_nats_and_measure(
    args: &RunArgs,
) -> Result<(Option<NatsServer>, Option<Ceiling>), RunError> {
    let quiet = args.quiet;
    if !args.is_local() && args.no_ceiling {
        return Ok((None, None));
    }
    note(quiet, "starting nats-server (temporary store)…");
    let server = ceiling::start_nats().await?;
    if args.no_ceiling {
        return Ok((Some(server), None));
    }
    let c_args = args.ceiling_args();
    note(
        quiet,
        &format!(
            "measuring the ceiling ({:.1} s per measurement)…",
            c_args.duration.as_secs_f64()
        ),
    );
    let c = ceiling::measure(&server.url(), &c_args).await?;
    note(quiet, ceiling::render(&c).trim_end());
    Ok((Some(server), Some(c)))
}

/// What a run stands up around the load: the callback sink, the built-in function (with
/// `--local`, or `--gateway` with `--function-listen`) and, with `--local`, the fleet.
struct Stage {
    sink: CallbackSink,
    /// What calls name as their callback URL when they ask for one.
    callback_url: String,
    function_server: Option<FunctionServer>,
    /// With `--local`; its workers start later with `--backlog`.
    fleet: Option<Fleet>,
    /// The base URL the load is sent to.
    gateway_url: String,
}

impl Stage {
    /// Starts the sink, then the built-in function and the fleet the flags ask for, all of them
    /// serving until `stop`. A local run needs `nats`.
    async fn start(
        args: &RunArgs,
        nats: Option<&NatsServer>,
        clock: Clock,
        stop: &CancellationToken,
    ) -> Result<Self, RunError> {
        let sink_addr = args
            .callback_listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let sink_listener = TcpListener::bind(sink_addr)
            .await
            .map_err(bind_err("the callback sink"))?;
        let sink = CallbackSink::start(sink_listener, clock, stop.clone())
            .map_err(bind_err("the callback sink"))?;
        let callback_url = args
            .callback_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/callback", sink.addr));
        let mut stage = Self {
            sink,
            callback_url,
            function_server: None,
            fleet: None,
            gateway_url: String::new(),
        };
        match (&args.gateway, nats) {
            (Some(g), _) => {
                if let Some(addr) = args.function_listen {
                    let fs = start_function(args, addr, clock, stop).await?;
                    stage.function_server = Some(fs);
                }
                stage.gateway_url = g.trim_end_matches('/').to_owned();
            }
            (None, Some(server)) => stage.start_local(args, server, clock, stop).await?,
            (None, None) => unreachable!("a local run always starts nats-server"),
        }
        Ok(stage)
    }

    /// `--local`: the built-in function on a port of its own, then the gateway and (unless
    /// `--backlog`) the workers, on `server`.
    async fn start_local(
        &mut self,
        args: &RunArgs,
        server: &NatsServer,
        clock: Clock,
        stop: &CancellationToken,
    ) -> Result<(), RunError> {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let fs = start_function(args, loopback, clock, stop).await?;
        note(
            args.quiet,
            &format!(
                "starting a gateway and {} × {} worker(s)…",
                args.shards, args.replicas
            ),
        );
        let mut options = local::fleet_options(args, server.url(), fs.url_template());
        if !args.backlog {
            options.workers = local::workers(args);
        }
        let fleet = Fleet::start(options).await?;
        let Some(url) = fleet.gateway().map(flotilla_fleet::Gateway::url) else {
            unreachable!("the local fleet always has a gateway")
        };
        self.gateway_url = url;
        self.fleet = Some(fleet);
        self.function_server = Some(fs);
        Ok(())
    }

    /// Where completions are counted: callbacks at the sink, or, without callbacks, calls as
    /// they reach the built-in function. With `--audit status`, calls as the status API reports
    /// them final (filled by the follower).
    fn completions(&self, args: &RunArgs) -> Arc<SinkState> {
        match (&self.function_server, args.no_callbacks, args.audit) {
            (_, _, AuditBy::Status) => Arc::new(SinkState::default()),
            (Some(fs), true, _) => fs.arrivals.clone(),
            _ => self.sink.state.clone(),
        }
    }

    /// Stops the fleet (workers drained first), then everything serving until `stop`. The calls
    /// the built-in function refused at its capacity, when it ran.
    async fn stop(mut self, stop: &CancellationToken) -> Option<u64> {
        if let Some(f) = self.fleet.take()
            && let Err(e) = f.stop(Duration::from_secs(10)).await
        {
            tracing::warn!(error = %e, "the local fleet did not stop cleanly");
        }
        stop.cancel();
        let refusals = self
            .function_server
            .as_ref()
            .map(|fs| fs.stats.refused.load(Ordering::Relaxed));
        if let Some(fs) = self.function_server.take() {
            fs.stopped().await;
        }
        self.sink.stopped().await;
        refusals
    }
}

/// The built-in function of this run on `addr`, serving until `stop`.
async fn start_function(
    args: &RunArgs,
    addr: std::net::SocketAddr,
    clock: Clock,
    stop: &CancellationToken,
) -> Result<FunctionServer, RunError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(bind_err("the function server"))?;
    FunctionServer::start(listener, function_spec(args), clock, stop.clone())
        .map_err(bind_err("the function server"))
}

/// What the load and the wait for stragglers left to report.
struct Offered {
    rec: Arc<Recorder>,
    sent: driver::Sent,
    matched: Matched,
    drain_wait_s: f64,
    /// Where the completion rate is timed from, as an offset from the clock origin.
    completion_start_ns: u64,
    /// Calls as they started at the built-in function (with `--priority-mix` or
    /// `--fairness-keys`).
    starts: Vec<Callback>,
    /// The CPU used when the load started, when it was all sent (where a backlog's drain starts)
    /// and when the last call completed.
    cpu: [Option<CpuMark>; 3],
}

/// Warms up, offers the load, starts the workers of a backlog run, and waits (bounded) for the
/// calls to complete. `cpu_of` (a local run: the nats-server's process, if known) has the CPU
/// used marked along the way.
async fn offer_load(
    args: &RunArgs,
    stage: &mut Stage,
    clock: Clock,
    cpu_of: Option<Option<u32>>,
) -> Result<Offered, RunError> {
    let mark = || cpu_of.and_then(CpuMark::now);
    let completions = stage.completions(args);
    let asked_callback = args
        .callbacks_asked()
        .then_some(stage.callback_url.as_str());
    if !args.no_warmup && !args.backlog {
        warm_up(args, &stage.gateway_url, asked_callback, &completions).await?;
    }
    // A capacity schedule runs from the load's start; with a backlog, from the drain's first
    // call, which starts it.
    if !args.backlog
        && let Some(fs) = &stage.function_server
    {
        fs.start_capacity_clock(&clock);
    }
    let rec = Arc::new(Recorder::new(clock));
    let follower = StatusFollower::start(args, &stage.gateway_url, &rec, &completions);
    let shown = progress::start(rec.clone(), completions.clone(), "load ", args.quiet);
    let load = load_of(args);
    let client = net::client();
    let load_started = mark();
    let sent = driver::drive(
        &stage.gateway_url,
        asked_callback,
        &load,
        client,
        rec.clone(),
    )
    .await;
    shown.finish().await;
    let all_sent = mark();
    let sent = sent?;
    if args.backlog
        && let Some(f) = stage.fleet.as_mut()
    {
        note(args.quiet, "backlog enqueued; starting the workers…");
        f.start_workers(local::workers(args)).await?;
    }
    let shown = progress::start(rec.clone(), completions.clone(), "drain", args.quiet);
    let drain_started = std::time::Instant::now();
    let (mut matched, all_completed) = wait_for_stragglers(
        &rec,
        &completions,
        (args.drain_timeout, args.drain_max),
        mark,
    )
    .await;
    shown.finish().await;
    if let Some(follower) = follower {
        matched.audit.states = follower.stop().await;
    }
    let drain_wait_s = drain_started.elapsed().as_secs_f64();
    // A backlog drain is timed from its first completion, so worker start-up (consumer discovery)
    // does not count against the workers' throughput.
    let first_completion = matched.completions_ns.first().copied();
    let completion_start_ns = match (args.backlog, first_completion) {
        (true, Some(first)) => first,
        _ => sent.start_ns,
    };
    let starts = stage
        .function_server
        .as_ref()
        .map(|fs| fs.starts.take())
        .unwrap_or_default();
    Ok(Offered {
        rec,
        sent,
        matched,
        drain_wait_s,
        completion_start_ns,
        starts,
        cpu: [load_started, all_sent, all_completed],
    })
}

/// The load the driver offers, from the flags.
fn load_of(args: &RunArgs) -> Load {
    Load {
        model: args.load_model(),
        duration: args.duration,
        count: args.count,
        functions: args.functions(),
        skew: args.skew,
        body: Bytes::from(vec![b'x'; args.body_size]),
        max_in_flight: args.max_in_flight,
        timeout: args.timeout,
        seed: args.seed,
        batch: args.batch,
        priority_mix: args.priority_mix.clone(),
        keys: args
            .fairness_keys
            .map(|n| crate::mix::KeyMix::new(n, args.key_skew)),
    }
}

/// `--audit status`: the task following every accepted call through the status API.
struct StatusFollower {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    states: status_audit::States,
}

impl StatusFollower {
    /// Starts following with `--audit status`; `None` otherwise.
    fn start(
        args: &RunArgs,
        gateway_url: &str,
        rec: &Arc<Recorder>,
        completions: &Arc<SinkState>,
    ) -> Option<Self> {
        if args.audit != AuditBy::Status {
            return None;
        }
        let states = status_audit::States::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(status_audit::follow(
            gateway_url.to_owned(),
            rec.clone(),
            completions.clone(),
            states.clone(),
            stop.clone(),
        ));
        Some(Self { task, stop, states })
    }

    /// Stops following; the calls counted by final state.
    async fn stop(self) -> Option<std::collections::BTreeMap<String, u64>> {
        self.stop.cancel();
        let _ = self.task.await;
        self.states.lock().ok().map(|s| s.clone())
    }
}

/// The summary on stdout, or with `--json` the report on stdout and the summary on stderr.
fn print_report(args: &RunArgs, report: &Report) {
    let table = report.render();
    if args.json {
        eprintln!("{table}");
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("plain data serializes")
        );
    } else {
        println!("{table}");
    }
}

/// `--plot`: the SVG of the run, written to `path`.
fn write_plot(
    args: &RunArgs,
    built: &Built,
    gateway_url: &str,
    path: &std::path::Path,
) -> Result<(), RunError> {
    let report = &built.report;
    let title = format!(
        "flotilla-loadgen: {} · {} B bodies · {}",
        report.load.model.describe(),
        args.body_size,
        if args.is_local() {
            "local fleet"
        } else {
            gateway_url
        }
    );
    let svg = crate::plot::svg(&crate::plot::PlotInput {
        title: &title,
        bucket_s: report.series.bucket_s,
        enqueue_per_s: &report.series.enqueue_per_s,
        completion_per_s: &report.series.completion_per_s,
        enqueue_latency: &built.enqueue_us,
        end_to_end_latency: &built.end_to_end_us,
    });
    std::fs::write(path, svg).map_err(|source| RunError::Plot {
        path: path.display().to_string(),
        source,
    })?;
    note(args.quiet, &format!("plot written to {}", path.display()));
    Ok(())
}

fn function_spec(args: &RunArgs) -> FunctionSpec {
    FunctionSpec {
        latency: args.function_latency,
        failure_rate: args.failure_rate,
        response_size: args.response_size,
        seed: args.seed,
        record_arrivals: args.no_callbacks,
        record_starts: args.priority_mix.is_some() || args.fairness_keys.is_some(),
        capacity: args.function_capacity.clone(),
        echo: false,
    }
}

/// Sends the warm-up calls and waits (bounded) for their callbacks, then forgets them.
async fn warm_up(
    args: &RunArgs,
    gateway_url: &str,
    callback_url: Option<&str>,
    sink: &SinkState,
) -> Result<(), RunError> {
    note(
        args.quiet,
        &format!("warming up ({} functions)…", args.functions()),
    );
    let ids = driver::warm_up(
        gateway_url,
        callback_url,
        args.functions(),
        &net::client(),
        args.timeout,
    )
    .await?;
    let within = Duration::from_secs(15);
    let done = if args.audit == AuditBy::Status {
        status_audit::wait_final(gateway_url, &Clock::new(), &ids, within).await as u64
    } else {
        let deadline = tokio::time::Instant::now() + within;
        while sink.count() < ids.len() as u64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.count()
    };
    if done < ids.len() as u64 {
        note(
            args.quiet,
            &format!(
                "warning: {} of {} warm-up calls completed within 15 s; {}",
                done,
                ids.len(),
                match (callback_url, args.audit) {
                    (_, AuditBy::Status) => {
                        "do the workers reach the function, and is call status on?".to_owned()
                    }
                    (Some(u), _) => {
                        format!("is the callback URL {u} reachable from the workers?")
                    }
                    (None, _) => "do the workers reach the built-in function?".to_owned(),
                }
            ),
        );
    }
    sink.reset();
    Ok(())
}

/// Waits until every accepted call has its callback, or no callback came for `idle`, or `max`
/// passed; returns the final matching.
async fn wait_for_stragglers(
    rec: &Recorder,
    sink: &SinkState,
    (idle, max): (Duration, Duration),
    mark: impl Fn() -> Option<CpuMark>,
) -> (Matched, Option<CpuMark>) {
    let start = tokio::time::Instant::now();
    let mut last_progress = start;
    let mut last_count = sink.count();
    let mut last_checked = u64::MAX;
    loop {
        let accepted = rec.accepted.load(Ordering::Relaxed);
        let got = sink.count();
        let now = tokio::time::Instant::now();
        if got != last_count {
            last_count = got;
            last_progress = now;
        }
        let out_of_time = now >= last_progress + idle || now >= start + max;
        // Matching copies every record: only when the counts say it may be complete (duplicates
        // can make them lie) and something changed since the last look.
        if (got >= accepted && got != last_checked) || out_of_time {
            last_checked = got;
            // Marked before the audit's own work.
            let all_in = mark();
            let m = audit::reconcile(&rec.clock, &rec.accepted_calls(), &sink.take());
            if m.audit.lost == 0 || out_of_time {
                return (m, all_in);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The report and the histograms the plot draws.
struct Built {
    report: Report,
    enqueue_us: hdrhistogram::Histogram<u64>,
    end_to_end_us: hdrhistogram::Histogram<u64>,
}

/// What the report says about the run besides what the load measured.
struct Context<'a> {
    started_at_unix_s: u64,
    gateway_url: &'a str,
    callback_url: &'a str,
    ceiling: Option<Ceiling>,
}

fn build_report(args: &RunArgs, context: Context<'_>, offered: Offered) -> Built {
    let Offered {
        rec,
        sent,
        matched,
        drain_wait_s,
        completion_start_ns,
        starts,
        cpu: [load_started, all_sent, all_completed],
    } = offered;
    let enqueue_us = rec.enqueue_histogram();
    let accepted = rec.accepted_calls();
    let enqueue_window_s = (sent.end_ns.saturating_sub(sent.start_ns) as f64 / 1e9).max(1e-9);
    let enqueue_rate = accepted.len() as f64 / enqueue_window_s;
    let last_completion = matched
        .completions_ns
        .last()
        .copied()
        .unwrap_or(completion_start_ns);
    let completion_window_s =
        (last_completion.saturating_sub(completion_start_ns) as f64 / 1e9).max(1e-9);
    let completed = matched.audit.completed;
    let completion_rate = if completed == 0 {
        0.0
    } else {
        completed as f64 / completion_window_s
    };
    let mut accepted_ns: Vec<u64> = accepted.iter().map(|a| a.at_ns).collect();
    accepted_ns.sort_unstable();
    let series = Series::build(sent.start_ns, &accepted_ns, &matched.completions_ns);
    let ceiling = context.ceiling;
    let ratios = ceiling
        .as_ref()
        .map(|c| Ratios::of(enqueue_rate, completion_rate, c, args.callbacks_asked()));
    let mut audit = matched.audit;
    audit.drain_wait_s = drain_wait_s;
    let starts = audit::start_latency(&rec.clock, &accepted, &starts);
    let report = Report {
        schema: SCHEMA,
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_at_unix_s: context.started_at_unix_s,
        target: target_info(args, context.gateway_url, context.callback_url),
        load: load_info(args),
        enqueue: Enqueue {
            sent: rec.sent.load(Ordering::Relaxed),
            accepted: accepted.len() as u64,
            errors: rec.errors.load(Ordering::Relaxed),
            window_s: enqueue_window_s,
            rate_per_s: enqueue_rate,
            latency_ms: Percentiles::of(&enqueue_us),
            // Without a backlog, enqueue and completion overlap: only the whole is told.
            cpu_us_per_call: if args.backlog {
                CpuPerCall::between(load_started, all_sent, accepted.len() as u64)
            } else {
                None
            },
        },
        completion: Completion {
            completed,
            window_s: completion_window_s,
            rate_per_s: completion_rate,
            latency_ms: Percentiles::of(&matched.end_to_end_us),
            cpu_us_per_call: CpuPerCall::between(
                if args.backlog { all_sent } else { load_started },
                all_completed,
                completed,
            ),
        },
        errors: rec.error_kinds(),
        function_status: matched.function_status,
        function_refusals: None,
        start_latency_ms: starts
            .by_priority
            .iter()
            .map(|(p, h)| (p.to_string(), Percentiles::of(h)))
            .collect(),
        key_start_latency_ms: crate::report::across_keys(&starts.by_key),
        audit,
        ceiling,
        ratios,
        series,
    };
    Built {
        report,
        enqueue_us,
        end_to_end_us: matched.end_to_end_us,
    }
}

/// The report's `target`: which fleet, and with `--local` what it was made of.
fn target_info(args: &RunArgs, gateway_url: &str, callback_url: &str) -> TargetInfo {
    let local = args.is_local();
    TargetInfo {
        kind: args.target_kind(),
        gateway: gateway_url.to_owned(),
        callback_url: callback_url.to_owned(),
        shards: local.then_some(args.shards),
        replicas: local.then_some(args.replicas),
        worker_concurrency: local.then_some(args.worker_concurrency),
        worker_max_in_flight: local.then(|| local::max_in_flight(args)),
        function_latency: local.then(|| args.function_latency.to_string()),
        failure_rate: local.then_some(args.failure_rate),
        response_size: local.then_some(args.response_size),
        memory_streams: local.then_some(args.memory_streams),
        call_status: local.then_some(args.call_status),
        function_capacity: args.function_capacity.as_ref().map(ToString::to_string),
        adaptive: local.then_some(args.adaptive),
    }
}

/// The report's `load`: the model and the flags that shaped it.
fn load_info(args: &RunArgs) -> LoadInfo {
    let (model, rates, step_s, concurrency) = match args.load_model() {
        LoadModel::Open { steps } => (
            ModelKind::Open,
            steps.iter().map(|s| s.rate).collect(),
            steps
                .first()
                .and_then(|s| s.duration)
                .map(|d| d.as_secs_f64()),
            None,
        ),
        LoadModel::Closed { concurrency } => {
            (ModelKind::Closed, Vec::new(), None, Some(concurrency))
        }
    };
    LoadInfo {
        model,
        rates,
        step_s,
        concurrency,
        duration_s: args.duration.as_secs_f64(),
        count: args.count,
        functions: args.functions(),
        skew: args.skew,
        body_size: args.body_size,
        backlog: args.backlog,
        callbacks: args.callbacks_asked(),
        status_api: args.audit == AuditBy::Status,
        batch: args.batch,
    }
}
