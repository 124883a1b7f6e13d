//! Queue visibility with no worker running: `/system/queues` and the `flotilla_queue_*` gauges
//! read pending, in-flight, retrying and dead calls per function from JetStream alone.

#[path = "support/harness.rs"]
mod harness;

use async_nats::jetstream::{self, consumer};
use flotilla_queue::subjects;
use flotilla_testsupport::NatsServer;
use harness::{Gateway, call, get};
use http::StatusCode;

#[tokio::test]
async fn queues_are_read_from_nats_while_no_worker_runs() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    for (function, n) in [("alpha", 3), ("beta", 2)] {
        for _ in 0..n {
            let r = call(
                gw.addr,
                "POST",
                &format!("/async-function/{function}"),
                &[],
                b"x",
            )
            .await;
            assert_eq!(r.status, StatusCode::ACCEPTED);
        }
    }
    let js = jetstream::new(nats.client().await);
    // A waiting retry of alpha, a call of beta waiting for room, a dead letter of beta: stored
    // where workers store them.
    for subject in [
        "flotilla.retry.0.alpha".to_owned(),
        "flotilla.wait.0.beta".to_owned(),
        subjects::dead_subject("beta"),
    ] {
        js.publish(subject, "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A worker took alpha's first call and has not settled it.
    let dispatch = js
        .get_stream(subjects::call_stream(0))
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some(subjects::DISPATCH_CONSUMER.into()),
            filter_subject: subjects::shard_wildcard(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let taken = dispatch.batch().max_messages(1).messages().await.unwrap();
    let taken: Vec<_> = futures_util::StreamExt::collect(taken).await;
    assert_eq!(taken.len(), 1);

    let (status, body) = get(gw.addr, "/system/queues").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = |f: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["function"] == f)
            .unwrap_or_else(|| panic!("{f} missing from {rows}"))
            .clone()
    };
    let alpha = row("alpha");
    assert_eq!(
        (
            alpha["shard"].as_u64(),
            alpha["pending"].as_u64(),
            alpha["in_flight"].as_u64()
        ),
        (Some(0), Some(2), Some(1)),
        "{alpha}"
    );
    assert_eq!(
        (alpha["retrying"].as_u64(), alpha["dead"].as_u64()),
        (Some(1), Some(0))
    );
    let age = alpha["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&age), "{alpha}");
    let beta = row("beta");
    assert_eq!(
        (
            beta["pending"].as_u64(),
            beta["in_flight"].as_u64(),
            beta["retrying"].as_u64(),
            beta["dead"].as_u64()
        ),
        (Some(3), Some(0), Some(0), Some(1)),
        "{beta}"
    );

    let (_, metrics) = get(gw.addr, "/metrics").await;
    for line in [
        "flotilla_queue_pending{function_name=\"alpha\",shard=\"0\"} 2",
        "flotilla_queue_in_flight{function_name=\"alpha\",shard=\"0\"} 1",
        "flotilla_queue_retrying{function_name=\"alpha\",shard=\"0\"} 1",
        "flotilla_queue_pending{function_name=\"beta\",shard=\"0\"} 3",
        "flotilla_queue_dead{function_name=\"beta\",shard=\"0\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from\n{metrics}"
        );
    }
    assert!(metrics.contains("# HELP flotilla_queue_oldest_pending_age_seconds"));
    assert_eq!(
        call(gw.addr, "POST", "/system/queues", &[], b"")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
