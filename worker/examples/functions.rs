//! What thousands of functions cost: a worker serving every shard meets N new functions (one call
//! each), and this measures how long discovery takes to run them all, the consumers left in NATS,
//! the memory they take in the worker and in nats-server, and the CPU both spend while the
//! functions sit idle (pull requests renewed, consumers read).
//!
//! `cargo run --release -p flotilla-worker --example functions -- [functions]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{counting_server, fleet};

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use flotilla_fleet::WorkerSpec;
use flotilla_queue::{Envelope, FunctionName, subjects, time};

const SHARDS: u32 = 4;

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Share of one core each process used over `window`.
async fn idle_cpu(pids: [u32; 2], window: Duration) -> [f64; 2] {
    let before = pids.map(cpu_seconds);
    tokio::time::sleep(window).await;
    let after = pids.map(cpu_seconds);
    [0, 1].map(|i| (after[i] - before[i]) / window.as_secs_f64())
}

async fn consumers(js: &jetstream::Context) -> usize {
    let mut total = 0;
    for shard in 0..SHARDS {
        let mut s = js.get_stream(subjects::call_stream(shard)).await.unwrap();
        total += s.info().await.unwrap().state.consumer_count;
    }
    total
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(2000, |a| a.parse().expect("function count"));
    let (fn_url, count) = counting_server(Duration::ZERO).await;
    let mut fleet = fleet(SHARDS, &fn_url).await;
    let js = fleet.jetstream();
    let map = fleet.topology().shard_map();
    let pids = [
        std::process::id(),
        fleet.nats_server().and_then(|s| s.pid()).unwrap(),
    ];

    fleet
        .start_workers([WorkerSpec {
            name: "worker".into(),
            args: Vec::new(),
        }])
        .await
        .unwrap();
    // Settle, then take the baseline with the worker running and no function known.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = pids.map(rss_mib);
    let cpu_before = idle_cpu(pids, Duration::from_secs(10)).await;

    let t0 = Instant::now();
    let mut acks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let name = format!("fn-{i:05}");
        let env = Envelope {
            call_id: format!("c-{i}"),
            function: FunctionName::parse(&name).unwrap(),
            method: "POST".into(),
            path: String::new(),
            query: String::new(),
            callback_url: None,
            start_time: time::unix_nanos(),
            attempt: 0,
            headers: Vec::new(),
            body: Bytes::from_static(b"{}"),
            batch_id: None,
            body_object: None,
            priority: Default::default(),
            fairness_key: None,
        };
        let (h, b) = env.to_nats(None);
        let subject = subjects::call_subject(map.shard_of(&name), &env.function);
        acks.push(js.publish_with_headers(subject, h, b).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    let published = t0.elapsed();
    while count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_ran = t0.elapsed();
    // Let every pull loop go quiet (10 s without work) and renew its request at the quiet pace.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rss_after = pids.map(rss_mib);
    let live = consumers(&js).await;
    let cpu_after = idle_cpu(pids, Duration::from_secs(10)).await;

    println!(
        "{n} new functions over {SHARDS} shards, one call each: published in {published:.2?}, \
         all {n} ran {all_ran:.2?} after the first publish\n\
         consumers in NATS: {live}\n\
         resident memory: worker process {:.1} -> {:.1} MiB ({:.1} KiB per function), \
         nats-server {:.1} -> {:.1} MiB ({:.1} KiB per consumer)\n\
         idle CPU (share of one core): worker process {:.3} -> {:.3}, nats-server {:.3} -> {:.3}",
        rss_before[0],
        rss_after[0],
        (rss_after[0] - rss_before[0]) * 1024.0 / n as f64,
        rss_before[1],
        rss_after[1],
        (rss_after[1] - rss_before[1]) * 1024.0 / n as f64,
        cpu_before[0],
        cpu_after[0],
        cpu_before[1],
        cpu_after[1],
    );
    fleet.stop(Duration::from_secs(30)).await.unwrap();
}
