//! Bodies larger than one NATS message against a real nats-server: a 20 MiB body travels
//! through the `FLOTILLA_BODIES` object store, reaches the function byte for byte, and leaves no
//! object behind once its call settles; a large-body call that is dead-lettered keeps its body,
//! and its replay runs with it.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Gateway, Nats, Worker};
use flotilla_queue::topology::BODY_BUCKET;
use flotilla_testsupport::{Recorded, RecordingServer, Reply, wait_until_async};
use futures_util::StreamExt;

const T: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

/// 20 MiB that no two offsets share a pattern for long.
fn big_body() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..20 * MIB).map(|_| rng.u8(..)).collect()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// Objects still in the bodies bucket.
async fn objects(nats: &Nats) -> usize {
    let bucket = nats.js.get_object_store(BODY_BUCKET).await.unwrap();
    let mut list = bucket.list().await.unwrap();
    let mut n = 0;
    while let Some(info) = list.next().await {
        if !info.unwrap().deleted {
            n += 1;
        }
    }
    n
}

async fn gateway(nats: &Nats) -> Gateway {
    Gateway::start(&[
        "--nats-url",
        &nats.url(),
        "--max-body-bytes",
        &(64 * MIB).to_string(),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_body_arrives_byte_exact_and_leaves_no_object_behind() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(&nats.url(), &["--function-url-template", &template]).await;
    let body = big_body();
    let a = gw
        .post("/async-function/big", &[], body.clone())
        .await
        .unwrap();
    assert_eq!(a.status, 202, "{:?}", String::from_utf8_lossy(&a.body));
    function.wait_for(1, T).await;
    let got = &function.requests()[0].body;
    assert_eq!(got.len(), body.len());
    assert_eq!(sha256(got), sha256(&body), "the body changed on its way");
    nats.wait_settled(T).await;
    wait_until_async(T, "the body's object is removed", || async {
        objects(&nats).await == 0
    })
    .await;

    // Past --max-body-bytes: refused before anything is stored.
    let small_gw = Gateway::start(&["--nats-url", &nats.url(), "--max-body-bytes", "1000"]).await;
    let refused = small_gw
        .post("/async-function/big", &[], vec![b'x'; 1001])
        .await
        .unwrap();
    assert_eq!(refused.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_large_body_is_kept_and_its_replay_runs_with_it() {
    let nats = Nats::start(1).await;
    // Refuses (503) until told otherwise.
    let healthy = Arc::new(AtomicUsize::new(0));
    let flag = healthy.clone();
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        if flag.load(Ordering::SeqCst) == 0 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(
        &nats.url(),
        &[
            "--function-url-template",
            &template,
            "--retry-attempts",
            "1",
        ],
    )
    .await;
    let body = big_body();
    let a = gw
        .post("/async-function/fragile", &[], body.clone())
        .await
        .unwrap();
    assert_eq!(a.status, 202);
    common::dead_letters(&nats, 1).await;
    nats.wait_settled(T).await;
    assert_eq!(objects(&nats).await, 1, "a dead letter's body must stay");

    healthy.store(1, Ordering::SeqCst);
    let replay = gw
        .send(
            http::Method::POST,
            "/system/dead-letters/replay",
            &[("content-type", "application/json")],
            r#"{"all":true}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        replay.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&replay.body)
    );
    function.wait_for(2, T).await;
    let replayed = &function.requests()[1].body;
    assert_eq!(sha256(replayed), sha256(&body), "the replay lost the body");
    nats.wait_settled(T).await;
    wait_until_async(T, "the replayed call's body is removed", || async {
        objects(&nats).await == 0
    })
    .await;
}
