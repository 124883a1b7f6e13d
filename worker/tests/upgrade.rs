//! Upgrading a fleet from the earlier layout (one durable consumer per function on the shard's
//! stream, no wait stream) with calls queued, some of them delivered to a worker that was then
//! killed: the new worker removes the old consumers, dispatches every call, and loses none.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use common::{Nats, Worker, envelope};
use flotilla_queue::{FunctionName, subjects};
use flotilla_testsupport::RecordingServer;
use futures_util::{StreamExt, TryStreamExt};

const T: Duration = Duration::from_secs(30);
const FUNCTIONS: [&str; 3] = ["resize", "thumbnail", "notify.ns"];
const PER_FUNCTION: usize = 100;

/// A consumer exactly as the earlier layout made it for `function`.
fn earlier_consumer(function: &FunctionName) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::consumer_name(function)),
        description: Some(format!("Flotilla calls of {function}")),
        filter_subject: subjects::call_subject(0, function),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: 100,
        inactive_threshold: Duration::from_secs(300),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_consumers_per_function_loses_no_queued_call() {
    let nats = Nats::start(1).await;
    // The earlier layout had no wait stream.
    nats.js
        .delete_stream(subjects::wait_stream(0))
        .await
        .unwrap();
    let stream = nats.js.get_stream(subjects::call_stream(0)).await.unwrap();
    let mut earlier: Vec<PullConsumer> = Vec::new();
    for f in FUNCTIONS {
        let f = FunctionName::parse(f).unwrap();
        earlier.push(stream.create_consumer(earlier_consumer(&f)).await.unwrap());
    }
    let mut ids = HashSet::new();
    for f in FUNCTIONS {
        for i in 0..PER_FUNCTION {
            let id = format!("{f}-{i}");
            nats.publish(&envelope(f, &id, None, "x")).await;
            ids.insert(id);
        }
    }
    // A worker of the earlier layout took ten calls of the first function and was killed before
    // it settled them: they are delivered and unacknowledged, with `ack_wait` still running.
    let mut batch = earlier[0]
        .fetch()
        .max_messages(10)
        .expires(T)
        .messages()
        .await
        .unwrap();
    let mut taken = 0;
    while let Some(m) = batch.next().await {
        m.unwrap();
        taken += 1;
    }
    assert_eq!(taken, 10);
    drop(earlier);

    let function = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let worker = Worker::start_ready(
        &nats.url(),
        &["--function-url-template", &template, "--log", "warn"],
    )
    .await;
    function.wait_for(ids.len(), T).await;
    nats.wait_settled(T).await;

    let ran: HashSet<String> = function
        .requests()
        .iter()
        .map(|r| r.header("x-call-id").to_owned())
        .collect();
    assert_eq!(ran, ids, "every queued call ran");
    assert_eq!(
        function.count(),
        ids.len(),
        "each ran once: the killed worker's calls were handed to the new layout, not run twice"
    );
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [subjects::DISPATCH_CONSUMER, subjects::RETRY_CONSUMER],
        "the per-function consumers are gone"
    );
    assert!(nats.js.get_stream(subjects::wait_stream(0)).await.is_ok());
    worker.stop(T).await.unwrap();
}
