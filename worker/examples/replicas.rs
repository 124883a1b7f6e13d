//! Replica scaling of one shard: a latency-bound function (20 ms per call) with a per-replica
//! concurrency of 10, drained by 1, 2 and 4 worker replicas of the same shard, each its own NATS
//! connection and its own pull loops, sharing the function's durable consumer. Prints each rate
//! against its latency-bound ceiling (replicas × concurrency / latency) and the scaling ratios.
//!
//! `cargo run --release -p flotilla-worker --example replicas -- [seconds per run]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{counting_server, fill, fleet};

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_fleet::WorkerSpec;
use flotilla_queue::{Envelope, FunctionName, subjects, time};

const LATENCY: Duration = Duration::from_millis(20);
const REPLICA_CONCURRENCY: u64 = 10;

/// A worker replica of shard 0; each has its own NATS connection and pull loops.
fn replica(i: u64) -> WorkerSpec {
    WorkerSpec::new(
        format!("replica {i}"),
        [
            "--shard".to_owned(),
            "0".into(),
            // The cluster budget is out of the way: each replica's own slots are the limit.
            "--concurrency".into(),
            "1000".into(),
            "--replica-concurrency".into(),
            REPLICA_CONCURRENCY.to_string(),
        ],
    )
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(6, |a| a.parse().expect("seconds per run"));
    let (fn_url, count) = counting_server(LATENCY).await;
    let mut fleet = fleet(1, &fn_url).await;
    let js = fleet.jetstream();
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
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    };

    let mut rates = Vec::new();
    for replicas in [1u64, 2, 4] {
        let ceiling = (replicas * REPLICA_CONCURRENCY) as f64 / LATENCY.as_secs_f64();
        // Enough backlog for `seconds` at the ceiling; the middle 80% is timed, so start-up and
        // the tail (replicas running dry one after another) are left out.
        let calls = (ceiling * seconds as f64) as u64;
        count.store(0, Ordering::SeqCst);
        fill(&js, &subjects::call_subject(0, &env.function), &env, calls).await;
        fleet
            .start_workers((0..replicas).map(replica))
            .await
            .unwrap();
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
        fleet.stop_workers(Duration::from_secs(30)).await.unwrap();
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
