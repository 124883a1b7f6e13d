//! Priority within a function, against a real nats-server: behind a backlog of normal calls held
//! back by the function's concurrency, a `high` call starts within a second; a `low` call starts
//! only once no `normal` one waits; a `high` call that failed and waits for its retry, or was
//! delayed, keeps its priority; with two replicas the lanes hold the function's concurrency; and
//! through the gateway, `X-Priority` and a batch line's `priority` show in the call's status.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Nats, Worker, envelope, function_taking, start_waits};
use flotilla_queue::{Envelope, FunctionName, Priority, subjects};
use flotilla_testsupport::{Recorded, RecordingServer, Reply, wait_until, wait_until_async};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn call(id: &str, priority: Priority) -> Envelope {
    let mut env = envelope("busy", id, None, "x");
    env.priority = priority;
    env
}

/// A worker calling `function` for `busy` one call at a time, whose wait consumers NATS removes
/// after a second without requests (`--consumer-idle 1s`).
async fn idle_worker(nats: &Nats, function: &RecordingServer) -> Worker {
    let policies = format!(
        "[functions.busy]\nurl = \"{}\"\nconcurrency = 1\n",
        function.url()
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), policies).unwrap();
    Worker::start_ready(
        &nats.url(),
        &[
            "--policies",
            file.path().to_str().unwrap(),
            "--consumer-idle",
            "1s",
        ],
    )
    .await
}

/// Waits until NATS no longer has the consumer of `busy`'s lane of `lane`.
async fn lane_consumer_removed(nats: &Nats, lane: Priority, what: &str) {
    let name = subjects::lane_consumer_name(&FunctionName::parse("busy").unwrap(), lane);
    wait_until_async(T, what, || async {
        let s = nats.js.get_stream(subjects::wait_stream(0)).await.unwrap();
        s.consumer_info(&name).await.is_err()
    })
    .await;
}

/// When the function saw call `id` start, each attempt.
fn starts_of(function: &RecordingServer, id: &str) -> Vec<Instant> {
    let mut at: Vec<Instant> = function
        .requests()
        .iter()
        .filter(|r| r.header("x-call-id") == id)
        .map(|r| r.at)
        .collect();
    at.sort_unstable();
    at
}

/// Start order of the calls the function saw, by call id.
fn starts(function: &RecordingServer) -> Vec<String> {
    let mut seen = function.requests();
    seen.sort_by_key(|r| r.at);
    seen.iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_calls_start_within_a_second_behind_3000_normal_ones() {
    const BACKLOG: usize = 3_000;
    const HIGH: usize = 8;
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(200)).await;
    let w = Worker::busy(&nats, &function, 2, "").await;
    for i in 0..BACKLOG {
        nats.publish(&call(&format!("normal-{i}"), Priority::Normal))
            .await;
    }
    nats.dispatched(0, T).await;
    assert!(function.count() < 100, "five minutes of work still wait");

    let mut sent = HashMap::new();
    for i in 0..HIGH {
        let id = format!("high-{i}");
        sent.insert(id.clone(), Instant::now());
        nats.publish(&call(&id, Priority::High)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (p50, max) = start_waits(&function, &sent, T).await;
    eprintln!("high calls behind {BACKLOG} normal ones: start p50 {p50:?}, max {max:?}");
    assert!(p50 <= Duration::from_secs(1), "p50 {p50:?}");
    assert!(max <= Duration::from_secs(2), "max {max:?}");
    assert_eq!(function.max_in_flight(), 2, "lanes share the concurrency");
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_calls_start_after_every_waiting_normal_one() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(40)).await;
    let w = Worker::busy(&nats, &function, 2, "").await;
    // Half a second of normal work waits, so the function's calls go through its lanes; with the
    // calls below, the drain lasts long enough (about 2.5 s) for the loop to read its consumers,
    // saturated by normal calls, more than once.
    for i in 0..24 {
        nats.publish(&call(&format!("first-{i}"), Priority::Normal))
            .await;
    }
    nats.dispatched(0, T).await;
    // Then low and normal calls arrive interleaved, a low one first.
    for i in 0..96 {
        let (id, p) = if i % 3 == 0 {
            (format!("low-{i}"), Priority::Low)
        } else {
            (format!("normal-{i}"), Priority::Normal)
        };
        nats.publish(&call(&id, p)).await;
    }
    function.wait_for(120, T).await;
    let order = starts(&function);
    let first_low = order.iter().position(|id| id.starts_with("low-")).unwrap();
    let last_normal = order
        .iter()
        .rposition(|id| !id.starts_with("low-"))
        .unwrap();
    assert!(
        last_normal < first_low,
        "a low call started before a waiting normal one: {order:?}"
    );
    nats.wait_settled(T).await;
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_call_waiting_for_its_retry_keeps_its_priority() {
    let nats = Nats::start(1).await;
    let failed_once = Arc::new(AtomicBool::new(false));
    let seen = failed_once.clone();
    let function = RecordingServer::start(Arc::new(move |r: &Recorded| {
        if r.header("x-call-id") == "high-retried" && !seen.swap(true, Ordering::SeqCst) {
            return Reply::status(500);
        }
        Reply::status(200).delay(Duration::from_millis(200))
    }))
    .await;
    let retry =
        "[functions.busy.retry]\nattempts = 2\nmin_backoff = \"100ms\"\nmax_backoff = \"100ms\"\n";
    let w = Worker::busy(&nats, &function, 2, retry).await;
    for i in 0..400 {
        nats.publish(&call(&format!("normal-{i}"), Priority::Normal))
            .await;
    }
    nats.dispatched(0, T).await;
    let sent = Instant::now();
    nats.publish(&call("high-retried", Priority::High)).await;
    wait_until(T, "the high call ran twice", || {
        starts_of(&function, "high-retried").len() == 2
    })
    .await;
    let second = starts_of(&function, "high-retried")[1];
    assert!(failed_once.load(Ordering::SeqCst));
    let took = second - sent;
    eprintln!("a high call's retry started {took:?} after it was sent, behind 400 normal calls");
    // 400 normal calls are 40 s of work: only its lane explains a start within seconds.
    assert!(took < Duration::from_secs(5), "{took:?}");
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_the_lanes_within_the_functions_concurrency() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(30)).await;
    let a = Worker::busy(&nats, &function, 4, "").await;
    let b = Worker::busy(&nats, &function, 4, "").await;
    let priorities = [Priority::High, Priority::Normal, Priority::Low];
    for i in 0..300 {
        let p = priorities[i % 3];
        nats.publish(&call(&format!("{p}-{i}"), p)).await;
    }
    function.wait_for(300, T).await;
    nats.wait_settled(T).await;
    assert_eq!(function.count(), 300, "each call ran once");
    assert!(
        function.max_in_flight() <= 4,
        "{} at once",
        function.max_in_flight()
    );
    a.stop(T).await.unwrap();
    b.stop(T).await.unwrap();
}

async fn status(gw: &Gateway, id: &str) -> Value {
    gw.get_json(&format!("/async-call/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_a_priority_from_the_header_or_the_batch_line_and_shows_it() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(300)).await;
    let gw = Gateway::start(&["--nats-url", &nats.url()]).await;
    let post = |headers: &'static [(&'static str, &'static str)]| {
        gw.post("/async-function/busy", headers, "in")
    };

    let refused = post(&[("x-priority", "urgent")]).await.unwrap();
    assert_eq!(refused.status, 400);
    let reason = String::from_utf8_lossy(&refused.body);
    assert!(
        reason.contains("X-Priority must be one of high, normal or low"),
        "{reason}"
    );

    // Numbered ids (status pages), a client's own id (a record of its own), and the default.
    let high = post(&[("x-priority", "high")])
        .await
        .unwrap()
        .call_id
        .unwrap();
    let own = post(&[("x-priority", "LOW"), ("x-call-id", "my-own-low")])
        .await
        .unwrap()
        .call_id
        .unwrap();
    let plain = post(&[]).await.unwrap().call_id.unwrap();
    let lines = gw
        .post_batch(
            "busy",
            "{\"body\":\"a\",\"priority\":\"low\"}\n{\"body\":\"b\",\"priority\":\"soon\"}\n",
        )
        .await;
    assert_eq!(lines[1]["status"], 400, "{lines:?}");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("priority must be one of high, normal or low"),
        "{lines:?}"
    );
    let from_batch = lines[0]["call_id"].as_str().unwrap().to_owned();

    let expected = [
        (&high, "high"),
        (&own, "low"),
        (&plain, "normal"),
        (&from_batch, "low"),
    ];
    for (id, priority) in expected {
        let s = status(&gw, id).await;
        assert_eq!(
            (s["state"].as_str(), s["priority"].as_str()),
            (Some("queued"), Some(priority)),
            "{id}"
        );
    }
    // The worker's records keep it: running, then the final state.
    let w = Worker::busy(&nats, &function, 4, "").await;
    for (id, priority) in expected {
        wait_until_async(T, &format!("{id} succeeded"), || async {
            status(&gw, id).await["state"] == "succeeded"
        })
        .await;
        assert_eq!(status(&gw, id).await["priority"], priority, "{id}");
    }
    assert_eq!(function.count(), 4);
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_high_call_starts_before_the_normal_backlog_when_due() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(200)).await;
    let gw = Gateway::start(&["--nats-url", &nats.url()]).await;
    let w = Worker::busy(&nats, &function, 2, "").await;
    for i in 0..300 {
        nats.publish(&call(&format!("normal-{i}"), Priority::Normal))
            .await;
    }
    nats.dispatched(0, T).await;
    let sent = Instant::now();
    let delayed = gw
        .post(
            "/async-function/busy",
            &[("x-priority", "high"), ("x-delay", "1s")],
            "in",
        )
        .await
        .unwrap();
    assert_eq!(delayed.status, 202);
    let id = delayed.call_id.unwrap();
    wait_until(T, "the delayed high call started", || {
        !starts_of(&function, &id).is_empty()
    })
    .await;
    let started = starts_of(&function, &id)[0];
    let took = started - sent;
    eprintln!("a high call delayed by 1 s started after {took:?}, behind 300 normal calls");
    assert!(
        took >= Duration::from_secs(1),
        "not before its delay: {took:?}"
    );
    // 300 normal calls are 30 s of work.
    assert!(took < Duration::from_secs(4), "{took:?}");
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_call_overtakes_calls_queued_for_a_quick_functions_slot() {
    // A quick function's calls wait for its slot in place, in arrival order, while no call of it
    // asks for a priority; once one does, they wait in lanes, where priority orders them.
    const NORMAL: usize = 1_000;
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(3)).await;
    let w = Worker::busy(&nats, &function, 1, "").await;
    nats.publish(&call("low-first", Priority::Low)).await;
    for i in 0..NORMAL {
        nats.publish(&call(&format!("normal-{i}"), Priority::Normal))
            .await;
    }
    let sent = Instant::now();
    nats.publish(&call("high", Priority::High)).await;
    wait_until(T, "the high call started", || {
        !starts_of(&function, "high").is_empty()
    })
    .await;
    let started = starts_of(&function, "high")[0];
    let order = starts(&function);
    let before = order.iter().take_while(|id| *id != "high").count();
    eprintln!(
        "a high call behind {NORMAL} calls of a 3 ms function started after {:?}, {before} calls before it",
        started - sent
    );
    assert!(before < NORMAL - 200, "{before} calls started before it");
    nats.wait_settled(T).await;
    assert_eq!(
        starts(&function).first().map(String::as_str),
        Some("low-first"),
        "a call that need not wait starts at once, whatever its priority"
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_consumer_nats_removed_when_idle_is_served_again() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(100)).await;
    let w = idle_worker(&nats, &function).await;
    // Eight seconds of normal calls keep the function's wait loop (and its normal lane) busy.
    for i in 0..80 {
        nats.publish(&call(&format!("normal-{i}"), Priority::Normal))
            .await;
    }
    nats.dispatched(0, T).await;
    nats.publish(&call("high-1", Priority::High)).await;
    wait_until(T, "the first high call started", || {
        !starts_of(&function, "high-1").is_empty()
    })
    .await;
    // The high lane's consumer sees no request for longer than --consumer-idle: NATS removes it.
    lane_consumer_removed(
        &nats,
        Priority::High,
        "the idle high lane's consumer removed",
    )
    .await;
    let sent = Instant::now();
    nats.publish(&call("high-2", Priority::High)).await;
    wait_until(T, "the second high call started", || {
        !starts_of(&function, "high-2").is_empty()
    })
    .await;
    let took = starts_of(&function, "high-2")[0] - sent;
    let normal_left = 80
        - starts(&function)
            .iter()
            .filter(|id| id.starts_with("normal-"))
            .count();
    eprintln!("a high call after its lane's consumer was removed started after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        normal_left > 10,
        "the normal backlog was gone: {normal_left} left"
    );
    // Once nothing waits, the loop ends (a lane consumer that went meanwhile does not keep it
    // asking), and NATS removes the normal lane's consumer too.
    nats.wait_settled(T).await;
    lane_consumer_removed(
        &nats,
        Priority::Normal,
        "the drained loop ended and its consumer went",
    )
    .await;
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_calls_are_served_after_a_high_backlog_outlived_their_lanes_consumer() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(100)).await;
    let w = idle_worker(&nats, &function).await;
    // The first normal call starts at once; the high backlog behind it waits three seconds, in
    // which the normal lane is not asked and NATS removes its consumer.
    nats.publish(&call("normal-first", Priority::Normal)).await;
    for i in 0..30 {
        nats.publish(&call(&format!("high-{i}"), Priority::High))
            .await;
    }
    nats.dispatched(0, T).await;
    lane_consumer_removed(
        &nats,
        Priority::Normal,
        "the normal lane's consumer removed",
    )
    .await;
    for i in 0..5 {
        nats.publish(&call(&format!("normal-{i}"), Priority::Normal))
            .await;
    }
    function.wait_for(36, T).await;
    nats.wait_settled(T).await;
    let order = starts(&function);
    let last_high = order
        .iter()
        .rposition(|id| id.starts_with("high-"))
        .unwrap();
    let first_late = order.iter().position(|id| id == "normal-0").unwrap();
    assert!(last_high < first_late, "{order:?}");
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_high_call_of_a_rate_limited_function_does_not_wait_out_an_open_poll() {
    // Every call of a rate-limited function waits in the wait stream, and between calls its loop
    // keeps a long poll open on the normal lane, holding the free slots for up to 5 s.
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(20)).await;
    let w = Worker::busy(&nats, &function, 4, "rate = 50\n").await;
    nats.publish(&call("normal-0", Priority::Normal)).await;
    wait_until(T, "the normal call ran", || function.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    nats.publish(&call("high-0", Priority::High)).await;
    wait_until(T, "the high call started", || {
        !starts_of(&function, "high-0").is_empty()
    })
    .await;
    let took = starts_of(&function, "high-0")[0] - sent;
    eprintln!("the first high call of a rate-limited function started after {took:?}");
    // A move wakes the loop: the call does not wait for the open poll's next heartbeat (1 s).
    assert!(took < Duration::from_millis(300), "{took:?}");
    w.stop(T).await.unwrap();
}
