//! Adaptive concurrency against a real nats-server: a function that takes 4 calls at once and
//! answers 429 beyond gets a batch through two worker replicas with no policy for it, every call
//! succeeding on its first attempt, few refusals, nothing dead-lettered; a function whose policy
//! fixes its concurrency keeps today's behaviour, where the same refusals are failed attempts.
// A failed unwrap is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Nats, Worker, dead_letter_count, envelope, get};
use flotilla_testsupport::{Recorded, RecordingServer, Reply};

const CAPACITY: usize = 4;
const CALLS: usize = 300;
const TOOK: Duration = Duration::from_millis(50);

/// A function that serves `CAPACITY` calls at once, each for `TOOK`, and refuses the rest with
/// 429 at once, as an OpenFaaS function at its `max_inflight` does.
async fn narrow_function() -> RecordingServer {
    let busy_until: Arc<Mutex<Vec<Instant>>> = Arc::default();
    RecordingServer::start(Arc::new(move |_: &Recorded| {
        let mut busy = busy_until.lock().unwrap();
        let now = Instant::now();
        busy.retain(|until| *until > now);
        if busy.len() >= CAPACITY {
            return Reply::status(429).body("at capacity");
        }
        busy.push(now + TOOK);
        Reply::status(200).delay(TOOK).body("done")
    }))
    .await
}

fn by_status(server: &RecordingServer, header: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in server.requests() {
        *counts.entry(r.header(header).to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fits_a_function_of_bounded_capacity_without_tuning() {
    let nats = Nats::start(1).await;
    let function = narrow_function().await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let cb = format!("{}/cb", sink.url());
    for i in 0..CALLS {
        nats.publish(&envelope("narrow", &format!("call-{i}"), Some(&cb), "x"))
            .await;
    }
    let gateway = Gateway::start(&["--nats-url", &nats.url()]).await;
    let args = ["--function-url-template", template.as_str()];
    let a = Worker::start_ready(&nats.url(), &args).await;
    let b = Worker::start_ready(&nats.url(), &args).await;
    // `/system/queues` shows the limit the replicas learned while the batch drains (about 4 s
    // of work at the function's capacity).
    let row = loop {
        let answer = gateway
            .send(http::Method::GET, "/system/queues", &[], "")
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let rows: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let narrow = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["function"] == "narrow")
            .cloned();
        if let Some(r) = narrow.filter(|r| !r["concurrency_limit"].is_null()) {
            break r;
        }
        assert!(
            sink.count() < CALLS,
            "the batch drained before a limit was reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(row["adaptive"], true, "{row}");
    let reported = row["concurrency_limit"].as_u64().unwrap();
    assert!(
        (1..=2 * CAPACITY as u64 + 2).contains(&reported),
        "two replicas' limits add up near the capacity: {row}"
    );
    // At least 3.75 s of work at the function's capacity; bounded at several times that.
    sink.wait_for(CALLS, Duration::from_secs(30)).await;
    nats.wait_settled(Duration::from_secs(10)).await;

    // Every call succeeded on its first attempt: a refusal used none.
    let callbacks = sink.requests();
    assert_eq!(callbacks.len(), CALLS, "one callback per call");
    for c in &callbacks {
        assert_eq!(
            c.header("x-function-status"),
            "200",
            "{}",
            c.header("x-call-id")
        );
        assert_eq!(c.header("x-retry"), "0", "{}", c.header("x-call-id"));
    }
    assert_eq!(dead_letter_count(&nats.js).await, 0);
    let answers = function.requests().len();
    let refused = answers - CALLS;
    assert!(
        refused < CALLS / 5,
        "{refused} refusals for {CALLS} calls: the limit did not settle near the capacity"
    );

    // The limits and the refusals are scraped. Both replicas and the gateway run in this
    // process, each with its own recorder: a scrape shows its own server's series alone, so the
    // replicas' counts add up to the fleet's.
    let mut scrapes = Vec::new();
    for admin in [a.admin, b.admin] {
        let (status, scrape) = get(admin, "/metrics").await;
        assert_eq!(status, 200);
        assert!(!scrape.contains("gateway_"), "a worker's scrape: {scrape}");
        scrapes.push(scrape);
    }
    let (status, scrape) = get(gateway.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        !scrape.contains("worker_"),
        "the gateway's scrape: {scrape}"
    );
    let series = |name: &str| -> Vec<f64> {
        scrapes
            .iter()
            .filter_map(|s| common::metric(s, name))
            .collect()
    };
    let limits = series("worker_concurrency_limit{function_name=\"narrow\"}");
    assert!(!limits.is_empty(), "no replica shows a limit");
    for limit in limits {
        assert!(
            (1.0..=CAPACITY as f64 + 2.0).contains(&limit),
            "limit {limit} far from the capacity"
        );
    }
    let counted: f64 = series("worker_refusals_total{function_name=\"narrow\"}")
        .iter()
        .sum();
    assert_eq!(counted, refused as f64, "every 429 counted once");
    let succeeded: f64 = series("worker_calls_total{function_name=\"narrow\",code=\"200\"}")
        .iter()
        .sum();
    assert_eq!(
        succeeded, CALLS as f64,
        "every call counted once, by its replica"
    );
    a.stop(Duration::from_secs(10)).await.unwrap();
    b.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_concurrency_keeps_refusals_as_failed_attempts() {
    let nats = Nats::start(1).await;
    let function = narrow_function().await;
    let sink = RecordingServer::answering(200).await;
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "[functions.narrow]\nconcurrency = 16\n[functions.narrow.retry]\nattempts = 1\n",
    )
    .unwrap();
    let template = format!("{}/{{name}}", function.url());
    let cb = format!("{}/cb", sink.url());
    for i in 0..40 {
        nats.publish(&envelope("narrow", &format!("call-{i}"), Some(&cb), "x"))
            .await;
    }
    let w = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            template.as_str(),
            "--policies",
            policy.path().to_str().unwrap(),
        ],
    )
    .await;
    sink.wait_for(40, Duration::from_secs(20)).await;
    let statuses = by_status(&sink, "x-function-status");
    assert!(
        statuses.get("429").copied().unwrap_or(0) > 0,
        "16 at once against room for 4: some calls end refused, {statuses:?}"
    );
    w.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_waited_out_without_using_an_attempt() {
    let nats = Nats::start(1).await;
    let first = Arc::new(Mutex::new(true));
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        let mut first = first.lock().unwrap();
        if std::mem::take(&mut *first) {
            Reply::status(503).header("retry-after", "2")
        } else {
            Reply::status(200).body("done")
        }
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let w = Worker::start_ready(&nats.url(), &["--function-url-template", &template]).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("busy", "b-1", Some(&cb), "x")).await;
    sink.wait_for(1, Duration::from_secs(15)).await;
    let at: Vec<Instant> = function.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 2, "refused once, then run");
    let waited = at[1] - at[0];
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(5)).contains(&waited),
        "ran again after {waited:?}, asked for 2 s"
    );
    let c = &sink.requests()[0];
    assert_eq!(
        (c.header("x-function-status"), c.header("x-retry")),
        ("200", "0"),
        "the refusal used no attempt"
    );
    nats.wait_settled(Duration::from_secs(10)).await;
    w.stop(Duration::from_secs(10)).await.unwrap();
}
