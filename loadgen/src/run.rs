//! One load run from start to report: start what `--local` needs, measure the ceiling, offer
//! the load, wait (bounded) for stragglers, audit, stop everything, report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use flotilla_fleet::{Fleet, FleetError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Matched};
use crate::ceiling::{self, Ceiling, CeilingError};
use crate::config::{AuditBy, LoadModel, ModelKind, RunArgs};
use crate::driver::{self, DriverError, Load};
use crate::function::{FunctionServer, FunctionSpec};
use crate::local;
use crate::net::{self, Clock};
use crate::progress::{self, note};
use crate::report::{
    Completion, Enqueue, LoadInfo, Percentiles, Ratios, Report, SCHEMA, Series, TargetInfo,
};
use crate::sink::{CallbackSink, SinkState};
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
    let quiet = args.quiet;
    let clock = Clock::new();
    let started_at_unix_s = (flotilla_queue::time::unix_nanos() / 1_000_000_000) as u64;
    let local = args.is_local();

    // NATS for the local fleet and for the ceiling.
    let nats = if local || !args.no_ceiling {
        note(quiet, "starting nats-server (temporary store)…");
        Some(ceiling::start_nats().await?)
    } else {
        None
    };
    let ceiling: Option<Ceiling> = match (&nats, args.no_ceiling) {
        (Some(server), false) => {
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
            Some(c)
        }
        _ => None,
    };

    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
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

    let mut fleet = None;
    let mut function_server = None;
    let gateway_url = match (&args.gateway, &nats) {
        (Some(g), _) => {
            if let Some(addr) = args.function_listen {
                let fs_listener = TcpListener::bind(addr)
                    .await
                    .map_err(bind_err("the function server"))?;
                function_server = Some(
                    FunctionServer::start(fs_listener, function_spec(args), clock, stop.clone())
                        .map_err(bind_err("the function server"))?,
                );
            }
            g.trim_end_matches('/').to_owned()
        }
        (None, Some(server)) => {
            let fs_listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(bind_err("the function server"))?;
            let fs = FunctionServer::start(fs_listener, function_spec(args), clock, stop.clone())
                .map_err(bind_err("the function server"))?;
            note(
                quiet,
                &format!(
                    "starting a gateway and {} × {} worker(s)…",
                    args.shards, args.replicas
                ),
            );
            let mut options = local::fleet_options(args, server.url(), fs.url_template());
            if !args.backlog {
                options.workers = local::workers(args);
            }
            let f = Fleet::start(options).await?;
            let Some(url) = f.gateway().map(flotilla_fleet::Gateway::url) else {
                unreachable!("the local fleet always has a gateway")
            };
            fleet = Some(f);
            function_server = Some(fs);
            url
        }
        (None, None) => unreachable!("a local run always starts nats-server"),
    };

    let load = Load {
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
    };
    // Where completions are counted: callbacks at the sink, or, without callbacks, calls as they
    // reach the built-in function.
    // With `--audit status`, calls as the status API reports them final.
    let completions: Arc<SinkState> = match (&function_server, args.no_callbacks, args.audit) {
        (_, _, AuditBy::Status) => Arc::new(SinkState::default()),
        (Some(fs), true, _) => fs.arrivals.clone(),
        _ => sink.state.clone(),
    };
    let asked_callback = args.callbacks_asked().then_some(callback_url.as_str());
    if !args.no_warmup && !args.backlog {
        warm_up(args, &gateway_url, asked_callback, &completions).await?;
    }
    // A capacity schedule runs from the load's start; with a backlog, from the drain's first
    // call, which starts it.
    if !args.backlog
        && let Some(fs) = &function_server
    {
        fs.start_capacity_clock(&clock);
    }

    let rec = Arc::new(Recorder::new(clock));
    let states = status_audit::States::default();
    let follow_stop = CancellationToken::new();
    let following = (args.audit == AuditBy::Status).then(|| {
        tokio::spawn(status_audit::follow(
            gateway_url.clone(),
            rec.clone(),
            completions.clone(),
            states.clone(),
            follow_stop.clone(),
        ))
    });
    let shown = progress::start(rec.clone(), completions.clone(), "load ", quiet);
    let sent = driver::drive(
        &gateway_url,
        asked_callback,
        &load,
        net::client(),
        rec.clone(),
    )
    .await;
    shown.finish().await;
    let sent = sent?;

    if args.backlog
        && let Some(f) = fleet.as_mut()
    {
        note(quiet, "backlog enqueued; starting the workers…");
        f.start_workers(local::workers(args)).await?;
    }

    let shown = progress::start(rec.clone(), completions.clone(), "drain", quiet);
    let drain_started = std::time::Instant::now();
    let mut matched =
        wait_for_stragglers(&rec, &completions, args.drain_timeout, args.drain_max).await;
    shown.finish().await;
    if let Some(following) = following {
        follow_stop.cancel();
        let _ = following.await;
        matched.audit.states = states.lock().ok().map(|s| s.clone());
    }
    let drain_wait_s = drain_started.elapsed().as_secs_f64();

    if let Some(f) = fleet.take()
        && let Err(e) = f.stop(Duration::from_secs(10)).await
    {
        tracing::warn!(error = %e, "the local fleet did not stop cleanly");
    }
    stop.cancel();
    let function_refusals = function_server
        .as_ref()
        .map(|fs| fs.stats.refused.load(Ordering::Relaxed));
    if let Some(fs) = function_server.take() {
        fs.stopped().await;
    }
    sink.stopped().await;
    drop(nats);

    // A backlog drain is timed from its first completion, so worker start-up (consumer discovery)
    // does not count against the workers' throughput.
    let completion_start_ns = if args.backlog {
        matched
            .completions_ns
            .first()
            .copied()
            .unwrap_or(sent.start_ns)
    } else {
        sent.start_ns
    };
    let mut report = build_report(
        args,
        started_at_unix_s,
        &gateway_url,
        &callback_url,
        &rec,
        sent,
        completion_start_ns,
        matched,
        drain_wait_s,
        ceiling,
    );

    report.report.function_refusals = function_refusals;
    let table = report.report.render();
    if args.json {
        eprintln!("{table}");
        println!(
            "{}",
            serde_json::to_string_pretty(&report.report).expect("plain data serializes")
        );
    } else {
        println!("{table}");
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "flotilla-loadgen: {} · {} B bodies · {}",
            report.report.load.model.describe(),
            args.body_size,
            if local {
                "local fleet"
            } else {
                gateway_url.as_str()
            }
        );
        let svg = crate::plot::svg(&crate::plot::PlotInput {
            title: &title,
            bucket_s: report.report.series.bucket_s,
            enqueue_per_s: &report.report.series.enqueue_per_s,
            completion_per_s: &report.report.series.completion_per_s,
            enqueue_latency: &report.enqueue_us,
            end_to_end_latency: &report.end_to_end_us,
        });
        std::fs::write(path, svg).map_err(|source| RunError::Plot {
            path: path.display().to_string(),
            source,
        })?;
        note(quiet, &format!("plot written to {}", path.display()));
    }
    Ok(report.report)
}

fn function_spec(args: &RunArgs) -> FunctionSpec {
    FunctionSpec {
        latency: args.function_latency,
        failure_rate: args.failure_rate,
        response_size: args.response_size,
        seed: args.seed,
        record_arrivals: args.no_callbacks,
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
    idle: Duration,
    max: Duration,
) -> Matched {
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
            let m = audit::reconcile(&rec.clock, &rec.accepted_calls(), &sink.take());
            if m.audit.lost == 0 || out_of_time {
                return m;
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

#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &RunArgs,
    started_at_unix_s: u64,
    gateway_url: &str,
    callback_url: &str,
    rec: &Recorder,
    sent: driver::Sent,
    completion_start_ns: u64,
    matched: Matched,
    drain_wait_s: f64,
    ceiling: Option<Ceiling>,
) -> Built {
    let local = args.is_local();
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
    let ratios = ceiling
        .as_ref()
        .map(|c| Ratios::of(enqueue_rate, completion_rate, c, args.callbacks_asked()));
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
    let mut audit = matched.audit;
    audit.drain_wait_s = drain_wait_s;
    let report = Report {
        schema: SCHEMA,
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_at_unix_s,
        target: TargetInfo {
            kind: args.target_kind(),
            gateway: gateway_url.to_owned(),
            callback_url: callback_url.to_owned(),
            shards: local.then_some(args.shards),
            replicas: local.then_some(args.replicas),
            worker_concurrency: local.then_some(args.worker_concurrency),
            worker_max_in_flight: local.then(|| crate::local::max_in_flight(args)),
            function_latency: local.then(|| args.function_latency.to_string()),
            failure_rate: local.then_some(args.failure_rate),
            response_size: local.then_some(args.response_size),
            memory_streams: local.then_some(args.memory_streams),
            call_status: local.then_some(args.call_status),
            function_capacity: args.function_capacity.as_ref().map(ToString::to_string),
            adaptive: local.then_some(args.adaptive),
        },
        load: LoadInfo {
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
        },
        enqueue: Enqueue {
            sent: rec.sent.load(Ordering::Relaxed),
            accepted: accepted.len() as u64,
            errors: rec.errors.load(Ordering::Relaxed),
            window_s: enqueue_window_s,
            rate_per_s: enqueue_rate,
            latency_ms: Percentiles::of(&enqueue_us),
        },
        completion: Completion {
            completed,
            window_s: completion_window_s,
            rate_per_s: completion_rate,
            latency_ms: Percentiles::of(&matched.end_to_end_us),
        },
        errors: rec.error_kinds(),
        function_status: matched.function_status,
        function_refusals: None,
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
