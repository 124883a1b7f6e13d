//! The callback policy in the worker, on loopback only: with `--callback-allow 127.0.0.1` a
//! callback to 127.0.0.2 is refused before any connection; with only 127.0.0.2 allowed,
//! `localhost` (127.0.0.1) is refused through the resolver; an allowed receiver gets its
//! callback, and its redirect is not followed. Refusals are counted and the calls settle.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Nats, Worker, envelope, get};
use flotilla_testsupport::{Recorded, RecordingServer, Reply};

const T: Duration = Duration::from_secs(30);

/// A listener on `addr` that counts the connections it is offered.
async fn connection_counter(addr: &str) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

fn refused_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("worker_callbacks_refused_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_targets_are_never_connected_and_redirects_are_not_followed() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let elsewhere = RecordingServer::answering(200).await;
    let to = format!("{}/elsewhere", elsewhere.url());
    let sink = RecordingServer::start(Arc::new(move |_: &Recorded| {
        Reply::status(302).header("location", &to)
    }))
    .await;
    let (other_port, other_connections) = connection_counter("127.0.0.2:0").await;
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--callback-allow",
            "127.0.0.1",
        ],
    )
    .await;
    nats.publish(&envelope(
        "f",
        "to-127-0-0-2",
        Some(&format!("http://127.0.0.2:{other_port}/cb")),
        "x",
    ))
    .await;
    nats.publish(&envelope(
        "f",
        "to-sink",
        Some(&format!("{}/cb", sink.url())),
        "x",
    ))
    .await;
    nats.wait_settled(T).await;
    sink.wait_for(1, T).await;
    assert_eq!(
        other_connections.load(Ordering::SeqCst),
        0,
        "127.0.0.2 was connected"
    );
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
    let (_, metrics) = get(worker.admin, "/metrics").await;
    assert_eq!(refused_total(&metrics), 1, "{metrics}");
    worker.stop(T).await.unwrap();

    // Only 127.0.0.2 allowed: `localhost` resolves to 127.0.0.1 (or ::1), and is refused.
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--callback-allow",
            "127.0.0.2",
        ],
    )
    .await;
    let local = RecordingServer::answering(200).await;
    let port = local.addr().port();
    nats.publish(&envelope(
        "f",
        "to-localhost",
        Some(&format!("http://localhost:{port}/cb")),
        "x",
    ))
    .await;
    nats.wait_settled(T).await;
    // Each worker has its own metrics registry: the first worker's refusal is not counted here.
    flotilla_testsupport::wait_until_async(T, "the refusal counted", || async {
        refused_total(&get(worker.admin, "/metrics").await.1) == 1
    })
    .await;
    assert_eq!(local.count(), 0, "localhost was called back");
    assert_eq!(function.count(), 3, "every function call was made");
    worker.stop(T).await.unwrap();
}
