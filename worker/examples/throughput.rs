//! Worker throughput next to its ceiling, measured side by side in one run: a bare
//! "JetStream pull → HTTP POST → ack" loop over a pre-filled stream, then the worker draining the
//! same backlog (envelopes, policies, progress acks, reports; optionally callbacks). With
//! callbacks the worker makes two HTTP requests per call, so the ceiling does too: "pull → POST →
//! POST → ack", the second POST to the same kind of bare sink the callbacks go to.
//!
//! `cargo run --release -p flotilla-worker --example throughput -- [calls] [concurrency] [callbacks] [worker-only|ceiling-only]`
//!
//! `worker-only` and `ceiling-only` run one side alone (for profilers such as callgrind).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{counting_server, fill, fleet};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use flotilla_fleet::WorkerSpec;
use flotilla_queue::{Envelope, FunctionName, subjects, time};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// CPU seconds (user + system) used so far by this process and its children that still run
/// (the nats-server): a yardstick that holds on a busy machine, where wall-clock rates swing.
fn cpu_seconds() -> f64 {
    fn ticks(stat: &str) -> Option<(u32, f64)> {
        // Fields after the parenthesised command: state ppid ... utime(14) stime(15).
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ppid = f.get(1)?.parse().ok()?;
        let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((ppid, t))
    }
    let me = std::process::id();
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((ppid, t)) = ticks(&stat)
            && (pid == me || ppid == me)
        {
            total += t;
        }
    }
    total / 100.0
}

/// The bare loop: one `messages()` stream, a semaphore, a task per message that POSTs the payload
/// to `first`, then (when given) to `second`, then acks. Returns calls per second and CPU
/// seconds per call.
async fn ceiling(
    js: &jetstream::Context,
    env: &Envelope,
    calls: u64,
    concurrency: usize,
    first: &str,
    second: Option<&str>,
) -> (f64, f64) {
    let name = if second.is_some() {
        "CEILING2"
    } else {
        "CEILING"
    };
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![name.to_lowercase()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    fill(js, &name.to_lowercase(), env, calls).await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("ceiling".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: concurrency as i64,
            ..Default::default()
        })
        .await
        .unwrap();
    let http = flotilla_runtime::pooled_client::<Full<Bytes>>(Default::default());
    let first: hyper::Uri = first.parse().unwrap();
    let second: Option<hyper::Uri> = second.map(|s| s.parse().unwrap());
    let mut messages = consumer.messages().await.unwrap();
    let slots = Arc::new(Semaphore::new(concurrency));
    let tracker = TaskTracker::new();
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    for _ in 0..calls {
        let msg = messages.next().await.unwrap().unwrap();
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (http, first, second) = (http.clone(), first.clone(), second.clone());
        tracker.spawn(async move {
            let req = hyper::Request::post(first)
                .body(Full::new(msg.payload.clone()))
                .unwrap();
            let resp = http.request(req).await.unwrap();
            let (_, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            if let Some(second) = second {
                let req = hyper::Request::post(second).body(Full::new(body)).unwrap();
                let resp = http.request(req).await.unwrap();
                let _ = resp.into_body().collect().await;
            }
            msg.ack().await.unwrap();
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu_start) / calls as f64;
    js.delete_stream(name).await.unwrap();
    (rate, cpu)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args.next().map_or(100_000, |a| a.parse().unwrap());
    let concurrency: usize = args.next().map_or(100, |a| a.parse().unwrap());
    let modes: Vec<String> = args.collect();
    let callbacks = modes.iter().any(|m| m == "callbacks");
    let worker_only = modes.iter().any(|m| m == "worker-only");
    let ceiling_only = modes.iter().any(|m| m == "ceiling-only");

    let (fn_url, fn_count) = counting_server(Duration::ZERO).await;
    let mut fleet = fleet(1, &fn_url).await;
    let js = fleet.jetstream();
    let (sink_url, sink_count) = counting_server(Duration::ZERO).await;
    let function = FunctionName::parse("bench").unwrap();
    let env = Envelope {
        call_id: String::new(),
        function: function.clone(),
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        callback_url: callbacks.then(|| format!("{sink_url}/cb")),
        start_time: time::unix_nanos(),
        attempt: 0,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Bytes::from_static(br#"{"hello":"world","n":12345}"#),
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    };

    // Ceilings: the same messages on a stream of their own, pulled, POSTed and acked bare; with
    // callbacks also "pull → POST → POST → ack".
    let mut ceilings = Vec::new();
    if !worker_only {
        ceilings.push((
            "ceiling (pull → POST → ack)",
            ceiling(&js, &env, calls, concurrency, &fn_url, None).await,
        ));
        if callbacks {
            let second = format!("{sink_url}/cb");
            ceilings.push((
                "ceiling (pull → POST → POST → ack)",
                ceiling(&js, &env, calls, concurrency, &fn_url, Some(&second)).await,
            ));
        }
    }
    fn_count.store(0, Ordering::SeqCst);
    sink_count.store(0, Ordering::SeqCst);

    let mut worker = None;
    if !ceiling_only {
        // The worker over the same backlog.
        let subject = subjects::call_subject(0, &function);
        fill(&js, &subject, &env, calls).await;
        fleet
            .start_workers([WorkerSpec::new(
                "worker",
                ["--concurrency".to_owned(), concurrency.to_string()],
            )])
            .await
            .unwrap();
        // Timed from the first call, so the worker's start-up (topology, discovery) is left out.
        while fn_count.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let target = if callbacks { &sink_count } else { &fn_count };
        while target.load(Ordering::Relaxed) < calls {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        worker = Some((
            calls as f64 / elapsed.as_secs_f64(),
            (cpu_seconds() - cpu_start) / calls as f64,
        ));
        fleet.stop_workers(Duration::from_secs(30)).await.unwrap();
    }

    println!("calls {calls}, concurrency {concurrency}, callbacks {callbacks}");
    for (name, (rate, cpu)) in &ceilings {
        println!(
            "{name:<36} {rate:>9.0}/s  {:>6.1} µs CPU per call",
            cpu * 1e6
        );
    }
    if let Some((rate, cpu)) = worker {
        println!(
            "{:<36} {rate:>9.0}/s  {:>6.1} µs CPU per call",
            "worker",
            cpu * 1e6
        );
        for (name, (c_rate, c_cpu)) in &ceilings {
            println!(
                "ratio to {name}: throughput {:.2}, CPU per call {:.2}",
                rate / c_rate,
                c_cpu / cpu
            );
        }
    }
    println!("(CPU counts this process and nats-server: worker, function server and sink)");
}
