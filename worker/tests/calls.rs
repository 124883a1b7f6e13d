//! The worker in-process against a real nats-server: what functions and callbacks receive, many
//! functions across shards, poison messages, long calls, backpressure, admin endpoints.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Nats, Worker, envelope, get};
use flotilla_queue::dead_letter as dl;
use flotilla_queue::envelope::H_CALL;
use flotilla_queue::subjects;
use flotilla_testsupport::{Recorded, RecordingServer, Reply};
use futures_util::StreamExt;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_and_callback_receive_everything() {
    let nats = Nats::start(2).await;
    let function = RecordingServer::start(Arc::new(|r: &Recorded| {
        Reply::status(201)
            .header("content-type", "application/x-thing")
            .header("x-from-function", "yes")
            .body(format!("done:{}", String::from_utf8_lossy(&r.body)))
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/fn/{{name}}", function.url());
    let worker = Worker::start_ready(&nats.url(), &["--function-url-template", &template]).await;

    let cb = format!("{}/cb?token=1", sink.url());
    let mut env = envelope("echo.ns", "call-1", Some(&cb), "hello");
    env.method = "PUT".into();
    env.path = "/a/b".into();
    env.query = "x=1&y=2".into();
    env.headers.push(("X-Custom".into(), "one".into()));
    env.headers.push(("X-Custom".into(), "two".into()));
    let published = Instant::now();
    // A function nobody has called before: discovery must find it quickly.
    nats.publish(&env).await;
    sink.wait_for(1, T).await;
    assert!(
        published.elapsed() < Duration::from_secs(2),
        "first call of a new function took {:?}",
        published.elapsed()
    );

    let f = &function.requests()[0];
    assert_eq!(f.method, "PUT");
    assert_eq!(f.path, "/fn/echo.ns/a/b");
    assert_eq!(f.query.as_deref(), Some("x=1&y=2"));
    assert_eq!(&f.body[..], b"hello");
    assert_eq!(f.header("content-type"), "text/plain");
    let custom: Vec<_> = f.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["one", "two"]);
    assert_eq!(f.header("x-call-id"), "call-1");
    assert_eq!(f.header("x-start-time"), env.start_time.to_string());

    let c = &sink.requests()[0];
    assert_eq!(c.method, "POST");
    assert_eq!(c.path, "/cb");
    assert_eq!(c.query.as_deref(), Some("token=1"));
    assert_eq!(&c.body[..], b"done:hello");
    assert_eq!(c.header("content-type"), "application/x-thing");
    assert_eq!(c.header("x-call-id"), "call-1");
    assert_eq!(c.header("x-function-name"), "echo.ns");
    assert_eq!(c.header("x-function-status"), "201");
    assert_eq!(c.header("x-start-time"), env.start_time.to_string());
    assert_eq!(c.header("x-retry"), "0");
    assert_eq!(c.header("x-retry-max"), "2");
    let secs: f64 = c.header("x-duration-seconds").parse().unwrap();
    assert!((0.0..5.0).contains(&secs), "{secs}");

    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_is_502_and_timeout_is_504() {
    let nats = Nats::start(1).await;
    let slow = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_secs(5))
    }))
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies.toml");
    std::fs::write(
        &policy,
        format!(
            "[functions.gone]\nurl = \"{closed_url}\"\n\
             [functions.sleepy]\nurl = \"{}\"\ntimeout = \"300ms\"\n\
             [functions.sleepy.retry]\nattempts = 4\n",
            slow.url()
        ),
    )
    .unwrap();
    let sink = RecordingServer::answering(204).await;
    let worker = Worker::start_ready(&nats.url(), &["--policies", policy.to_str().unwrap()]).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("gone", "c-gone", Some(&cb), "x"))
        .await;
    nats.publish(&envelope("sleepy", "c-sleepy", Some(&cb), "x"))
        .await;
    sink.wait_for(2, T).await;

    let by_id: HashMap<String, Recorded> = sink
        .requests()
        .into_iter()
        .map(|r| (r.header("x-call-id").to_owned(), r))
        .collect();
    let gone = &by_id["c-gone"];
    assert_eq!(gone.header("x-function-status"), "502");
    assert_eq!(gone.header("content-type"), "text/plain");
    assert!(
        String::from_utf8_lossy(&gone.body).contains("unreachable"),
        "{:?}",
        gone.body
    );
    assert_eq!(gone.header("x-retry-max"), "2");
    let sleepy = &by_id["c-sleepy"];
    assert_eq!(sleepy.header("x-function-status"), "504");
    assert!(String::from_utf8_lossy(&sleepy.body).contains("did not answer"));
    assert_eq!(sleepy.header("x-retry-max"), "3");
    let secs: f64 = sleepy.header("x-duration-seconds").parse().unwrap();
    assert!((0.3..2.0).contains(&secs), "{secs}");

    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_work_goes_on() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let worker =
        Worker::start_ready(&nats.url(), &["--function-url-template", &function.url()]).await;
    let subject = subjects::call_subject(0, &flotilla_queue::FunctionName::parse("echo").unwrap());

    // No headers at all.
    nats.js
        .publish(subject.clone(), Bytes::from_static(b"raw"))
        .await
        .unwrap()
        .await
        .unwrap();
    // Control fields that do not parse (a call id longer than the header).
    let mut h = async_nats::HeaderMap::new();
    h.insert(H_CALL, "2 1700000000000000000 0 99:bad 0: 0: - POST");
    nats.js
        .publish_with_headers(subject.clone(), h, Bytes::from_static(b"x"))
        .await
        .unwrap()
        .await
        .unwrap();
    // A subject that names no valid function.
    nats.js
        .publish("flotilla.call.0.a.b.c", Bytes::from_static(b"y"))
        .await
        .unwrap()
        .await
        .unwrap();
    // And a good call behind them.
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("echo", "good", Some(&cb), "ok"))
        .await;
    sink.wait_for(1, T).await;
    nats.wait_settled(T).await;

    let mut reasons = Vec::new();
    for (subject, h, payload) in common::dead_letters(&nats, 3).await {
        assert_eq!(h.get(dl::H_KIND).unwrap().as_str(), dl::KIND_POISON);
        assert!(h.get(dl::H_SEQUENCE).is_some());
        assert!(h.get(dl::H_TIME).is_some());
        reasons.push((subject, h.get(dl::H_REASON).unwrap().to_string(), payload));
    }
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|(s, r, p)| s == "flotilla.dead.echo"
            && r.contains("Flotilla-Call is malformed: call id")
            && &p[..] == b"x"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(s, r, p)| s == "flotilla.dead.echo"
            && r.contains("no headers")
            && &p[..] == b"raw"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r, p)| r.contains("no valid function") && &p[..] == b"y"),
        "{reasons:?}"
    );
    assert_eq!(function.count(), 1);
    let (_, metrics) = get(worker.admin, "/metrics").await;
    assert!(metrics.contains("worker_dead_letters_total"), "{metrics}");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_three_times_ack_wait_runs_once() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200)
            .body("slow")
            .delay(Duration::from_millis(3200))
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--ack-wait",
            "1s",
        ],
    )
    .await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("slow", "long-1", Some(&cb), "x"))
        .await;
    sink.wait_for(1, T).await;
    nats.wait_settled(T).await;
    // A redelivery would have started a second call while the first ran.
    assert_eq!(function.count(), 1);
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.requests()[0].header("x-function-status"), "200");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_callback_sink_applies_backpressure_and_gets_everything() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_millis(40))
    }))
    .await;
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--callback-queue",
            "1",
            "--callback-concurrency",
            "1",
            "--concurrency",
            "2",
        ],
    )
    .await;
    let cb = format!("{}/cb", sink.url());
    for i in 0..40 {
        nats.publish(&envelope("bp", &format!("bp-{i}"), Some(&cb), "x"))
            .await;
    }
    // Calls may run ahead of callbacks by at most: the queue (1), the delivery in flight (1) and
    // the calls holding a slot while they wait to hand over (2).
    let ahead = AtomicUsize::new(0);
    flotilla_testsupport::wait_until(Duration::from_secs(30), "40 callbacks", || {
        let a = function.count().saturating_sub(sink.count());
        ahead.fetch_max(a, Ordering::SeqCst);
        sink.requests().len() >= 40
    })
    .await;
    assert!(
        ahead.load(Ordering::SeqCst) <= 5,
        "calls ran {ahead:?} ahead"
    );
    assert_eq!(sink.max_in_flight(), 1);
    nats.wait_settled(T).await;
    let ids: std::collections::HashSet<String> = sink
        .requests()
        .iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 40);
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_metrics() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let worker =
        Worker::start_ready(&nats.url(), &["--function-url-template", &function.url()]).await;
    assert_eq!(get(worker.admin, "/healthz").await.0, 200);
    assert_eq!(get(worker.admin, "/readyz").await.0, 200);
    assert_eq!(get(worker.admin, "/nope").await.0, 404);
    nats.publish(&envelope("metered", "m-1", None, "x")).await;
    nats.wait_settled(T).await;
    let (status, body) = get(worker.admin, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "worker_calls_total{function_name=\"metered\",code=\"200\"}",
        "worker_call_duration_seconds_bucket{function_name=\"metered\"",
        "worker_in_flight{function_name=\"metered\"}",
        "worker_pending{function_name=\"metered\"}",
        "worker_callback_queue_depth",
    ] {
        assert!(body.contains(needle), "{needle} missing from\n{body}");
    }
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_published_per_call() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let mut reports = nats.client.subscribe("flotilla.report.>").await.unwrap();
    nats.client.flush().await.unwrap();
    let worker =
        Worker::start_ready(&nats.url(), &["--function-url-template", &function.url()]).await;
    nats.publish(&envelope("reported", "r-1", None, "x")).await;
    let msg = tokio::time::timeout(T, reports.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), "flotilla.report.reported");
    let r: flotilla_queue::report::Report = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        (r.call_id.as_str(), r.function.as_str(), r.status, r.attempt),
        ("r-1", "reported", 200, 1)
    );
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_calls_are_handed_back() {
    let nats = Nats::start(1).await;
    // The first three requests hang far beyond the grace period; later ones answer at once.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        if counter.fetch_add(1, Ordering::SeqCst) < 3 {
            Reply::status(200).delay(Duration::from_secs(60))
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let args = [
        "--function-url-template",
        &function.url(),
        "--grace",
        "300ms",
    ];
    let worker = Worker::start_ready(&nats.url(), &args).await;
    let cb = format!("{}/cb", sink.url());
    for i in 0..3 {
        nats.publish(&envelope("stuck", &format!("s-{i}"), Some(&cb), "x"))
            .await;
    }
    flotilla_testsupport::wait_until(T, "three calls in flight", || function.in_flight() == 3)
        .await;
    let stopping = Instant::now();
    worker.stop(T).await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(sink.count(), 0, "no callback for an abandoned call");
    assert_eq!(nats.stored().await, 3);

    // Handed back with a nak, so a replacement runs them long before ack_wait (30 s) would.
    let replacement = Worker::start(&nats.url(), &args).await;
    sink.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(function.count(), 6);
    nats.wait_settled(T).await;
    replacement.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_out_call_starts() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let worker = Worker::start_ready(
        &nats.url(),
        &["--function-url-template", &function.url(), "--rate", "20"],
    )
    .await;
    for i in 0..30 {
        nats.publish(&envelope("limited", &format!("l-{i}"), None, "x"))
            .await;
    }
    function.wait_for(30, T).await;
    let at: Vec<Instant> = function.requests().iter().map(|r| r.at).collect();
    let span = *at.iter().max().unwrap() - *at.iter().min().unwrap();
    // A burst of up to 20, then 20 per second: the last ten need about half a second.
    assert!(span >= Duration::from_millis(350), "{span:?}");
    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}
