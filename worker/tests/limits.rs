//! A replica's own limits, against a real nats-server and the worker binary: its cap on calls in
//! flight keeps it inside a small open-files limit while hundreds of functions have work, so no
//! call is lost and none is dead-lettered for the worker's own trouble.
// A failed unwrap is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Nats, dead_letter_count, envelope};
use flotilla_testsupport::{Recorded, RecordingServer, Reply, wait_until};

const FUNCTIONS: usize = 300;
const CALLS: usize = 3_000;

/// Publishes `CALLS` calls over `FUNCTIONS` functions, then starts the worker binary with
/// `open_files` descriptors, soft and hard, so it cannot raise them.
async fn backlog_and_worker(
    nats: &Nats,
    function: &RecordingServer,
    open_files: u32,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    for i in 0..CALLS {
        let name = format!("slow-{}", i % FUNCTIONS);
        nats.publish(&envelope(&name, &format!("call-{i}"), None, "x"))
            .await;
    }
    tokio::process::Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -Sn {open_files} && ulimit -Hn {open_files} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_flotilla-worker"),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("NATS_URL", nats.url())
        .env(
            "FLOTILLA_FUNCTION_URL_TEMPLATE",
            format!("{}/{{name}}", function.url()),
        )
        .env("FLOTILLA_DISCOVERY_INTERVAL", "100ms")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn slow_function() -> RecordingServer {
    RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_millis(50))
    }))
    .await
}

/// Waits until every call was settled and reached its function exactly as often as needed, with
/// nothing dead-lettered; stops the worker and returns what it logged.
async fn drained(
    nats: &Nats,
    function: &RecordingServer,
    mut worker: tokio::process::Child,
) -> String {
    let log = {
        let stderr = worker.stderr.take().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut err = String::new();
            let mut stderr = stderr;
            let _ = stderr.read_to_string(&mut err).await;
            err
        })
    };
    nats.wait_settled(Duration::from_secs(120)).await;
    let seen: HashSet<String> = function
        .requests()
        .iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect();
    assert_eq!(seen.len(), CALLS, "every call reached its function");
    assert_eq!(
        dead_letter_count(&nats.js).await,
        0,
        "nothing dead-lettered"
    );
    wait_until(Duration::from_secs(5), "calls to settle", || {
        function.in_flight() == 0
    })
    .await;
    common::sigterm(&worker);
    tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .unwrap()
        .unwrap();
    log.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_512_open_files_drains_300_slow_functions_losing_nothing() {
    let nats = Nats::start(4).await;
    let function = slow_function().await;
    // Left to the sum of 300 functions' limits (100 each), the worker would try 3,000 sockets at
    // once for this backlog.
    let worker = backlog_and_worker(&nats, &function, 512, &[]).await;
    let log = drained(&nats, &function, worker).await;
    // (512 - 256) / 2 calls in flight at most: the default cap for this limit.
    let peak = function.max_in_flight();
    assert!(peak <= 128, "{peak} calls in flight with 512 descriptors");
    assert!(
        !log.contains("out of file descriptors"),
        "the worker ran out of descriptors:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_out_of_descriptors_hands_calls_back_without_using_their_attempts() {
    let nats = Nats::start(4).await;
    let function = slow_function().await;
    // A cap far above what 200 descriptors allow: the worker runs out, again and again.
    let worker = backlog_and_worker(
        &nats,
        &function,
        200,
        &[
            ("FLOTILLA_MAX_IN_FLIGHT", "100000"),
            ("FLOTILLA_RETRY_ATTEMPTS", "1"),
        ],
    )
    .await;
    let log = drained(&nats, &function, worker).await;
    // With one attempt per call, any exhaustion blamed on a function would be a dead letter.
    assert!(
        log.contains("out of file descriptors"),
        "the worker never ran out of descriptors, so this test shows nothing:\n{log}"
    );
}
