//! Fairness keys within a function, against a real nats-server: behind one key's backlog held
//! back by the function's concurrency, calls of other keys start within a round; under
//! `key_concurrency = 1` no key ever has two calls in flight, with two replicas; a keyed call that
//! fails keeps its key through its retries into the dead letters; calls an earlier release left
//! waiting still run once keys come into use; and through the gateway, `X-Fairness-Key` and a
//! batch line's `fairness_key` are checked and show in the call's status.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Nats, Worker, dead_letters, envelope, function_taking, start_waits};
use flotilla_queue::{Envelope, FairnessKey, FunctionName, headers, subjects};
use flotilla_testsupport::{Recorded, RecordingServer, Reply, wait_until_async};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn keyed(id: &str, key: Option<&str>) -> Envelope {
    let mut env = envelope("busy", id, None, "x");
    env.fairness_key = key.map(|k| FairnessKey::parse(k).unwrap());
    env
}

/// Stores a call straight into `busy`'s normal lane (shard 0), as a move or a claim leaves it.
async fn into_lane(nats: &Nats, headers: async_nats::HeaderMap, body: bytes::Bytes) {
    let busy = FunctionName::parse("busy").unwrap();
    nats.js
        .publish_with_headers(subjects::wait_subject(0, &busy), headers, body)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The key of each call id, from the function's view: its id names it (`<key>-<n>`).
fn key_of(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(k, _)| k)
}

/// Publishes `n` calls whose keys take turns among `<prefix>0` to `<prefix><keys - 1>`, the
/// `i`th named `<key>-<i>`.
async fn publish_across_keys(nats: &Nats, prefix: &str, keys: usize, n: usize) {
    for i in 0..n {
        let key = format!("{prefix}{}", i % keys);
        nats.publish(&keyed(&format!("{key}-{i}"), Some(&key)))
            .await;
    }
}

/// The ids of the calls `function` received, in the order they came.
fn start_order(function: &RecordingServer) -> Vec<String> {
    let mut seen = function.requests();
    seen.sort_by_key(|r| r.at);
    seen.iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect()
}

/// Asserts that the calls of each of `keys` (ids `<key>-<n>`) started in the order of `n`.
fn each_key_in_order(order: &[String], keys: &[&str]) {
    for key in keys {
        let mine: Vec<usize> = order
            .iter()
            .filter(|id| key_of(id) == *key)
            .map(|id| id.rsplit_once('-').unwrap().1.parse().unwrap())
            .collect();
        assert!(mine.is_sorted(), "{key}: {mine:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_keys_start_within_a_second_behind_one_keys_3000_calls() {
    const BACKLOG: usize = 3_000;
    const KEYS: usize = 6;
    const EACH: usize = 2;
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(200)).await;
    let w = Worker::busy(&nats, &function, 2, "").await;
    for i in 0..BACKLOG {
        nats.publish(&keyed(&format!("big-{i}"), Some("big"))).await;
    }
    nats.dispatched(0, T).await;
    assert!(function.count() < 100, "five minutes of work still wait");

    let mut sent = HashMap::new();
    for round in 0..EACH {
        for k in 0..KEYS {
            let id = format!("small{k}-{round}");
            sent.insert(id.clone(), Instant::now());
            nats.publish(&keyed(&id, Some(&format!("small{k}")))).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (p50, max) = start_waits(&function, &sent, T).await;
    eprintln!("{KEYS} keys behind one key's {BACKLOG} calls: start p50 {p50:?}, max {max:?}");
    assert!(p50 <= Duration::from_secs(1), "p50 {p50:?}");
    assert!(max <= Duration::from_millis(2500), "max {max:?}");
    assert_eq!(function.max_in_flight(), 2, "keys share the concurrency");
    let started = function.count();
    assert!(
        started < 200,
        "{started} calls started: the big key's backlog still waits"
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_take_turns_while_their_calls_wait() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(20)).await;
    // Key a's 30 calls arrive first, then b's 10 and c's 10; the key-less ones take turns as
    // one more key. All wait before the worker starts: sent to a running worker on a slow
    // machine, a's calls could all be claimed before b's arrived, and rightly run first.
    for i in 0..30 {
        nats.publish(&keyed(&format!("a-{i}"), Some("a"))).await;
    }
    for i in 0..10 {
        nats.publish(&keyed(&format!("b-{i}"), Some("b"))).await;
        nats.publish(&keyed(&format!("c-{i}"), Some("c"))).await;
        nats.publish(&keyed(&format!("none-{i}"), None)).await;
    }
    let w = Worker::busy(&nats, &function, 1, "").await;
    function.wait_for(60, T).await;
    nats.wait_settled(T).await;
    let order = start_order(&function);
    assert_eq!(order.len(), 60, "each call ran once");
    // In arrival order b's first call would start 31st. Taking turns, a gets one start in four
    // once the others wait: in the first 40 starts each other key has at least 8 of its 10.
    let first = &order[..40];
    for key in ["b", "c", "none"] {
        let n = first.iter().filter(|id| key_of(id) == key).count();
        assert!(n >= 8, "{key} started {n} times in {first:?}");
    }
    // Within a key, calls start in the order they came: the dispatch loop parks a key's calls
    // in that order, and a round claims a key's oldest.
    each_key_in_order(&order, &["a", "b", "c", "none"]);
    w.stop(T).await.unwrap();
}

/// Sends `each` calls of keys x and y, taking turns, to one replica of `function` at
/// concurrency 1, then checks that every call ran exactly once, each key's in order, and that
/// nothing is left stored (no claimed call still parked).
async fn two_keys_run_once_each_in_order(function: &RecordingServer, each: usize) {
    let nats = Nats::start(1).await;
    let w = Worker::busy(&nats, function, 1, "").await;
    for i in 0..each {
        for key in ["x", "y"] {
            nats.publish(&keyed(&format!("{key}-{i}"), Some(key))).await;
        }
    }
    function.wait_for(2 * each, T).await;
    nats.wait_settled(T).await;
    let order = start_order(function);
    let mut once = order.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), 2 * each, "each call ran once");
    each_key_in_order(&order, &["x", "y"]);
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_few_keys_wait_their_calls_are_claimed_several_at_a_time_once_each_in_order() {
    // A quick function: once its calls are seen to end within 5 ms, a claim wants 32 calls
    // beyond its free slot, and each of the two keys gives 16 with one batched read.
    let function = function_taking(Duration::from_millis(1)).await;
    two_keys_run_once_each_in_order(&function, 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_claimed_together_leave_their_key_with_one_purge_that_spares_every_other_call() {
    // The first call holds the only slot while the others are parked, two keys taking turns in
    // the wait stream; the rest are quick, so claims soon take 16 calls of each key at once and
    // remove them with one purge of the key's subject below the last, which must leave the other
    // key's calls between them, and the key's own next ones, where they are.
    let started = Arc::new(AtomicUsize::new(0));
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        let first = started.fetch_add(1, Ordering::SeqCst) == 0;
        Reply::status(200).delay(Duration::from_millis(if first { 500 } else { 1 }))
    }))
    .await;
    two_keys_run_once_each_in_order(&function, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_concurrency_holds_one_call_per_key_across_two_replicas() {
    const KEYS: usize = 6;
    const EACH: usize = 15;
    const TAKES: Duration = Duration::from_millis(60);
    let nats = Nats::start(1).await;
    let function = function_taking(TAKES).await;
    let a = Worker::busy(&nats, &function, 8, "key_concurrency = 1\n").await;
    let b = Worker::busy(&nats, &function, 8, "key_concurrency = 1\n").await;
    for i in 0..EACH {
        for k in 0..KEYS {
            nats.publish(&keyed(&format!("k{k}-{i}"), Some(&format!("k{k}"))))
                .await;
        }
    }
    function.wait_for(KEYS * EACH, T).await;
    nats.wait_settled(T).await;
    assert_eq!(function.count(), KEYS * EACH, "each call ran once");
    // A key's slot is freed only after its call answered, TAKES after it started: two starts of
    // one key closer than that overlapped.
    let mut by_key: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in function.requests() {
        by_key
            .entry(key_of(r.header("x-call-id")).to_owned())
            .or_default()
            .push(r.at);
    }
    for (key, mut starts) in by_key {
        starts.sort_unstable();
        let closest = starts.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(
            closest >= TAKES - Duration::from_millis(2),
            "two calls of {key} in flight: starts {closest:?} apart"
        );
    }
    assert!(
        function.max_in_flight() > 1,
        "keys ran beside each other ({} at most)",
        function.max_in_flight()
    );
    a.stop(T).await.unwrap();
    b.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_call_keeps_its_key_through_retries_into_the_dead_letters() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(500).await;
    let retry =
        "[functions.busy.retry]\nattempts = 3\nmin_backoff = \"50ms\"\nmax_backoff = \"50ms\"\n";
    let w = Worker::busy(&nats, &function, 1, retry).await;
    nats.publish(&keyed("keyed-0", Some("tenant 7"))).await;
    let letters = dead_letters(&nats, 1).await;
    assert_eq!(function.count(), 3, "every attempt ran");
    let (_, h, _) = &letters[0];
    assert_eq!(
        h.get(headers::FLOTILLA_FAIRNESS_KEY).map(|v| v.as_str()),
        Some("tenant 7")
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_an_earlier_release_left_waiting_still_run_once_keys_are_in_use() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(10)).await;
    // As an earlier release left them: calls moved to the function's wait subject, no key.
    for i in 0..40 {
        let (h, body) = keyed(&format!("before-{i}"), None).to_nats(None);
        into_lane(&nats, h, body).await;
    }
    let w = Worker::busy(&nats, &function, 2, "").await;
    for i in 0..40 {
        nats.publish(&keyed(&format!("k-{i}"), Some("k"))).await;
    }
    function.wait_for(80, T).await;
    nats.wait_settled(T).await;
    assert_eq!(function.count(), 80, "each call ran once");
    w.stop(T).await.unwrap();
}

async fn status(gw: &Gateway, id: &str) -> Value {
    gw.get_json(&format!("/async-call/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_a_key_from_the_header_or_the_batch_line_and_shows_it() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_millis(100))
    }))
    .await;
    let gw = Gateway::start(&["--nats-url", &nats.url()]).await;
    let long = "x".repeat(65);
    for bad in ["", long.as_str(), "caf\u{e9}"] {
        let refused = gw
            .post("/async-function/busy", &[("x-fairness-key", bad)], "in")
            .await
            .unwrap();
        assert_eq!(refused.status, 400, "{bad:?}");
        let reason = String::from_utf8_lossy(&refused.body);
        assert!(
            reason.contains("X-Fairness-Key must be 1 to 64 printable ASCII characters, with no space at either end"),
            "{reason}"
        );
    }
    let header = gw
        .post(
            "/async-function/busy",
            &[("x-fairness-key", "tenant 7")],
            "in",
        )
        .await
        .unwrap()
        .call_id
        .unwrap();
    let own = gw
        .post(
            "/async-function/busy",
            &[("x-fairness-key", "acme"), ("x-call-id", "my-own-keyed")],
            "in",
        )
        .await
        .unwrap()
        .call_id
        .unwrap();
    let plain = gw
        .post("/async-function/busy", &[], "in")
        .await
        .unwrap()
        .call_id
        .unwrap();
    let lines = gw.post_batch("busy", format!(
                "{{\"body\":\"a\",\"fairness_key\":\"b.c\"}}\n{{\"body\":\"b\",\"fairness_key\":\"{long}\"}}\n"
            )).await;
    assert_eq!(lines[1]["status"], 400, "{lines:?}");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("fairness_key must be 1 to 64 printable ASCII characters"),
        "{lines:?}"
    );
    let from_batch = lines[0]["call_id"].as_str().unwrap().to_owned();

    let expected = [
        (&header, Value::from("tenant 7")),
        (&own, Value::from("acme")),
        (&plain, Value::Null),
        (&from_batch, Value::from("b.c")),
    ];
    for (id, key) in &expected {
        let s = status(&gw, id).await;
        assert_eq!(s["state"], "queued", "{id}");
        assert_eq!(&s["fairness_key"], key, "{id}");
    }
    // The worker's records keep it, and the function does not see the header.
    let w = Worker::busy(&nats, &function, 4, "").await;
    for (id, key) in &expected {
        wait_until_async(T, &format!("{id} succeeded"), || async {
            status(&gw, id).await["state"] == "succeeded"
        })
        .await;
        assert_eq!(&status(&gw, id).await["fairness_key"], key, "{id}");
    }
    assert_eq!(function.count(), 4);
    assert!(
        function
            .requests()
            .iter()
            .all(|r| r.header("x-fairness-key").is_empty()),
        "consumed by the gateway"
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_function_whose_calls_carry_keys_grows_to_meet_them_in_slow_start() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_secs(1)).await;
    // No fixed concurrency: adaptive control, in slow start from a limit of 8. The calls arrive
    // together and take a second each, so no success raises the limit meanwhile: only growing
    // to meet the calls starts them together.
    let policies = format!("[functions.busy]\nurl = \"{}\"\n", function.url());
    let w = Worker::with_policies(&nats.url(), &function.url(), &policies).await;
    publish_across_keys(&nats, "k", 8, 64).await;
    function.wait_for(64, T).await;
    nats.wait_settled(T).await;
    assert!(
        function.max_in_flight() >= 48,
        "the limit did not grow to meet the calls: {} at once",
        function.max_in_flight()
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_keyed_call_starts_before_the_normal_keys_take_their_turns() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_millis(200)).await;
    let w = Worker::busy(&nats, &function, 2, "").await;
    publish_across_keys(&nats, "t", 3, 300).await;
    nats.dispatched(0, T).await;
    let mut high = keyed("urgent-0", Some("t0"));
    high.priority = flotilla_queue::Priority::High;
    let sent = HashMap::from([("urgent-0".to_owned(), Instant::now())]);
    nats.publish(&high).await;
    let (waited, _) = start_waits(&function, &sent, T).await;
    assert!(
        waited <= Duration::from_secs(1),
        "a high call of a key with calls waiting started after {waited:?}"
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_call_whose_key_slot_is_gone_waits_for_a_slot_of_its_own() {
    const TAKES: Duration = Duration::from_millis(600);
    let nats = Nats::start(1).await;
    let function = function_taking(TAKES).await;
    let w = Worker::busy(&nats, &function, 4, "key_concurrency = 1\n").await;
    nats.publish(&keyed("k-0", Some("k"))).await;
    function.wait_for(1, T).await;
    // A call in the lane that claims a slot it does not hold (as after its holder handed it back,
    // or its slot outlived its time to live): it must not run beside the key's running call.
    let busy = FunctionName::parse("busy").unwrap();
    let token = FairnessKey::parse("k").unwrap().token();
    let (mut h, body) = keyed("k-1", Some("k")).to_nats(None);
    h.insert(
        headers::FLOTILLA_KEY_SLOT,
        format!("999999 {}", subjects::key_slot_subject(&busy, &token, 0)).as_str(),
    );
    into_lane(&nats, h, body).await;
    function.wait_for(2, T).await;
    nats.wait_settled(T).await;
    let mut starts: Vec<Instant> = function.requests().iter().map(|r| r.at).collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 2, "each call ran once");
    assert!(
        starts[1] - starts[0] >= TAKES - Duration::from_millis(2),
        "two calls of one key in flight: started {:?} apart",
        starts[1] - starts[0]
    );
    w.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_calls_count_as_pending_in_the_queue_view() {
    let nats = Nats::start(1).await;
    let function = function_taking(Duration::from_secs(2)).await;
    let w = Worker::busy(&nats, &function, 1, "").await;
    publish_across_keys(&nats, "q", 6, 60).await;
    nats.dispatched(0, T).await;
    let gw = Gateway::start(&["--nats-url", &nats.url()]).await;
    let rows = gw.get_json("/system/queues").await;
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "busy")
        .cloned()
        .unwrap();
    // One call runs (concurrency 1), perhaps one more is claimed into the lane; the rest wait
    // parked under their keys, pending, with the oldest one's age.
    let pending = row["pending"].as_u64().unwrap();
    let in_flight = row["in_flight"].as_u64().unwrap();
    assert!((56..=59).contains(&pending), "{row}");
    assert_eq!(pending + in_flight, 60, "{row}");
    assert!(
        row["oldest_pending_age_seconds"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    w.stop(T).await.unwrap();
}
