//! Nothing read from NATS can panic a worker: seeded random messages (random envelope headers
//! and values, random bodies) on the call, wait and retry subjects of a live worker. Each one is
//! either a call the function gets or a poison dead letter; the worker stays ready and every
//! message settles. `FUZZ_SEED` and `FUZZ_ITERATIONS` widen a run by hand.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Nats, Worker, dead_letter_count, envelope, get};
use flotilla_queue::{FunctionName, subjects};
use flotilla_testsupport::RecordingServer;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_from_nats_are_called_or_dead_lettered_and_never_crash_a_worker() {
    let count: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0xdead),
    );
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--retry-min-backoff",
            "10ms",
            "--retry-max-backoff",
            "20ms",
        ],
    )
    .await;
    // Real envelopes, whose fields are then mixed and mutated.
    let (good, _) = envelope("f", "seed-call", Some("http://127.0.0.1:9/cb"), "x").to_nats(None);
    let names: Vec<String> = good
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(
            [
                "Flotilla-Version",
                "Flotilla-Call-Id",
                "Flotilla-Function",
                "Flotilla-Method",
                "Flotilla-Start-Time",
                "Flotilla-Attempt",
                "Flotilla-Retry-At",
                "Nats-Msg-Id",
            ]
            .map(String::from),
        )
        .collect();
    let values: Vec<String> = good
        .iter()
        .flat_map(|(_, v)| v.iter().map(|v| v.as_str().to_owned()))
        .chain(
            [
                "1",
                "0",
                "-1",
                "99999999999999999999999999",
                "2 1 0 1:x 0: 0: - GET",
                "",
                "GET",
                "/",
            ]
            .map(String::from),
        )
        .collect();
    let f = FunctionName::parse("f").unwrap();
    let mut stored = 0;
    for i in 0..count {
        let mut h = async_nats::HeaderMap::new();
        for _ in 0..rng.usize(0..5) {
            let mut v = values[rng.usize(..values.len())].clone().into_bytes();
            for _ in 0..rng.usize(0..3) {
                if !v.is_empty() {
                    let at = rng.usize(..v.len());
                    v[at] = rng.u8(0x20..0x7f);
                }
            }
            h.insert(
                names[rng.usize(..names.len())].as_str(),
                String::from_utf8(v).unwrap().as_str(),
            );
        }
        let subject = match rng.u8(..3) {
            0 => subjects::call_subject(0, &f),
            1 => subjects::wait_subject(0, &f),
            _ => subjects::retry_subject(0, &f),
        };
        let body: Vec<u8> = (0..rng.usize(0..32)).map(|_| rng.u8(..)).collect();
        let ack = nats
            .js
            .publish_with_headers(subject, h, body.into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        // A random `Nats-Msg-Id` may repeat: JetStream keeps the first only.
        if !ack.duplicate {
            stored += 1;
        }
    }
    nats.wait_settled(T).await;
    let dead = dead_letter_count(&nats.js).await as usize;
    let called = function.count();
    assert!(
        called + dead >= stored,
        "{called} called + {dead} dead < {stored} stored"
    );
    assert!(
        dead > 0 && called > 0,
        "the inputs were not varied: {called} called, {dead} dead"
    );
    assert_eq!(get(worker.admin, "/readyz").await.0, 200);
    worker.stop(T).await.unwrap();
}
