//! Replica scaling of one shard: a latency-bound function (20 ms per call) with a per-replica
//! concurrency of 10, drained by 1, 2 and 4 worker replicas of the same shard, each its own NATS
//! connection and its own pull loops, sharing the function's durable consumer. Prints each rate
//! against its latency-bound ceiling (replicas × concurrency / latency) and the scaling ratios.
//!
//! `cargo run --release -p flotilla-worker --example replicas -- [seconds per run]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{counting_server, fill, nats_with_topology};

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use flotilla_queue::{Envelope, FunctionName, subjects, time};

const LATENCY: Duration = Duration::from_millis(20);
const REPLICA_CONCURRENCY: u64 = 10;

/// A worker replica of shard 0 in this process; `stop` drains it.
struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), flotilla_worker::WorkerError>>,
}

impl Replica {
    async fn start(nats_url: &str, fn_url: &str) -> Self {
        let config = flotilla_worker::Config::try_parse_from([
            "flotilla-worker",
            "--nats-url",
            nats_url,
            "--shard",
            "0",
            "--function-url-template",
            fn_url,
            // The cluster budget is out of the way: each replica's own slots are the limit.
            "--concurrency",
            "1000",
            "--replica-concurrency",
            &REPLICA_CONCURRENCY.to_string(),
            "--log",
            "warn",
        ])
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(flotilla_worker::run(config, listener, async move {
            let _ = rx.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(6, |a| a.parse().expect("seconds per run"));
    let (nats, js, _) = nats_with_topology(1).await;
    let (fn_url, count) = counting_server(LATENCY).await;
    let env = Envelope {
        call_id: String::new(),
        function: FunctionName::parse("latency").unwrap(),
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        callback_url: None,
        start_time: time::unix_nanos(),
        attempt: 0,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Bytes::from_static(br#"{"hello":"world"}"#),
    };

    let mut rates = Vec::new();
    for replicas in [1u64, 2, 4] {
        let ceiling = (replicas * REPLICA_CONCURRENCY) as f64 / LATENCY.as_secs_f64();
        // Enough backlog for `seconds` at the ceiling; the middle 80% is timed, so start-up and
        // the tail (replicas running dry one after another) are left out.
        let calls = (ceiling * seconds as f64) as u64;
        count.store(0, Ordering::SeqCst);
        fill(&js, &subjects::call_subject(0, &env.function), &env, calls).await;
        let mut started = Vec::new();
        for _ in 0..replicas {
            started.push(Replica::start(&nats.url(), &fn_url).await);
        }
        let (from, to) = (calls / 10, calls * 9 / 10);
        while count.load(Ordering::Relaxed) < from {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t0 = Instant::now();
        while count.load(Ordering::Relaxed) < to {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rate = (to - from) as f64 / t0.elapsed().as_secs_f64();
        while count.load(Ordering::Relaxed) < calls {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for r in started {
            r.stop().await;
        }
        println!(
            "{replicas} replica(s): {rate:>7.0} calls/s, ceiling {ceiling:>5.0}/s \
             ({replicas} × {REPLICA_CONCURRENCY} slots / {LATENCY:?}), ratio to ceiling {:.2}",
            rate / ceiling
        );
        rates.push(rate);
    }
    println!(
        "scaling: 2 replicas / 1 = {:.2}x, 4 replicas / 1 = {:.2}x",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
}
