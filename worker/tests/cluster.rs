//! The fleet on the distributed engine it is meant to scale on: gateway and worker against a
//! 3-node NATS cluster with the shard streams at three replicas, and one node killed under load.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, Worker};
use flotilla_queue::subjects;
use flotilla_testsupport::{NatsCluster, RecordingServer, wait_until, wait_until_async};
use tokio::sync::Mutex;

/// POSTs one asynchronous call; `Some(call id)` when the gateway accepted it (202).
async fn post(gw: &Gateway, callback: &str) -> Option<String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        gw.post(
            "/async-function/echo",
            &[("X-Callback-Url", callback)],
            Bytes::from_static(b"payload"),
        ),
    )
    .await
    .ok()?
    .ok()?;
    if answer.status == 202 {
        answer.call_id
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_nats_node_under_load_loses_no_accepted_call() {
    let mut cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    let client = cluster.client().await;
    let urls = cluster.urls();
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let fleet = [
        "--nats-url",
        &urls,
        "--shards",
        "1",
        "--stream-replicas",
        "3",
    ];
    let gw = Arc::new(Gateway::start(&fleet).await);
    let worker = Worker::start_ready(
        &urls,
        &[
            &fleet[2..],
            &[
                "--function-url-template",
                &function.url(),
                // Bounds the wait for a call whose delivery was lost with the node.
                "--ack-wait",
                "3s",
                "--log",
                "warn",
            ],
        ]
        .concat(),
    )
    .await;

    // Four clients post without pause, each at most one call per 10 ms.
    let callback = format!("{}/cb", sink.url());
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posting = Arc::new(AtomicBool::new(true));
    let mut posters = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (gw, callback) = (gw.clone(), callback.clone());
        let (accepted, refused, posting) = (accepted.clone(), refused.clone(), posting.clone());
        posters.spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            while posting.load(Ordering::SeqCst) {
                pace.tick().await;
                match post(&gw, &callback).await {
                    Some(id) => accepted.lock().await.push(id),
                    None => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
    }

    // Under load, stop the node that leads the shard stream.
    wait_until(Duration::from_secs(30), "calls flowing", || {
        sink.count() >= 200
    })
    .await;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(subjects::call_stream(0)).await.unwrap();
    let info = stream.info().await.unwrap();
    let cluster_info = info.cluster.clone().unwrap();
    assert_eq!(
        cluster_info.replicas.len(),
        2,
        "the stream has three replicas"
    );
    let leader = cluster_info.leader.unwrap();
    let node = cluster.index_of(&leader).unwrap();
    let before = accepted.lock().await.len();
    let killed_at = Instant::now();
    cluster.nodes[node].kill();
    // Keep posting until the gateway accepts calls again, and a little longer.
    wait_until_async(Duration::from_secs(30), "calls accepted again", || async {
        accepted.lock().await.len() >= before + 200
    })
    .await;
    let recovered = killed_at.elapsed();
    posting.store(false, Ordering::SeqCst);
    while posters.join_next().await.is_some() {}

    let accepted: HashSet<String> = accepted.lock().await.iter().cloned().collect();
    wait_until(
        Duration::from_secs(60),
        "a callback for every accepted call",
        || {
            let called_back: HashSet<String> = sink
                .requests()
                .iter()
                .map(|r| r.header("x-call-id").to_owned())
                .collect();
            accepted.is_subset(&called_back)
        },
    )
    .await;
    let mut arrivals: Vec<Instant> = sink.requests().iter().map(|r| r.at).collect();
    arrivals.sort_unstable();
    let longest_gap = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "longest pause between callbacks {longest_gap:?}; node {leader} (stream leader) stopped after {before} accepted calls; {} accepted in all, \
         {} refused (503 or no answer) while the cluster recovered, accepting 200 more took \
         {recovered:?}; {} callbacks, {} function calls",
        accepted.len(),
        refused.load(Ordering::SeqCst),
        sink.count(),
        function.count(),
    );
    worker.stop(Duration::from_secs(30)).await.unwrap();
}
