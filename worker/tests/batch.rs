//! Batch enqueue against a real nats-server: `POST /async-batch/<name>` with 10,000 NDJSON lines,
//! some malformed and some repeating an idempotency key, answers one result a line in order,
//! enqueues each distinct call once, and its progress (`GET /async-batch/<id>`) reaches the
//! total; the batch callback arrives once, with the counts.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Gateway, Nats, Worker};
use flotilla_testsupport::{RecordingServer, wait_until_async};
use http::Method;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
const LINES: usize = 10_000;

/// The batch: every 97th line is not JSON, every 89th has an unknown field, and lines 5000.. repeat
/// the idempotency keys of lines 0.. every 10th line.
fn batch() -> (String, Vec<Expect>) {
    let mut body = String::new();
    let mut expect = Vec::with_capacity(LINES);
    for i in 0..LINES {
        if i % 97 == 0 {
            body.push_str("{not json\n");
            expect.push(Expect::Error(400));
        } else if i % 89 == 0 {
            body.push_str("{\"body\":\"x\",\"colour\":\"red\"}\n");
            expect.push(Expect::Error(400));
        } else if i >= 5000 && i % 10 == 0 && (i - 5000) % 97 != 0 && (i - 5000) % 89 != 0 {
            let key = format!("k-{}", i - 5000);
            body.push_str(&format!(
                "{{\"body\":\"again {i}\",\"idempotency_key\":\"{key}\"}}\n"
            ));
            expect.push(Expect::SameAs(i - 5000));
        } else {
            body.push_str(&format!(
                "{{\"body\":\"call {i}\",\"idempotency_key\":\"k-{i}\",\"headers\":{{\"x-line\":\"{i}\"}},\"path\":\"/p\",\"query\":\"i={i}\"}}\n"
            ));
            expect.push(Expect::Call);
        }
    }
    (body, expect)
}

async fn progress(gw: &Gateway, batch_id: &str) -> Value {
    gw.get_json(&format!("/async-batch/{batch_id}")).await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Call,
    Error(u64),
    SameAs(usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_line_in_order_and_enqueues_each_call_once() {
    let nats = Nats::start(2).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let gw = Gateway::start(&["--nats-url", &nats.url()]).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(&nats.url(), &["--function-url-template", &template]).await;

    let (body, expect) = batch();
    let cb = format!("{}/batch-done", sink.url());
    let a = gw
        .send(
            Method::POST,
            "/async-batch/bulk",
            &[
                ("content-type", "application/x-ndjson"),
                ("x-callback-url", &cb),
            ],
            body,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let batch_id = a.headers["x-batch-id"].to_str().unwrap().to_owned();
    let results: Vec<Value> = String::from_utf8(a.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), LINES, "one result a line");
    let mut ids = Vec::with_capacity(LINES);
    for (i, (r, e)) in results.iter().zip(&expect).enumerate() {
        match e {
            Expect::Call => assert!(r["call_id"].is_string(), "line {i}: {r}"),
            Expect::Error(status) => {
                assert_eq!(r["status"].as_u64(), Some(*status), "line {i}: {r}");
                assert!(r["error"].is_string(), "line {i}: {r}");
            }
            Expect::SameAs(j) => assert_eq!(r["call_id"], results[*j]["call_id"], "line {i}"),
        }
        ids.push(r["call_id"].as_str().map(str::to_owned));
    }
    let distinct: HashSet<String> = ids.iter().flatten().cloned().collect();
    let calls = expect.iter().filter(|e| **e == Expect::Call).count();
    assert_eq!(distinct.len(), calls);

    // Every distinct call reaches the function once, with its line's path, query and headers.
    function.wait_for(calls, T).await;
    nats.wait_settled(T).await;
    assert_eq!(function.count(), calls, "a repeated key enqueued twice");
    let r = function
        .requests()
        .into_iter()
        .find(|r| r.header("x-line") == "1")
        .unwrap();
    assert_eq!(
        (r.path.as_str(), r.query.as_deref()),
        ("/bulk/p", Some("i=1"))
    );
    assert_eq!(&r.body[..], b"call 1");

    // Progress from counters reaches the total; the batch callback arrives once.
    wait_until_async(T, "the batch's progress reaches its total", || async {
        progress(&gw, &batch_id).await["succeeded"].as_u64() == Some(calls as u64)
    })
    .await;
    let p = progress(&gw, &batch_id).await;
    assert_eq!(p["total"].as_u64(), Some(calls as u64), "{p}");
    assert_eq!(p["queued"].as_u64(), Some(0), "{p}");
    sink.wait_for(1, T).await;
    let done = &sink.requests()[0];
    assert_eq!(done.header("x-batch-id"), batch_id);
    let counts: Value = serde_json::from_slice(&done.body).unwrap();
    assert_eq!(counts["succeeded"].as_u64(), Some(calls as u64), "{counts}");
    assert_eq!(counts["total"].as_u64(), Some(calls as u64), "{counts}");
    // Once: another flush round passes without a second callback.
    nats.wait_settled(T).await;
    tokio::time::timeout(Duration::from_secs(3), sink.wait_for(2, T))
        .await
        .expect_err("a second batch callback");
}
