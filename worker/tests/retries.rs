//! Retries and dead letters against a real nats-server: failed calls are tried again per policy
//! (`Retry-After` included), the last failure goes to the dead letters and can be replayed, waiting
//! retries survive a SIGKILL and never hold a function's concurrency, and malformed retries are
//! dead-lettered without stopping the retry loop.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use common::{Gateway, Nats, Worker, dead_letters, envelope, get, sigterm, spawn_worker};
use flotilla_queue::dead_letter as dl;
use flotilla_queue::envelope::{Control, H_RETRY_AT};
use flotilla_queue::{FunctionName, subjects};
use flotilla_testsupport::{Recorded, RecordingServer, Reply, wait_until, wait_until_async};
use futures_util::StreamExt;

const T: Duration = Duration::from_secs(30);

/// A function that answers `reply` to the first `n` requests of each call id, then 200 "ok".
fn fails_first(n: usize, reply: Reply) -> flotilla_testsupport::Handler {
    let seen: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    Arc::new(move |r: &Recorded| {
        let mut seen = seen.lock().unwrap();
        let k = seen.entry(r.header("x-call-id").to_owned()).or_default();
        *k += 1;
        if *k <= n {
            reply.clone()
        } else {
            Reply::status(200).body("ok")
        }
    })
}

/// Short backoffs, so tests spend their time on behaviour rather than waiting.
const FAST: [&str; 4] = [
    "--retry-min-backoff",
    "50ms",
    "--retry-max-backoff",
    "150ms",
];

fn args<'a>(template: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--function-url-template", template];
    a.extend_from_slice(extra);
    a
}

/// Messages waiting under the retry subjects of `shard`.
async fn retries_waiting(nats: &Nats, shard: u32) -> u64 {
    let s = nats
        .js
        .get_stream(subjects::call_stream(shard))
        .await
        .unwrap();
    let mut counts = s
        .info_with_subjects(subjects::retry_wildcard(shard))
        .await
        .unwrap();
    let mut total = 0;
    while let Some(entry) = counts.next().await {
        total += entry.unwrap().1 as u64;
    }
    total
}

fn h<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_success_is_called_three_times_with_one_callback() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(fails_first(2, Reply::status(503))).await;
    let sink = RecordingServer::answering(200).await;
    let worker = Worker::start_ready(&nats.url(), &args(&function.url(), &FAST)).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("twice", "t-1", Some(&cb), "x"))
        .await;
    sink.wait_for(1, T).await;
    nats.wait_settled(T).await;

    assert_eq!(function.count(), 3);
    assert!(
        function
            .requests()
            .iter()
            .all(|r| r.header("x-call-id") == "t-1")
    );
    assert_eq!(sink.count(), 1, "intermediate failures make no callback");
    let c = &sink.requests()[0];
    assert_eq!(c.header("x-function-status"), "200");
    assert_eq!(&c.body[..], b"ok");
    assert_eq!(c.header("x-retry"), "2");
    assert_eq!(c.header("x-retry-max"), "2");
    let (_, metrics) = get(worker.admin, "/metrics").await;
    assert!(
        metrics.contains("worker_retries_scheduled_total{function_name=\"twice\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("worker_retries_waiting{shard=\"0\"}"),
        "{metrics}"
    );
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_500_ends_in_the_dead_letters_and_replay_runs_it_again() {
    let nats = Nats::start(1).await;
    let function =
        RecordingServer::start(Arc::new(|_: &Recorded| Reply::status(500).body("boom"))).await;
    let sink = RecordingServer::answering(200).await;
    let worker = Worker::start_ready(&nats.url(), &args(&function.url(), &FAST)).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("always", "a-1", Some(&cb), "payload"))
        .await;
    sink.wait_for(1, T).await;
    nats.wait_settled(T).await;

    assert_eq!(function.count(), 3, "--retry-attempts defaults to 3");
    assert_eq!(
        sink.count(),
        1,
        "the final failure reaches the callback once"
    );
    let c = &sink.requests()[0];
    assert_eq!(c.header("x-function-status"), "500");
    assert_eq!(&c.body[..], b"boom");
    assert_eq!(c.header("x-retry"), "2");
    assert_eq!(c.header("x-retry-max"), "2");

    let letters = dead_letters(&nats, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (subject, headers, payload) = &letters[0];
    assert_eq!(subject, "flotilla.dead.always");
    assert_eq!(&payload[..], b"payload");
    assert_eq!(h(headers, dl::H_KIND), dl::KIND_EXHAUSTED);
    assert_eq!(h(headers, dl::H_ATTEMPTS), "3");
    assert_eq!(h(headers, dl::H_LAST_STATUS), "500");
    assert_eq!(Control::of(headers).unwrap().call_id, "a-1");
    let reason = h(headers, dl::H_REASON);
    assert!(
        reason.contains("function answered 500")
            && reason.contains("attempt 3 of 3")
            && reason.contains("boom"),
        "{reason}"
    );
    assert!(h(headers, dl::H_TIME).parse::<u128>().unwrap() > 0);
    let (_, metrics) = get(worker.admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("worker_dead_letters_total")
                && l.contains("kind=\"exhausted\"")
                && l.contains("function_name=\"always\"")),
        "{metrics}"
    );

    // Replay through the gateway: the call runs again with a fresh budget.
    let url = nats.url();
    let gateway = Gateway::start(&["--nats-url", &url]).await;
    let answer = gateway
        .post(
            "/system/dead-letters/replay",
            &[("content-type", "application/json")],
            r#"{"function":"always"}"#,
        )
        .await
        .unwrap();
    let (status, body) = (answer.status, String::from_utf8_lossy(&answer.body));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"replayed\":1"), "{body}");
    sink.wait_for(2, T).await;
    nats.wait_settled(T).await;
    assert_eq!(function.count(), 6);
    let again = &sink.requests()[1];
    assert_eq!(again.header("x-call-id"), "a-1");
    assert_eq!(again.header("x-retry"), "2");
    // The replayed letter was removed; the second failure wrote a new one.
    let letters = dead_letters(&nats, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    // With a fixed limit a 429 is a failed attempt, retried per the policy (under adaptive
    // control it is a refusal that uses no attempt: tests/adaptive.rs).
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(fails_first(
        1,
        Reply::status(429).header("retry-after", "2"),
    ))
    .await;
    let sink = RecordingServer::answering(200).await;
    let fixed = [FAST.as_slice(), &["--adaptive", "false"]].concat();
    let worker = Worker::start_ready(&nats.url(), &args(&function.url(), &fixed)).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("limited", "l-1", Some(&cb), "x"))
        .await;
    sink.wait_for(1, T).await;
    let at: Vec<Instant> = function.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 2);
    let waited = at[1] - at[0];
    eprintln!("Retry-After: 2 -> retried after {waited:?}");
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(waited < Duration::from_secs(4), "retried after {waited:?}");
    let c = &sink.requests()[0];
    assert_eq!(
        (c.header("x-function-status"), c.header("x-retry")),
        ("200", "1")
    );
    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_timeout_is_a_retried_504() {
    let nats = Nats::start(1).await;
    let slow = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_secs(3))
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies.toml");
    std::fs::write(
        &policy,
        format!(
            "[functions.sleepy]\nurl = \"{}\"\ntimeout = \"200ms\"\n\
             [functions.sleepy.retry]\nattempts = 2\nmin_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n",
            slow.url()
        ),
    )
    .unwrap();
    let sink = RecordingServer::answering(200).await;
    let worker = Worker::start_ready(&nats.url(), &["--policies", policy.to_str().unwrap()]).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("sleepy", "s-1", Some(&cb), "x"))
        .await;
    sink.wait_for(1, T).await;
    nats.wait_settled(T).await;

    assert_eq!(slow.count(), 2, "the timeout was retried once");
    assert_eq!(sink.count(), 1);
    let c = &sink.requests()[0];
    assert_eq!(c.header("x-function-status"), "504");
    assert_eq!(c.header("x-retry"), "1");
    assert_eq!(c.header("x-retry-max"), "1");
    let letters = dead_letters(&nats, 1).await;
    let (_, headers, _) = &letters[0];
    assert_eq!(h(headers, dl::H_LAST_STATUS), "504");
    assert_eq!(h(headers, dl::H_ATTEMPTS), "2");
    assert!(h(headers, dl::H_REASON).contains("did not answer within 200ms"));
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_retries_are_dead_lettered_and_the_loop_goes_on() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(fails_first(1, Reply::status(503))).await;
    let sink = RecordingServer::answering(200).await;
    let worker = Worker::start_ready(&nats.url(), &args(&function.url(), &FAST)).await;
    let echo = FunctionName::parse("echo").unwrap();
    let retry_subject = subjects::retry_subject(0, &echo);

    // A valid envelope without a due time.
    let (headers, body) = envelope("echo", "no-due", None, "x").to_nats(None);
    nats.js
        .publish_with_headers(retry_subject.clone(), headers, body)
        .await
        .unwrap()
        .await
        .unwrap();
    // A due time that is no number.
    let (mut headers, body) = envelope("echo", "bad-due", None, "x").to_nats(None);
    headers.insert(H_RETRY_AT, "tomorrow");
    nats.js
        .publish_with_headers(retry_subject.clone(), headers, body)
        .await
        .unwrap()
        .await
        .unwrap();
    // No headers at all.
    nats.js
        .publish(retry_subject.clone(), Bytes::from_static(b"raw"))
        .await
        .unwrap()
        .await
        .unwrap();
    // And a call that needs a retry behind them.
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("echo", "good", Some(&cb), "ok"))
        .await;
    sink.wait_for(1, T).await;
    assert_eq!(sink.requests()[0].header("x-retry"), "1");
    nats.wait_settled(T).await;

    let letters = dead_letters(&nats, 3).await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for (subject, headers, _) in &letters {
        assert_eq!(subject, "flotilla.dead.echo");
        assert_eq!(h(headers, dl::H_KIND), dl::KIND_POISON);
        assert_eq!(h(headers, dl::H_SUBJECT), retry_subject);
        assert!(h(headers, dl::H_REASON).contains(H_RETRY_AT), "{headers:?}");
    }
    assert_eq!(function.count(), 2, "poison never reaches the function");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_100_retries_wait_loses_none() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(fails_first(1, Reply::status(503))).await;
    let sink = RecordingServer::answering(200).await;
    let cb = format!("{}/cb", sink.url());
    let total = 100;
    for i in 0..total {
        nats.publish(&envelope("crashy", &format!("k-{i}"), Some(&cb), "x"))
            .await;
    }
    // Long enough that every retry still waits when the worker dies.
    let flags = [
        "--retry-min-backoff",
        "4s",
        "--retry-max-backoff",
        "4s",
        "--ack-wait",
        "1s",
    ];
    let mut first = spawn_worker(&nats.url(), &function.url(), &flags);
    wait_until_async(T, "100 retries waiting", || async {
        retries_waiting(&nats, 0).await == total && nats.stored().await == total
    })
    .await;
    assert_eq!(function.count(), total as usize);
    first.kill().await.expect("SIGKILL");
    assert_eq!(sink.count(), 0, "every call still waits for its retry");

    let mut second = spawn_worker(&nats.url(), &function.url(), &flags);
    wait_until(T, "every call id at the callback sink", || {
        sink.count() >= total as usize
    })
    .await;
    nats.wait_settled(T).await;
    let requests = sink.requests();
    let ids: HashSet<&str> = requests.iter().map(|r| r.header("x-call-id")).collect();
    assert_eq!(ids.len(), total as usize);
    assert_eq!(requests.len(), total as usize, "one callback per call");
    assert!(
        requests
            .iter()
            .all(|r| r.header("x-function-status") == "200" && r.header("x-retry") == "1")
    );
    assert_eq!(function.count(), 2 * total as usize);
    // The retry loop stops pulling with the rest on SIGTERM.
    sigterm(&second);
    let status = tokio::time::timeout(T, second.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Publishes `n` calls of `ok` one after another and returns each one's time from publish to the
/// function receiving it.
async fn ok_latencies(
    nats: &Nats,
    function: &RecordingServer,
    tag: &str,
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let published = Instant::now();
        nats.publish(&envelope("ok", &id, None, "x")).await;
        wait_until(T, "ok called", || {
            function
                .requests()
                .iter()
                .any(|r| r.header("x-call-id") == id)
        })
        .await;
        let at = function
            .requests()
            .iter()
            .find(|r| r.header("x-call-id") == id)
            .unwrap()
            .at;
        out.push(at - published);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_retries_of_flaky_never_slow_ok_nor_hold_a_slot() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(|r: &Recorded| {
        if r.path.starts_with("/flaky") {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies.toml");
    // Both pinned, in the one shard; flaky's retries wait far beyond the test.
    std::fs::write(
        &policy,
        "[functions.ok]\n\
         [functions.flaky]\nconcurrency = 5\n\
         [functions.flaky.retry]\nmin_backoff = \"5m\"\nmax_backoff = \"5m\"\n",
    )
    .unwrap();
    let template = format!("{}/{{name}}", function.url());
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &template,
            "--policies",
            policy.to_str().unwrap(),
        ],
    )
    .await;
    let flaky_calls = || {
        function
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/flaky"))
            .count()
    };

    let alone = ok_latencies(&nats, &function, "alone", 30).await;

    for i in 0..200 {
        nats.publish(&envelope("flaky", &format!("f-{i}"), None, "x"))
            .await;
    }
    wait_until_async(T, "200 flaky retries waiting", || async {
        retries_waiting(&nats, 0).await == 200
    })
    .await;
    assert_eq!(flaky_calls(), 200);
    let with = ok_latencies(&nats, &function, "with", 30).await;
    let (a, w) = (median(alone), median(with));
    eprintln!("ok latency, median of 30: alone {a:?}, with 200 flaky retries waiting {w:?}");
    assert!(
        w <= a * 3 + Duration::from_millis(25),
        "alone {a:?}, with {w:?}"
    );

    // The waiting retries hold none of flaky's five slots: new calls start at once.
    for i in 0..5 {
        nats.publish(&envelope("flaky", &format!("new-{i}"), None, "x"))
            .await;
    }
    wait_until(Duration::from_secs(5), "new flaky calls started", || {
        flaky_calls() == 205
    })
    .await;
    wait_until_async(T, "205 flaky retries waiting", || async {
        retries_waiting(&nats, 0).await == 205
    })
    .await;
    // Once stored, a retry leaves nothing pending on the calls' consumer (a retry waiting there
    // would stay unacknowledged for its 5-minute backoff). The last ack may still be on its way.
    let stream = nats.js.get_stream(subjects::call_stream(0)).await.unwrap();
    wait_until_async(
        Duration::from_secs(5),
        "retries wait outside the calls' consumer",
        || async {
            let info = stream.consumer_info(subjects::DISPATCH_CONSUMER).await;
            info.is_ok_and(|i| i.num_ack_pending == 0)
        },
    )
    .await;
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_redelivered_past_max_deliveries_is_dead_lettered_without_calling_the_function() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let sink = RecordingServer::answering(200).await;
    let cb = format!("{}/cb", sink.url());
    nats.publish(&envelope("looping", "loop-1", Some(&cb), "payload"))
        .await;

    // Two deliveries that never settle, as two workers crashing on the call would leave it: pull
    // it through the shard's dispatch consumer and hand it back unsettled each time.
    let consumer: jetstream::consumer::PullConsumer = nats
        .js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some(subjects::DISPATCH_CONSUMER.into()),
                filter_subject: subjects::shard_wildcard(0),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_deliver: -1,
                ..Default::default()
            },
            subjects::call_stream(0).as_str(),
        )
        .await
        .unwrap();
    for delivery in 1..=2 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(T)
            .messages()
            .await
            .unwrap();
        let m = batch.next().await.unwrap().unwrap();
        assert_eq!(m.info().unwrap().delivered, delivery);
        m.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
    }

    let extra = ["--max-deliveries", "2"];
    let worker = Worker::start_ready(&nats.url(), &args(&function.url(), &extra)).await;
    sink.wait_for(1, T).await;
    nats.wait_settled(T).await;

    assert_eq!(function.count(), 0, "a crash loop is not run again");
    let c = &sink.requests()[0];
    assert_eq!(c.header("x-call-id"), "loop-1");
    assert_eq!(c.header("x-function-status"), "502");
    assert!(
        String::from_utf8_lossy(&c.body).contains("delivered 3 times without settling"),
        "{:?}",
        c.body
    );
    let letters = dead_letters(&nats, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (subject, headers, payload) = &letters[0];
    assert_eq!(subject, "flotilla.dead.looping");
    assert_eq!(&payload[..], b"payload");
    assert_eq!(h(headers, dl::H_KIND), dl::KIND_REDELIVERED);
    assert_eq!(
        h(headers, dl::H_REASON),
        "delivered 3 times without settling: the worker crashed or lost the ack each time"
    );
    assert_eq!(h(headers, dl::H_LAST_STATUS), "");
    assert_eq!(Control::of(headers).unwrap().call_id, "loop-1");
    worker.stop(T).await.unwrap();
}
