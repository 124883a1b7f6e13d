//! Per-function isolation and limits, and replicas of one shard, against a real nats-server: a
//! slow backlog, or 199 functions' backlogs, do not slow a fast function; cluster-wide
//! concurrency and rate limits hold across replicas; replicas share a backlog and come and go
//! freely; idle consumers are released.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Nats, Worker, envelope, function_taking as function};
use flotilla_queue::{FunctionName, subjects};
use flotilla_testsupport::{RecordingServer, wait_until, wait_until_async};

const T: Duration = Duration::from_secs(30);

/// The latency test runs alone; the other tests of this file may share the machine with each
/// other, but not with it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn policy_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("policies.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The `q`-quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Publishes `n` calls of `fast`, one every 5 ms, and returns each call's latency from just before
/// its publish to its callback's arrival.
async fn fast_latencies(
    nats: &Nats,
    sink: &RecordingServer,
    round: &str,
    n: usize,
) -> Vec<Duration> {
    let cb = format!("{}/cb", sink.url());
    let before = sink.count();
    let mut sent = HashMap::new();
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    for i in 0..n {
        pace.tick().await;
        let id = format!("{round}-{i}");
        sent.insert(id.clone(), Instant::now());
        nats.publish(&envelope("fast", &id, Some(&cb), "x")).await;
    }
    sink.wait_for(before + n, T).await;
    sink.requests()
        .iter()
        .filter_map(|r| Some(r.at - *sent.get(r.header("x-call-id"))?))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backlog_does_not_slow_a_fast_function_in_the_same_shard() {
    let _alone = MACHINE.write().await;
    const SAMPLES: usize = 200;
    let nats = Nats::start(1).await;
    let slow = function(Duration::from_secs(2)).await;
    let fast = function(Duration::from_millis(1)).await;
    let sink = RecordingServer::answering(200).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_file(
        &dir,
        &format!(
            "[functions.slow]\nurl = \"{}\"\nconcurrency = 2\n[functions.fast]\nurl = \"{}\"\n",
            slow.url(),
            fast.url()
        ),
    );
    let worker =
        Worker::start_ready(&nats.url(), &["--policies", &policies, "--log", "warn"]).await;

    // Warm up (connections, the consumer's first pull), then measure `fast` alone.
    fast_latencies(&nats, &sink, "warm", 20).await;
    let mut alone = fast_latencies(&nats, &sink, "alone", SAMPLES).await;

    // 500 calls of `slow` wait behind its two slots; `fast` shares the shard stream with them.
    let cb = format!("{}/cb", sink.url());
    for i in 0..500 {
        nats.publish(&envelope("slow", &format!("slow-{i}"), Some(&cb), "x"))
            .await;
    }
    wait_until(T, "slow saturated", || slow.in_flight() == 2).await;
    let mut busy = fast_latencies(&nats, &sink, "busy", SAMPLES).await;
    assert_eq!(slow.max_in_flight(), 2, "slow kept to its concurrency");
    assert!(slow.count() <= 6, "the slow backlog is still there");

    let (a50, a90) = (quantile(&mut alone, 0.5), quantile(&mut alone, 0.9));
    let (b50, b90) = (quantile(&mut busy, 0.5), quantile(&mut busy, 0.9));
    eprintln!(
        "fast latency over {SAMPLES} calls, publish to callback: alone p50 {a50:?} p90 {a90:?}; \
         with 500 slow calls waiting p50 {b50:?} p90 {b90:?}; ratio p50 {:.2} p90 {:.2}",
        b50.as_secs_f64() / a50.as_secs_f64(),
        b90.as_secs_f64() / a90.as_secs_f64()
    );
    assert!(b50 <= a50 * 3, "median {b50:?} against {a50:?} alone");
    assert!(b90 <= a90 * 3, "p90 {b90:?} against {a90:?} alone");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_function_keeps_its_latency_while_199_others_have_backlogs() {
    let _alone = MACHINE.write().await;
    const SAMPLES: usize = 200;
    const OTHERS: usize = 198;
    let nats = Nats::start(1).await;
    let slow = function(Duration::from_secs(2)).await;
    let fast = function(Duration::from_millis(1)).await;
    // Every other function answers after a second: their backlogs keep the replica's cap busy
    // without turning the test into a CPU benchmark.
    let others = function(Duration::from_secs(1)).await;
    let sink = RecordingServer::answering(200).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_file(
        &dir,
        &format!(
            "[functions.slow]\nurl = \"{}\"\nconcurrency = 2\n[functions.fast]\nurl = \"{}\"\n",
            slow.url(),
            fast.url()
        ),
    );
    let template = format!("{}/{{name}}", others.url());
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--policies",
            &policies,
            "--function-url-template",
            &template,
            // Calls in flight across all 200 functions: far fewer than their limits add up to.
            "--max-in-flight",
            "1000",
            "--log",
            "warn",
        ],
    )
    .await;

    fast_latencies(&nats, &sink, "warm", 20).await;
    let mut alone = fast_latencies(&nats, &sink, "alone", SAMPLES).await;

    let cb = format!("{}/cb", sink.url());
    for i in 0..500 {
        nats.publish(&envelope("slow", &format!("slow-{i}"), Some(&cb), "x"))
            .await;
    }
    for i in 0..OTHERS * 30 {
        let name = format!("other-{}", i % OTHERS);
        nats.publish(&envelope(&name, &format!("other-{i}"), Some(&cb), "x"))
            .await;
    }
    let published = Instant::now();
    wait_until(T, "slow saturated and the others busy", || {
        slow.in_flight() == 2 && others.in_flight() >= 500
    })
    .await;
    // The backlogs now wait in the wait stream, behind their functions' limits; what is left in
    // the shard's stream is what the replica had no time to look at yet.
    wait_until_async(T, "the backlogs dispatched", || async {
        nats.undispatched(0).await == 0
    })
    .await;
    eprintln!(
        "{} backlog calls dispatched {:?} after the last was published",
        500 + OTHERS * 30,
        published.elapsed()
    );
    let mut busy = fast_latencies(&nats, &sink, "busy", SAMPLES).await;
    let others_in_flight = others.in_flight();
    assert_eq!(slow.max_in_flight(), 2, "slow kept to its concurrency");
    assert!(
        others.max_in_flight() <= 1000,
        "the replica's cap: {} in flight",
        others.max_in_flight()
    );

    let (a50, b50) = (quantile(&mut alone, 0.5), quantile(&mut busy, 0.5));
    eprintln!(
        "fast latency over {SAMPLES} calls, publish to callback: alone p50 {a50:?}; with 199 \
         backlogs ({others_in_flight} of the others' calls in flight, slow saturated) p50 \
         {b50:?}; ratio {:.2}",
        b50.as_secs_f64() / a50.as_secs_f64()
    );
    assert!(b50 <= a50 * 3, "median {b50:?} against {a50:?} alone");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_concurrency_holds_across_three_replicas() {
    let _shared = MACHINE.read().await;
    let nats = Nats::start(1).await;
    let f = function(Duration::from_millis(200)).await;
    let args = [
        "--function-url-template",
        &f.url(),
        "--concurrency",
        "5",
        "--log",
        "warn",
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Worker::start_ready(&nats.url(), &args).await);
    }
    for i in 0..60 {
        nats.publish(&envelope("capped", &format!("c-{i}"), None, "x"))
            .await;
    }
    // With a backlog the whole budget is used, and never more.
    wait_until(T, "five calls at once", || f.in_flight() == 5).await;
    f.wait_for(60, T).await;
    nats.wait_settled(T).await;
    assert_eq!(f.max_in_flight(), 5);
    assert_eq!(f.count(), 60, "every call ran once");
    for w in replicas {
        w.stop(T).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_replicas_without_blocking_others_or_burning_deliveries() {
    let _shared = MACHINE.read().await;
    const RATE: usize = 50;
    let nats = Nats::start(1).await;
    let limited = function(Duration::ZERO).await;
    let other = function(Duration::ZERO).await;
    let sink = RecordingServer::answering(200).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_file(
        &dir,
        &format!(
            "[functions.limited]\nurl = \"{}\"\nrate = {RATE}\n",
            limited.url()
        ),
    );
    let args = [
        "--policies",
        &policies,
        "--function-url-template",
        &other.url(),
        "--log",
        "warn",
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Worker::start_ready(&nats.url(), &args).await);
    }
    let cb = format!("{}/cb", sink.url());
    for i in 0..400 {
        nats.publish(&envelope("limited", &format!("l-{i}"), Some(&cb), "x"))
            .await;
    }
    // Another function of the same shard is not held up by the rate-limited backlog.
    let started = Instant::now();
    for i in 0..100 {
        nats.publish(&envelope("other", &format!("o-{i}"), None, "x"))
            .await;
    }
    other.wait_for(100, Duration::from_secs(5)).await;
    let other_took = started.elapsed();
    assert!(
        limited.count() < 400,
        "the limited backlog is still waiting"
    );

    // Completions (callbacks) of `limited` in the five seconds after its first one.
    let first = {
        wait_until(T, "first limited callback", || sink.count() > 0).await;
        sink.requests().iter().map(|r| r.at).min().unwrap()
    };
    let window = Duration::from_secs(5);
    wait_until(T, "the window to pass", || {
        first.elapsed() > window + Duration::from_millis(200)
    })
    .await;
    let callbacks = sink.requests();
    let in_window = callbacks.iter().filter(|r| r.at - first < window).count();
    eprintln!(
        "rate {RATE}/s shared by 3 replicas: {in_window} completions in 5 s (expected 250); \
         100 calls of another function took {other_took:?} meanwhile"
    );
    assert!(
        (225..=275).contains(&in_window),
        "{in_window} completions in 5 s at {RATE}/s"
    );
    // The waiting backlog burnt no deliveries: NATS redelivered none of its messages, neither
    // the shard's dispatch consumer (which moved them to the wait stream) nor the function's
    // consumer there (which took them at the rate).
    let redelivered = |stream: String, consumer: String| {
        let js = nats.js.clone();
        async move {
            js.get_stream(stream)
                .await
                .unwrap()
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .num_redelivered
        }
    };
    let limited_name = FunctionName::parse("limited").unwrap();
    assert_eq!(
        (
            redelivered(subjects::call_stream(0), subjects::DISPATCH_CONSUMER.into()).await,
            redelivered(
                subjects::wait_stream(0),
                subjects::consumer_name(&limited_name)
            )
            .await,
        ),
        (0, 0),
        "redeliveries of the limited backlog (dispatch, wait)"
    );
    let ids: HashSet<&str> = callbacks.iter().map(|r| r.header("x-call-id")).collect();
    assert_eq!(ids.len(), callbacks.len());
    for w in replicas {
        w.stop(T).await.unwrap();
    }
    // Whatever the function saw was called back once (the rest was handed back unstarted).
    sink.wait_for(limited.count(), T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_backlog_and_join_or_leave_without_coordination() {
    let _shared = MACHINE.read().await;
    const CALLS: usize = 400;
    let nats = Nats::start(2).await;
    let f = function(Duration::from_millis(20)).await;
    let sink = RecordingServer::answering(200).await;
    // Each replica calls the function under its own path prefix, so the function tells them apart.
    let start = |r: usize| {
        let template = format!("{}/r{r}/{{name}}", f.url());
        let url = nats.url();
        async move {
            Worker::start_ready(
                &url,
                &[
                    "--function-url-template",
                    &template,
                    "--concurrency",
                    "12",
                    "--replica-concurrency",
                    "4",
                    "--log",
                    "warn",
                ],
            )
            .await
        }
    };
    let r0 = start(0).await;
    let r1 = start(1).await;
    let cb = format!("{}/cb", sink.url());
    for i in 0..CALLS {
        nats.publish(&envelope("shared", &format!("s-{i}"), Some(&cb), "x"))
            .await;
    }
    // A third replica joins while the backlog drains, and the first leaves.
    sink.wait_for(CALLS / 4, T).await;
    let r2 = start(2).await;
    sink.wait_for(CALLS / 2, T).await;
    r0.stop(T).await.unwrap();
    let after_r0 = f.count();

    sink.wait_for(CALLS, T).await;
    nats.wait_settled(T).await;
    let callbacks = sink.requests();
    let ids: HashSet<&str> = callbacks.iter().map(|r| r.header("x-call-id")).collect();
    assert_eq!(
        (ids.len(), callbacks.len()),
        (CALLS, CALLS),
        "every call called back once"
    );
    assert_eq!(f.count(), CALLS, "every call ran once");
    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for r in f.requests() {
        let replica = r.path.split('/').nth(1).unwrap().to_owned();
        *per_replica.entry(replica).or_default() += 1;
    }
    eprintln!("calls per replica: {per_replica:?}");
    for r in ["r0", "r1", "r2"] {
        assert!(
            per_replica.get(r).copied().unwrap_or(0) > 0,
            "{r} did no work: {per_replica:?}"
        );
    }
    assert!(after_r0 < CALLS, "r0 left before the backlog was done");
    // The shard's functions may be served by any subset of replicas: shard and replica counts
    // are independent.
    assert!(f.max_in_flight() <= 12);
    r1.stop(T).await.unwrap();
    r2.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_has_a_consumer_only_while_its_calls_wait() {
    let _shared = MACHINE.read().await;
    let nats = Nats::start(1).await;
    let f = function(Duration::from_millis(300)).await;
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &f.url(),
            "--concurrency",
            "1",
            "--consumer-idle",
            "1s",
            "--log",
            "warn",
        ],
    )
    .await;
    let stream = nats.js.get_stream(subjects::wait_stream(0)).await.unwrap();
    let name = subjects::consumer_name(&FunctionName::parse("busy").unwrap());
    let exists = || {
        let (stream, name) = (stream.clone(), name.clone());
        async move {
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                .is_ok()
        }
    };

    // One call at a time: the first starts, the others wait in the wait stream, in the
    // function's own consumer.
    for i in 0..5 {
        nats.publish(&envelope("busy", &format!("b-{i}"), None, "x"))
            .await;
    }
    wait_until_async(T, "the waiting calls' consumer", exists).await;
    f.wait_for(5, T).await;
    nats.wait_settled(T).await;
    assert_eq!(f.max_in_flight(), 1, "one at a time");
    let ids: HashSet<String> = f
        .requests()
        .iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "each call ran once");

    // Nothing waits any more: NATS removes the consumer after --consumer-idle.
    let idle_from = Instant::now();
    wait_until_async(T, "the idle consumer to be removed", || async {
        !exists().await
    })
    .await;
    eprintln!(
        "idle consumer removed {:?} after the last call",
        idle_from.elapsed()
    );

    // A call that finds room starts directly, without a consumer of its own.
    nats.publish(&envelope("busy", "b-5", None, "x")).await;
    f.wait_for(6, T).await;
    nats.wait_settled(T).await;
    assert!(!exists().await, "no consumer for a call that did not wait");
    worker.stop(T).await.unwrap();
}
