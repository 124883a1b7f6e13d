//! The senders against a scripted gateway: the open loop keeps its schedule and measures from
//! intended send times (a stall shows in the percentiles: no coordinated omission), the closed
//! loop keeps its concurrency, errors are classified by kind, and a priority mix sends each call
//! its `X-Priority` and remembers it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flotilla_loadgen::config::LoadModel;
use flotilla_loadgen::driver::{Load, drive};
use flotilla_loadgen::net::{Clock, client};
use flotilla_loadgen::schedule::RateStep;
use flotilla_loadgen::stats::Recorder;
use flotilla_testsupport::{Recorded, RecordingServer, Reply};

fn load(model: LoadModel, duration: Duration) -> Load {
    Load {
        model,
        duration,
        count: None,
        functions: 3,
        skew: 1.0,
        body: Bytes::from_static(b"payload"),
        max_in_flight: 1000,
        timeout: Duration::from_secs(5),
        seed: 9,
        batch: 1,
        priority_mix: None,
        keys: None,
    }
}

/// A gateway that accepts everything and names each call by the request header `header`
/// (`<value>-<n>`), so a test sees what each accepted call was sent with.
async fn naming_calls_by(header: &'static str) -> RecordingServer {
    let n = Arc::new(AtomicUsize::new(0));
    RecordingServer::start(Arc::new(move |r: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        Reply::status(202).header("x-call-id", &format!("{}-{i}", r.header(header)))
    }))
    .await
}

/// A gateway that accepts everything, with an optional stall on the n-th request.
async fn gateway(stall_at: Option<usize>, stall: Duration) -> RecordingServer {
    let n = Arc::new(AtomicUsize::new(0));
    RecordingServer::start(Arc::new(move |_: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let reply = Reply::status(202).header("x-call-id", &format!("id-{i}"));
        if Some(i) == stall_at {
            reply.delay(stall)
        } else {
            reply
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_schedule_and_counts_stalls() {
    let server = gateway(Some(10), Duration::from_millis(300)).await;
    let rec = Arc::new(Recorder::new(Clock::new()));
    let mut l = load(
        LoadModel::Open {
            steps: vec![RateStep {
                rate: 100.0,
                duration: None,
            }],
        },
        Duration::from_secs(1),
    );
    // One request at a time: the stall holds every later send back, as a blocked client would.
    l.max_in_flight = 1;
    let sent = drive(
        &server.url(),
        Some("http://127.0.0.1:9/cb"),
        &l,
        client(),
        rec.clone(),
    )
    .await
    .unwrap();
    assert_eq!(rec.accepted.load(Ordering::SeqCst), 100);
    let h = rec.enqueue_histogram();
    assert_eq!(h.len(), 100);
    // Measured from intended send times, the ~30 sends queued behind the 300 ms stall carry it:
    // well over a fifth of the calls are slower than 20 ms. Measured from actual send times,
    // only the stalled one would be.
    let slow = h.count_between(20_000, 10_000_000);
    assert!(slow >= 20, "only {slow} calls show the stall");
    assert!(h.max() >= 290_000, "max {}", h.max());
    // Sending took the planned second plus the stall's backlog, not more.
    let took = Duration::from_nanos(sent.end_ns - sent.start_ns);
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Every request went to one of the three functions, the first the hottest.
    let reqs = server.requests();
    let hot = reqs
        .iter()
        .filter(|r| r.path == "/async-function/lg-0")
        .count();
    let cold = reqs
        .iter()
        .filter(|r| r.path == "/async-function/lg-2")
        .count();
    assert!(hot > cold, "skew: lg-0 {hot}, lg-2 {cold}");
    assert!(
        reqs.iter()
            .all(|r| r.header("x-callback-url") == "http://127.0.0.1:9/cb")
    );
    assert!(
        reqs.iter()
            .all(|r| r.body == Bytes::from_static(b"payload"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_respects_count_and_concurrency() {
    let server = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(202)
            .header("x-call-id", "same")
            .delay(Duration::from_millis(5))
    }))
    .await;
    let rec = Arc::new(Recorder::new(Clock::new()));
    let mut l = load(
        LoadModel::Closed { concurrency: 4 },
        Duration::from_secs(30),
    );
    l.count = Some(60);
    drive(
        &server.url(),
        Some("http://127.0.0.1:9/cb"),
        &l,
        client(),
        rec.clone(),
    )
    .await
    .unwrap();
    assert_eq!(rec.sent.load(Ordering::SeqCst), 60);
    assert_eq!(server.count(), 60);
    assert!(server.max_in_flight() <= 4, "{}", server.max_in_flight());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    let server = RecordingServer::answering(503).await;
    let rec = Arc::new(Recorder::new(Clock::new()));
    let mut l = load(
        LoadModel::Closed { concurrency: 2 },
        Duration::from_secs(30),
    );
    l.count = Some(10);
    drive(
        &server.url(),
        Some("http://127.0.0.1:9/cb"),
        &l,
        client(),
        rec.clone(),
    )
    .await
    .unwrap();
    assert_eq!(rec.error_kinds().get("status_503"), Some(&10));

    // Nothing listens on a port just released: connect errors.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rec = Arc::new(Recorder::new(Clock::new()));
    l.count = Some(3);
    drive(
        &format!("http://127.0.0.1:{port}"),
        Some("http://127.0.0.1:9/cb"),
        &l,
        client(),
        rec.clone(),
    )
    .await
    .unwrap();
    assert_eq!(rec.error_kinds().get("connect"), Some(&3));
    assert_eq!(rec.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_mix_sends_each_priority_in_its_share_and_remembers_it() {
    // The call id names the priority the request carried.
    let server = naming_calls_by("x-priority").await;
    let rec = Arc::new(Recorder::new(Clock::new()));
    let mut l = load(
        LoadModel::Closed { concurrency: 8 },
        Duration::from_secs(30),
    );
    l.count = Some(2_000);
    l.priority_mix = Some("high=1,normal=3".parse().unwrap());
    drive(&server.url(), None, &l, client(), rec.clone())
        .await
        .unwrap();
    let requests = server.requests();
    let high = requests
        .iter()
        .filter(|r| r.header("x-priority") == "high")
        .count();
    let normal = requests
        .iter()
        .filter(|r| r.header("x-priority") == "normal")
        .count();
    assert_eq!((high + normal, requests.len()), (2_000, 2_000));
    assert!((400..600).contains(&high), "{high} high of 2,000");
    let accepted = rec.accepted_calls();
    assert_eq!(accepted.len(), 2_000);
    for a in accepted {
        let p = a.priority.expect("sent with a priority");
        assert!(a.call_id.starts_with(&format!("{p}-")), "{}", a.call_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_keys_follow_their_skew_and_are_remembered() {
    // The call id names the key the request carried.
    let server = naming_calls_by("x-fairness-key").await;
    let rec = Arc::new(Recorder::new(Clock::new()));
    let mut l = load(
        LoadModel::Closed { concurrency: 8 },
        Duration::from_secs(30),
    );
    l.count = Some(2_000);
    l.keys = Some(flotilla_loadgen::mix::KeyMix::new(100, 1.0));
    drive(&server.url(), None, &l, client(), rec.clone())
        .await
        .unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2_000);
    let hottest = requests
        .iter()
        .filter(|r| r.header("x-fairness-key") == "key-0")
        .count();
    // Zipf 1 over 100 keys: key-0 draws 1/H(100), about 19 %.
    assert!(
        (300..500).contains(&hottest),
        "key-0 drew {hottest} of 2,000"
    );
    for a in rec.accepted_calls() {
        let k = a.key.expect("sent with a key");
        assert!(a.call_id.starts_with(&format!("key-{k}-")), "{}", a.call_id);
    }
}
