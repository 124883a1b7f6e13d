//! The `flotilla-worker` binary under signals: SIGKILL mid-load loses nothing once a replacement
//! starts, and SIGTERM drains in-flight calls and their callbacks, then exits 0.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{Nats, Worker, envelope, sigterm, spawn_worker};
use flotilla_testsupport::{Recorded, RecordingServer, Reply};
use tokio::process::Command;

const T: Duration = Duration::from_secs(30);

fn call_ids(sink: &RecordingServer) -> HashSet<String> {
    common::call_ids(sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing() {
    let nats = Nats::start(2).await;
    let function = RecordingServer::start(Arc::new(|r: &Recorded| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(100))
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let cb = format!("{}/cb", sink.url());
    // 15 calls at a time (three functions, five each) for 100 ms: the 300 take 2 s, so the kill
    // after the first 60 lands mid-load.
    let total = 300;
    for i in 0..total {
        let env = envelope(
            &format!("k-{}", i % 3),
            &format!("kill-{i}"),
            Some(&cb),
            "x",
        );
        nats.publish(&env).await;
    }
    let first_args = ["--ack-wait", "1s", "--concurrency", "5"];
    let mut first = spawn_worker(&nats.url(), &template, &first_args);
    sink.wait_for(60, T).await;
    first.kill().await.expect("SIGKILL");
    let after_kill = call_ids(&sink).len();
    assert!(
        after_kill < total,
        "the kill came too late to test anything"
    );

    let mut second = spawn_worker(&nats.url(), &template, &["--ack-wait", "1s"]);
    flotilla_testsupport::wait_until(T, "every call id at the callback sink", || {
        call_ids(&sink).len() == total
    })
    .await;
    nats.wait_settled(T).await;
    sigterm(&second);
    let status = tokio::time::timeout(T, second.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_calls_and_exits_zero() {
    const ACK_WAIT: &str = "10m";
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200)
            .body("finished")
            .delay(Duration::from_millis(1500))
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let cb = format!("{}/cb", sink.url());
    // Five run at once in this replica; five more wait in the stream.
    for i in 0..10 {
        nats.publish(&envelope("drain", &format!("t-{i}"), Some(&cb), "x"))
            .await;
    }
    let mut child = spawn_worker(
        &nats.url(),
        &function.url(),
        &[
            "--replica-concurrency",
            "5",
            "--grace",
            "20s",
            "--ack-wait",
            ACK_WAIT,
        ],
    );
    flotilla_testsupport::wait_until(T, "five calls in flight", || function.in_flight() == 5).await;
    sigterm(&child);
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // The five in flight finished and their callbacks arrived before the exit.
    assert_eq!(function.count(), 5);
    assert_eq!(sink.count(), 5);
    assert!(
        sink.requests()
            .iter()
            .all(|r| r.header("x-function-status") == "200" && &r.body[..] == b"finished")
    );
    // The other five were never taken, handed back or moved to the wait stream: none is lost.
    assert_eq!(nats.stored().await, 5);

    // A replacement takes them at once. Both workers hold calls for an ack_wait longer than the
    // test may run, so a call left unacknowledged at the exit could not arrive in time. (A call
    // handed back still counts in its consumer's `num_ack_pending` until it is delivered again,
    // so that count cannot show it.)
    let worker = Worker::start(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--ack-wait",
            ACK_WAIT,
        ],
    )
    .await;
    sink.wait_for(10, T).await;
    assert_eq!(call_ids(&sink).len(), 10);
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_gone_sigterm_still_exits_zero_soon_after_the_grace_period() {
    const GRACE: Duration = Duration::from_secs(2);
    let mut nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_secs(4))
    }))
    .await;
    for i in 0..3 {
        nats.publish(&envelope("stuck", &format!("s-{i}"), None, "x"))
            .await;
    }
    let mut child = spawn_worker(
        &nats.url(),
        &function.url(),
        &["--grace", "2s", "--ack-wait", "2s"],
    );
    flotilla_testsupport::wait_until(T, "three calls in flight", || function.in_flight() == 3)
        .await;
    // NATS goes away with the calls running: neither their acks nor their hand-backs can land.
    nats.fleet.nats_server_mut().unwrap().kill();
    let signalled = std::time::Instant::now();
    sigterm(&child);
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "exited {took:?} after SIGTERM"
    );

    // Nothing was lost: with NATS back, the calls return and a replacement runs them.
    nats.fleet.nats_server_mut().unwrap().resume().unwrap();
    let worker = Worker::start(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--ack-wait",
            "2s",
        ],
    )
    .await;
    flotilla_testsupport::wait_until(T, "the three calls run again", || function.count() >= 6)
        .await;
    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-worker"))
        .args(["--concurrency", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("concurrency"), "{err}");
}
