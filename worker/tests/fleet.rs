//! End to end through the whole fleet: HTTP into the gateway, JetStream shard streams, the worker,
//! the function, the callback. Gateway and worker run in-process against a real nats-server.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Nats, Worker};
use flotilla_queue::subjects;
use flotilla_testsupport::{Recorded, RecordingServer, Reply};

/// POSTs an async call; returns the status and the `X-Call-Id` answered.
async fn post_async(
    gw: &Gateway,
    function: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, String) {
    let a = gw
        .post(&format!("/async-function/{function}"), headers, body)
        .await
        .unwrap();
    (a.status, a.call_id.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_across_twenty_functions_and_four_shards_complete_exactly_once() {
    const CALLS: usize = 1000;
    const FUNCTIONS: usize = 20;
    let nats = Nats::start(4).await;
    // The function answers with its name (from the path) and the request body.
    let function = RecordingServer::start(Arc::new(|r: &Recorded| {
        Reply::status(200)
            .header("content-type", "text/plain")
            .body(format!("{}|{}", r.path, String::from_utf8_lossy(&r.body)))
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let url = nats.url();
    let gw = Arc::new(Gateway::start(&["--nats-url", &url, "--shards", "4"]).await);
    let _worker = Worker::start_ready(
        &nats.url(),
        &[
            "--shards",
            "4",
            "--function-url-template",
            &template,
            "--log",
            "warn",
        ],
    )
    .await;

    // The functions really spread over all four shards.
    let map = nats.topology.shard_map();
    let shards_used: std::collections::HashSet<u32> = (0..FUNCTIONS)
        .map(|f| map.shard_of(&format!("fn-{f}")))
        .collect();
    assert_eq!(
        shards_used.len(),
        4,
        "test functions must cover every shard"
    );

    let callback = format!("{}/done", sink.url());
    let mut expected: HashMap<String, (String, String)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let (gw, callback) = (gw.clone(), callback.clone());
        let name = format!("fn-{}", i % FUNCTIONS);
        tasks.spawn(async move {
            let body = format!("call-{i}");
            let (status, id) = post_async(
                &gw,
                &name,
                &[
                    ("X-Callback-Url", &callback),
                    ("Content-Type", "text/plain"),
                ],
                body.clone(),
            )
            .await;
            assert_eq!(status, 202);
            (id, name, body)
        });
        if tasks.len() >= 64 {
            let (id, name, body) = tasks.join_next().await.unwrap().unwrap();
            expected.insert(id, (name, body));
        }
    }
    while let Some(r) = tasks.join_next().await {
        let (id, name, body) = r.unwrap();
        expected.insert(id, (name, body));
    }
    assert_eq!(expected.len(), CALLS, "every call got its own id");

    sink.wait_for(CALLS, Duration::from_secs(60)).await;
    nats.wait_settled(Duration::from_secs(15)).await;
    let callbacks = sink.requests();
    assert_eq!(callbacks.len(), CALLS, "no callback twice");
    let mut seen = std::collections::HashSet::new();
    for cb in &callbacks {
        let id = cb.header("x-call-id").to_owned();
        let (name, body) = expected
            .get(&id)
            .unwrap_or_else(|| panic!("callback for unknown call {id}"));
        assert!(seen.insert(id.clone()), "call {id} called back twice");
        assert_eq!(cb.method, "POST");
        assert_eq!(cb.path, "/done");
        assert_eq!(cb.header("x-function-name"), name);
        assert_eq!(cb.header("x-function-status"), "200");
        assert_eq!(cb.header("content-type"), "text/plain");
        assert_eq!(String::from_utf8_lossy(&cb.body), format!("/{name}|{body}"));
    }
    assert_eq!(function.count(), CALLS, "each function call ran once");
}

#[tokio::test]
async fn an_idempotency_key_posted_twice_runs_once() {
    let nats = Nats::start(2).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let url = nats.url();
    let gw = Gateway::start(&["--nats-url", &url, "--shards", "2"]).await;
    let _worker = Worker::start_ready(
        &nats.url(),
        &[
            "--shards",
            "2",
            "--function-url-template",
            &template,
            "--log",
            "warn",
        ],
    )
    .await;
    let cb = sink.url();
    let headers = [
        ("X-Callback-Url", cb.as_str()),
        ("Idempotency-Key", "order-1234"),
    ];
    let (s1, id1) = post_async(&gw, "charge", &headers, "once".into()).await;
    let (s2, id2) = post_async(&gw, "charge", &headers, "once".into()).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(id1, id2, "a retried POST gets the same call id");
    // A later call to the same function: once it has been called back, the first is settled too.
    let (s3, id3) = post_async(
        &gw,
        "charge",
        &[("X-Callback-Url", cb.as_str())],
        "later".into(),
    )
    .await;
    assert_eq!(s3, 202);
    sink.wait_for(2, Duration::from_secs(30)).await;
    nats.wait_settled(Duration::from_secs(15)).await;
    // Exactly two messages ever entered the stream: the keyed call and the later one.
    let shard = nats.topology.shard_map().shard_of("charge");
    let mut stream = nats
        .js
        .get_stream(subjects::call_stream(shard))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.last_sequence, 2);
    let ids: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == id1).count(), 1);
    assert!(ids.contains(&id3));
    assert_eq!(function.count(), 2);
}

#[tokio::test]
async fn a_worker_with_another_shard_count_refuses_to_start() {
    let nats = Nats::start(4).await;
    let url = nats.url();
    let _gw = Gateway::start(&["--nats-url", &url, "--shards", "4"]).await;
    // No shutdown is ever signalled: the worker must stop by itself.
    let mut worker = Worker::start(&nats.url(), &["--shards", "3", "--log", "warn"]).await;
    let err = worker
        .join(Duration::from_secs(15))
        .await
        .expect_err("a shard-count mismatch is an error");
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("--shards 4"), "{err}");
}
