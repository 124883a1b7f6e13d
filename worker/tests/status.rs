//! Call status, results and cancel against a real nats-server, through the gateway's HTTP API:
//! every state a call passes through, kept and refused results, cancels that reach a queued call,
//! a waiting retry and a running call, a cancel racing the end of its call (with an id the client
//! chose and with a numbered one), a worker killed mid-call, a replayed dead letter, the status
//! budget bounding what NATS holds, calls queued before status pages, and ends held back by a
//! stalled status store.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Answer, Gateway, Nats, Worker, spawn_worker};
use flotilla_testsupport::{Recorded, RecordingServer, Reply, wait_until, wait_until_async};
use http::Method;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

async fn gateway(nats: &Nats) -> Gateway {
    Gateway::start(&["--nats-url", &nats.url()]).await
}

async fn enqueue(gw: &Gateway, function: &str, headers: &[(&str, &str)]) -> String {
    let a = gw
        .post(&format!("/async-function/{function}"), headers, "in")
        .await
        .unwrap();
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.call_id.unwrap()
}

async fn send(gw: &Gateway, method: Method, path: &str) -> Answer {
    gw.send(method, path, &[], "").await.unwrap()
}

fn json(a: &Answer) -> Value {
    serde_json::from_slice(&a.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&a.body)))
}

async fn status(gw: &Gateway, id: &str) -> Value {
    gw.get_json(&format!("/async-call/{id}")).await
}

/// Polls the call's status until it is `state`, and returns it.
async fn wait_state(gw: &Gateway, id: &str, state: &str) -> Value {
    let seen = Mutex::new(Value::Null);
    wait_until_async(T, &format!("call {id} {state}"), || async {
        let s = status(gw, id).await;
        let hit = s["state"] == state;
        *seen.lock().unwrap() = s;
        hit
    })
    .await;
    seen.into_inner().unwrap()
}

fn call_ids(server: &RecordingServer) -> Vec<String> {
    common::call_ids(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_goes_from_queued_to_running_to_succeeded_and_its_result_is_kept() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(201)
            .header("content-type", "text/x-made")
            .body("made")
            .delay(Duration::from_millis(800))
    }))
    .await;
    let gw = gateway(&nats).await;
    let id = enqueue(&gw, "maker", &[]).await;

    // No worker yet: accepted and waiting.
    let queued = status(&gw, &id).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    assert_eq!(queued["call_id"], id.as_str());
    assert_eq!(queued["function"], "maker");
    assert_eq!(queued["attempts"], 0);
    assert!(queued["accepted_at"].as_str().unwrap().ends_with('Z'));
    let early = send(&gw, Method::GET, &format!("/async-call/{id}/result")).await;
    assert_eq!(early.status, 409, "a result before the call ended");
    assert_eq!(json(&early)["state"], "queued");

    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(
        &nats.url(),
        &["--function-url-template", &template, "--keep-results"],
    )
    .await;
    let running = wait_state(&gw, &id, "running").await;
    assert_eq!(running["attempts"], 0, "{running}");
    let done = wait_state(&gw, &id, "succeeded").await;
    assert_eq!(
        (done["status"].as_u64(), done["attempts"].as_u64()),
        (Some(201), Some(1)),
        "{done}"
    );
    assert_eq!(done["accepted_at"], queued["accepted_at"]);

    let result = send(&gw, Method::GET, &format!("/async-call/{id}/result")).await;
    assert_eq!(result.status, 200);
    assert_eq!(result.headers["x-function-status"], "201");
    assert_eq!(result.headers["content-type"], "text/x-made");
    assert_eq!(&result.body[..], b"made");

    let late = send(&gw, Method::DELETE, &format!("/async-call/{id}")).await;
    assert_eq!(late.status, 409, "cancelling a finished call");
    assert_eq!(json(&late)["state"], "succeeded");
    assert_eq!(function.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_failures_dead_letters_and_result_limits_are_recorded() {
    let nats = Nats::start(1).await;
    // flaky: 500 once per call, then 200. bad: 400. broken: always 503. big: 100 bytes.
    let seen: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    let function = RecordingServer::start(Arc::new(move |r: &Recorded| match r.path.as_str() {
        "/flaky" => {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(r.header("x-call-id").to_owned()).or_default();
            *n += 1;
            if *n == 1 {
                Reply::status(500).body("not yet")
            } else {
                Reply::status(200).body("ok")
            }
        }
        "/bad" => Reply::status(400).body("no such thing"),
        "/broken" => Reply::status(503).body("down"),
        _ => Reply::status(200).body(vec![b'x'; 100]),
    }))
    .await;
    let policies = "[defaults]\nkeep_results = true\nmax_result_bytes = 64\n\
         [defaults.retry]\nattempts = 2\nmin_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n\
         [functions.flaky.retry]\nmin_backoff = \"1500ms\"\nmax_backoff = \"1500ms\"\n\
         [functions.bad]\nkeep_results = false\n";
    let gw = gateway(&nats).await;
    let _worker = Worker::with_policies(&nats.url(), &function.url(), policies).await;
    let flaky = enqueue(&gw, "flaky", &[]).await;
    let bad = enqueue(&gw, "bad", &[]).await;
    let broken = enqueue(&gw, "broken", &[]).await;
    let big = enqueue(&gw, "big", &[]).await;

    let retrying = wait_state(&gw, &flaky, "retrying").await;
    assert_eq!(
        (retrying["status"].as_u64(), retrying["attempts"].as_u64()),
        (Some(500), Some(1)),
        "{retrying}"
    );
    assert!(retrying["next_attempt_at"].is_string(), "{retrying}");
    let done = wait_state(&gw, &flaky, "succeeded").await;
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(done.get("next_attempt_at").is_none(), "{done}");
    let kept = send(&gw, Method::GET, &format!("/async-call/{flaky}/result")).await;
    assert_eq!((kept.status, &kept.body[..]), (200, &b"ok"[..]));

    let failed = wait_state(&gw, &bad, "failed").await;
    assert_eq!(
        (failed["status"].as_u64(), failed["attempts"].as_u64()),
        (Some(400), Some(1))
    );
    let not_kept = send(&gw, Method::GET, &format!("/async-call/{bad}/result")).await;
    assert_eq!(not_kept.status, 404);
    assert!(
        String::from_utf8_lossy(&not_kept.body).contains("does not keep results"),
        "{:?}",
        not_kept.body
    );

    let dead = wait_state(&gw, &broken, "dead").await;
    assert_eq!(
        (dead["status"].as_u64(), dead["attempts"].as_u64()),
        (Some(503), Some(2))
    );
    let reason = dead["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("exhausted: function answered 503 (attempt 2 of 2)"),
        "{reason}"
    );
    // A dead call's last answer is its result.
    let last = send(&gw, Method::GET, &format!("/async-call/{broken}/result")).await;
    assert_eq!((last.status, &last.body[..]), (200, &b"down"[..]));
    assert_eq!(last.headers["x-function-status"], "503");

    wait_state(&gw, &big, "succeeded").await;
    let too_big = send(&gw, Method::GET, &format!("/async-call/{big}/result")).await;
    assert_eq!(too_big.status, 404);
    assert!(
        String::from_utf8_lossy(&too_big.body)
            .contains("100 bytes, over the function's max_result_bytes of 64"),
        "{:?}",
        too_big.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_cancelled_never_runs_and_bad_requests_are_refused() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let gw = gateway(&nats).await;
    let cb = format!("{}/cb", sink.url());
    let cancelled = enqueue(&gw, "later", &[("x-callback-url", &cb)]).await;
    let kept = enqueue(&gw, "later", &[("x-callback-url", &cb)]).await;

    let first = send(&gw, Method::DELETE, &format!("/async-call/{cancelled}")).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(json(&first)["state"], "cancelled");
    let again = send(&gw, Method::DELETE, &format!("/async-call/{cancelled}")).await;
    assert_eq!(again.status, 202, "a cancel repeated");
    let result = send(&gw, Method::GET, &format!("/async-call/{cancelled}/result")).await;
    assert_eq!(result.status, 404, "a cancelled call has no result");

    for (method, path, want) in [
        (Method::GET, "/async-call/nobody-knows-me", 404),
        (Method::DELETE, "/async-call/nobody-knows-me", 404),
        (Method::GET, "/async-call/nobody-knows-me/result", 404),
        (Method::GET, "/async-call/%FF", 400),
        (Method::GET, "/async-call/", 400),
        (Method::PUT, &format!("/async-call/{kept}"), 405),
        (Method::POST, &format!("/async-call/{kept}/result"), 405),
    ] {
        let a = send(&gw, method.clone(), path).await;
        assert_eq!(a.status, want, "{method} {path}: {:?}", a.body);
    }

    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(&nats.url(), &["--function-url-template", &template]).await;
    wait_state(&gw, &kept, "succeeded").await;
    nats.wait_settled(T).await;
    assert_eq!(
        call_ids(&function),
        vec![kept.clone()],
        "the cancelled call ran"
    );
    assert_eq!(call_ids(&sink), [kept], "the cancelled call called back");
    assert_eq!(status(&gw, &cancelled).await["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_while_waiting_to_retry_is_not_retried() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(500).await;
    let sink = RecordingServer::answering(200).await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(
        &nats.url(),
        &[
            "--function-url-template",
            &template,
            "--retry-min-backoff",
            "2s",
            "--retry-max-backoff",
            "2s",
        ],
    )
    .await;
    let cb = format!("{}/cb", sink.url());
    let id = enqueue(&gw, "flaky", &[("x-callback-url", &cb)]).await;
    wait_state(&gw, &id, "retrying").await;
    let a = send(&gw, Method::DELETE, &format!("/async-call/{id}")).await;
    assert_eq!(a.status, 202);
    // The retry leaves the shard stream only once a worker took it, found it cancelled and
    // acked it.
    nats.wait_settled(T).await;
    assert_eq!(function.count(), 1, "the cancelled call was retried");
    assert_eq!(sink.count(), 0, "the cancelled call called back");
    let s = status(&gw, &id).await;
    assert_eq!(
        (s["state"].as_str(), s["attempts"].as_u64()),
        (Some("cancelled"), Some(1)),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_call_cancelled_is_aborted_and_frees_its_slot() {
    let nats = Nats::start(1).await;
    // The first call hangs far longer than the test; the second answers at once.
    let function = RecordingServer::start(Arc::new(|r: &Recorded| {
        let delay = if r.header("x-call-id") == "hangs" {
            120
        } else {
            0
        };
        Reply::status(200).delay(Duration::from_secs(delay))
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(
        &nats.url(),
        &["--function-url-template", &template, "--concurrency", "1"],
    )
    .await;
    let cb = format!("{}/cb", sink.url());
    let hangs = enqueue(
        &gw,
        "slow",
        &[("x-callback-url", &cb), ("x-call-id", "hangs")],
    )
    .await;
    wait_state(&gw, &hangs, "running").await;
    let a = send(&gw, Method::DELETE, &format!("/async-call/{hangs}")).await;
    assert_eq!(a.status, 202);
    wait_until(T, "the function sees its request aborted", || {
        function.aborted() == 1
    })
    .await;

    // Concurrency 1: the next call runs only because the cancelled one gave its slot back.
    let next = enqueue(
        &gw,
        "slow",
        &[("x-callback-url", &cb), ("x-call-id", "next")],
    )
    .await;
    wait_state(&gw, &next, "succeeded").await;
    nats.wait_settled(T).await;
    assert_eq!(call_ids(&sink), ["next"], "the cancelled call called back");
    assert_eq!(status(&gw, &hangs).await["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_end_of_its_call_leaves_one_outcome() {
    cancels_race_ends(Ids::Chosen).await;
}

/// The same race for numbered calls, whose records share status pages: the compare of a page's
/// cancels against its records decides each race as the record of its own did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_end_of_a_numbered_call_leaves_one_outcome() {
    cancels_race_ends(Ids::Numbered).await;
}

#[derive(Clone, Copy)]
enum Ids {
    /// `X-Call-Id` chosen by the client: a record per call.
    Chosen,
    /// Ids the gateway numbers: records in pages.
    Numbered,
}

async fn cancels_race_ends(ids: Ids) {
    let nats = Nats::start(1).await;
    // Every call runs 20 ms; each cancel is sent 0 to 29 ms after its call reached the function,
    // so cancels land before, around and after the ends of their calls.
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_millis(20))
    }))
    .await;
    let function = Arc::new(function);
    let sink = RecordingServer::answering(200).await;
    let gw = Arc::new(gateway(&nats).await);
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(&nats.url(), &["--function-url-template", &template]).await;
    let cb = format!("{}/cb", sink.url());
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let (gw, cb, function) = (gw.clone(), cb.clone(), function.clone());
        tasks.push(tokio::spawn(async move {
            let id = match ids {
                Ids::Chosen => {
                    let id = format!("race-{i}");
                    enqueue(&gw, "racer", &[("x-callback-url", &cb), ("x-call-id", &id)]).await
                }
                Ids::Numbered => {
                    let id = enqueue(&gw, "racer", &[("x-callback-url", &cb)]).await;
                    assert!(
                        flotilla_queue::status::pages::page_of(&id).is_some(),
                        "{id}"
                    );
                    id
                }
            };
            wait_until(T, &format!("{id} reaches the function"), || {
                call_ids(&function).contains(&id)
            })
            .await;
            tokio::time::sleep(Duration::from_millis(i % 30)).await;
            let a = send(&gw, Method::DELETE, &format!("/async-call/{id}")).await;
            (id, a.status, json(&a)["state"].as_str().unwrap().to_owned())
        }));
    }
    let mut cancelled = HashSet::new();
    let mut finished = HashSet::new();
    for t in tasks {
        let (id, code, state) = t.await.unwrap();
        match code {
            202 => assert!(cancelled.insert(id)),
            409 => {
                assert_eq!(state, "succeeded", "{id}");
                assert!(finished.insert(id));
            }
            other => panic!("{id}: DELETE answered {other}"),
        }
    }
    nats.wait_settled(T).await;
    eprintln!(
        "race: {} cancelled, {} finished",
        cancelled.len(),
        finished.len()
    );
    let called_back: HashSet<String> = common::call_ids(&sink);
    assert_eq!(
        called_back, finished,
        "callbacks went to exactly the calls not cancelled"
    );
    assert_eq!(sink.count(), finished.len(), "a callback was repeated");
    for id in &cancelled {
        assert_eq!(status(&gw, id).await["state"], "cancelled", "{id}");
    }
    for id in &finished {
        assert_eq!(status(&gw, id).await["state"], "succeeded", "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_still_ends_in_the_right_state() {
    let nats = Nats::start(1).await;
    // The first run hangs until its worker is killed; the run after the redelivery answers.
    let runs = Mutex::new(0usize);
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        let mut runs = runs.lock().unwrap();
        *runs += 1;
        if *runs == 1 {
            Reply::status(200).delay(Duration::from_secs(120))
        } else {
            Reply::status(200).body("second run")
        }
    }))
    .await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let id = enqueue(&gw, "fragile", &[]).await;
    let mut first = spawn_worker(
        &nats.url(),
        &template,
        &["--ack-wait", "1s", "--keep-results"],
    );
    wait_state(&gw, &id, "running").await;
    first.kill().await.expect("SIGKILL");
    let mut second = spawn_worker(
        &nats.url(),
        &template,
        &["--ack-wait", "1s", "--keep-results"],
    );
    let done = wait_state(&gw, &id, "succeeded").await;
    assert_eq!(done["attempts"], 1, "a crash is no attempt: {done}");
    let result = send(&gw, Method::GET, &format!("/async-call/{id}/result")).await;
    assert_eq!(&result.body[..], b"second run");
    assert_eq!(function.count(), 2);
    second.kill().await.expect("stop");
}

/// More calls than a small status budget holds: the status streams stay within their shares
/// while every call still runs, the latest calls answer their status, and the earliest, pushed
/// out, answer 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_store_stays_within_its_budget() {
    const CALLS: usize = 3_000;
    const BUDGET: &str = "256KiB";
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let gw = gateway_with(&nats, &["--status-budget", BUDGET]).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(
        &nats.url(),
        &[
            "--function-url-template",
            &template,
            "--status-budget",
            BUDGET,
        ],
    )
    .await;
    let mut ids = Vec::with_capacity(CALLS);
    for chunk in 0..CALLS / 500 {
        let lines: String = (0..500)
            .map(|i| format!("{{\"body\":\"call {}\"}}\n", chunk * 500 + i))
            .collect();
        let a = gw
            .post(
                "/async-batch/budgeted",
                &[("content-type", "application/x-ndjson")],
                lines,
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        for line in String::from_utf8(a.body.to_vec()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            ids.push(v["call_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), CALLS);
    wait_until(T, "every call ran", || function.count() >= CALLS).await;
    nats.wait_settled(T).await;
    let last = ids.last().unwrap();
    wait_state(&gw, last, "succeeded").await;

    let pages = nats
        .js
        .get_stream(flotilla_queue::status::pages::PAGE_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let share = (256 * 1024) / 4 * 3;
    assert_eq!(pages.config.max_bytes, share);
    assert!(
        pages.state.bytes <= share as u64,
        "{} bytes held, over the pages' share of {share}",
        pages.state.bytes
    );
    // What the records of these calls would take unbounded: the budget really bit.
    assert!(
        pages.state.first_sequence > 1,
        "nothing was pushed out: {:?}",
        pages.state
    );
    let first = send(&gw, Method::GET, &format!("/async-call/{}", ids[0])).await;
    assert_eq!(first.status, 404, "the first call's record was pushed out");
    for id in ids.iter().rev().take(50) {
        assert_eq!(status(&gw, id).await["state"], "succeeded", "{id}");
    }
    assert_eq!(function.count(), CALLS, "a call ran twice");
}

async fn status_config(nats: &Nats) -> async_nats::jetstream::stream::Config {
    let stream = flotilla_queue::status::STATUS_STREAM;
    let mut stream = nats.js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

async fn gateway_with(nats: &Nats, args: &[&str]) -> Gateway {
    let mut all = vec!["--nats-url", nats.fleet.nats_url()];
    all.extend_from_slice(args);
    Gateway::start(&all).await
}

/// Calls queued by a release that kept one record per call, in streams it made, keep their
/// status through the upgrade: a gateway and a worker of this release add the status pages
/// stream and the budget's limits, show those calls `queued`, run them and record their ends
/// in their own records, while new calls go to pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_before_status_pages_keep_their_status() {
    use flotilla_queue::status::{self, Record, pages};
    let nats = Nats::start(1).await;
    // The earlier release's streams: no status pages, no budget.
    nats.js.delete_stream(pages::PAGE_STREAM).await.unwrap();
    let mut old = status_config(&nats).await;
    old.max_bytes = -1;
    old.max_messages = -1;
    nats.js.update_stream(old).await.unwrap();

    // Three calls as that release queued them: a UUID v4 id, its `queued` record first, the
    // call carrying the record's sequence.
    let mut old_ids = Vec::new();
    for n in 0..3 {
        let id = flotilla_queue::envelope::new_call_id();
        let env = common::envelope("upgraded", &id, None, &format!("old {n}"));
        let record = Record::queued(&id, "upgraded", env.start_time, None);
        let revision = status::publish_expecting(
            &nats.js,
            status::status_subject(&id),
            record.to_json().into(),
            0,
        )
        .await
        .unwrap()
        .unwrap();
        let shard = nats.topology.shard_map().shard_of("upgraded");
        let (mut headers, body) = env.to_nats(None);
        headers.insert(status::REVISION_HEADER, revision.to_string().as_str());
        nats.js
            .publish_with_headers(
                flotilla_queue::subjects::call_subject(shard, &env.function),
                headers,
                body,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        old_ids.push(id);
    }

    let gw = gateway(&nats).await;
    for id in &old_ids {
        assert_eq!(status(&gw, id).await["state"], "queued", "{id}");
    }
    let new_id = enqueue(&gw, "upgraded", &[]).await;
    assert!(pages::page_of(&new_id).is_some(), "{new_id}");
    assert_eq!(status(&gw, &new_id).await["state"], "queued");
    let limited = status_config(&nats).await;
    assert!(limited.max_bytes > 0, "the budget reached the old stream");

    let function = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(&nats.url(), &["--function-url-template", &template]).await;
    for id in old_ids.iter().chain([&new_id]) {
        let done = wait_state(&gw, id, "succeeded").await;
        assert_eq!(done["attempts"], 1, "{done}");
    }
    // The old calls' ends are in their own records, not in a page.
    for id in &old_ids {
        let stored = status::last_json::<Record>(
            &nats
                .js
                .get_stream_no_info(status::STATUS_STREAM)
                .await
                .unwrap(),
            status::status_subject(id),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(stored.0.state, status::CallState::Succeeded);
    }
    assert_eq!(function.count(), 4);
}

/// A numbered call dead-lettered, then replayed: its status goes from `dead` back to `queued`
/// and on to the replayed run's end, though the dead record (and a cancel that came too late)
/// stay in its page before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_shows_its_new_run() {
    let nats = Nats::start(1).await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failing.clone();
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::status(500)
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
    let id = enqueue(&gw, "phoenix", &[]).await;
    assert!(flotilla_queue::status::pages::page_of(&id).is_some());
    let dead = wait_state(&gw, &id, "dead").await;
    assert_eq!(dead["attempts"], 1, "{dead}");
    // A cancel of the dead call loses, and must not stop its replay.
    let late = send(&gw, Method::DELETE, &format!("/async-call/{id}")).await;
    assert_eq!(late.status, 409, "{:?}", late.body);

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let answer = gw
        .post(
            "/system/dead-letters/replay",
            &[("content-type", "application/json")],
            r#"{"function":"phoenix"}"#,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let done = wait_state(&gw, &id, "succeeded").await;
    assert_eq!(done["status"], 200, "{done}");
    assert_eq!(function.count(), 2);
}

/// A retried POST with the same `Idempotency-Key` gets the same id (a UUID v8 derived from the
/// key, so its status is in a page) and records no second acceptance: the call's status follows
/// its one run to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_keyed_post_keeps_one_status() {
    let nats = Nats::start(1).await;
    let gw = gateway(&nats).await;
    let key = [("idempotency-key", "order-7")];
    let first = enqueue(&gw, "keyed", &key).await;
    assert!(
        flotilla_queue::status::pages::page_of(&first).is_some(),
        "{first}"
    );
    let queued = status(&gw, &first).await;
    let again = enqueue(&gw, "keyed", &key).await;
    assert_eq!(again, first, "the retried POST names the same call");
    assert_eq!(
        status(&gw, &first).await["accepted_at"],
        queued["accepted_at"]
    );

    let function = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(&nats.url(), &["--function-url-template", &template]).await;
    let done = wait_state(&gw, &first, "succeeded").await;
    assert_eq!(done["accepted_at"], queued["accepted_at"], "{done}");
    nats.wait_settled(T).await;
    assert_eq!(function.count(), 1);
    assert_eq!(status(&gw, &first).await["state"], "succeeded");
}

/// `calls` calls queued for `name`, a function that answers 200 after `delay`, before any
/// worker runs: the server, the function, the gateway and the call ids.
async fn queued_calls(
    name: &str,
    calls: usize,
    delay: Duration,
) -> (Nats, RecordingServer, Gateway, Vec<String>) {
    let nats = Nats::start(1).await;
    let function = RecordingServer::start(Arc::new(move |_: &Recorded| {
        Reply::status(200).delay(delay)
    }))
    .await;
    let gw = gateway(&nats).await;
    let mut ids = Vec::with_capacity(calls);
    for _ in 0..calls {
        ids.push(enqueue(&gw, name, &[]).await);
    }
    (nats, function, gw, ids)
}

/// Calls of shard 0 still unacked, delivered more than once, and still stored, over its call
/// and wait streams.
async fn left_unsettled(nats: &Nats) -> (usize, usize, u64) {
    use futures_util::StreamExt;
    let (mut pending, mut redelivered, mut queued) = (0, 0, 0);
    for name in [
        flotilla_queue::subjects::call_stream(0),
        flotilla_queue::subjects::wait_stream(0),
    ] {
        let mut stream = nats.js.get_stream(name).await.unwrap();
        queued += stream.info().await.unwrap().state.messages;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.unwrap();
            pending += info.num_ack_pending;
            redelivered += info.num_redelivered;
        }
    }
    (pending, redelivered, queued)
}

/// A numbered call's end is recorded, and its message acked, by the status writer after the
/// call's task is gone: a worker stopped while every call runs lets them end, then records and
/// acks them all before it exits, so none is left pending, redelivered or queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_as_its_calls_end_records_and_acks_every_one() {
    const CALLS: usize = 300;
    // Slow enough that every call is running when the worker is told to stop, so they all end
    // while it drains.
    let (nats, function, gw, ids) = queued_calls("quick", CALLS, Duration::from_millis(500)).await;
    let template = format!("{}/{{name}}", function.url());
    // A process of its own: when it exits, what it did not send is gone.
    let mut worker = common::spawn_worker(&nats.url(), &template, &[]);
    wait_until(T, "every call running", || function.count() >= CALLS).await;
    common::sigterm(&worker);
    let exited = tokio::time::timeout(T, worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "{exited}");
    assert_eq!(left_unsettled(&nats).await, (0, 0, 0));
    assert_eq!(function.count(), CALLS, "no call ran twice");
    for id in &ids {
        assert_eq!(status(&gw, id).await["state"], "succeeded", "{id}");
    }
}

/// The calls whose end waits for the status store are counted (`worker_status_ends_waiting`):
/// with nats-server stopped (SIGSTOP) as they end, every one waits, holding its ack; once it
/// runs again, each record is stored, each call acked once, and the gauge is back at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_waiting_for_a_stalled_status_store_are_counted_then_acked() {
    const CALLS: usize = 20;
    let (nats, function, gw, ids) =
        queued_calls("stalled", CALLS, Duration::from_millis(1500)).await;
    let template = format!("{}/{{name}}", function.url());
    let worker = Worker::start_ready(&nats.url(), &["--function-url-template", &template]).await;
    let waiting = || async {
        let (_, scrape) = common::get(worker.admin, "/metrics").await;
        common::metric(&scrape, "worker_status_ends_waiting ")
    };
    assert_eq!(waiting().await, Some(0.0), "registered at 0");
    wait_until(T, "every call running", || function.count() >= CALLS).await;
    let pid = nats.fleet.nats_server().unwrap().pid().unwrap();
    common::signal(pid, "-STOP");
    // Resumed however the test ends, so the server can be stopped.
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            common::signal(self.0, "-CONT");
        }
    }
    let resume = Resume(pid);
    wait_until_async(
        T,
        "every end waiting for the stopped status store",
        || async { waiting().await == Some(CALLS as f64) },
    )
    .await;
    drop(resume);
    wait_until_async(T, "no end waiting", || async {
        waiting().await == Some(0.0)
    })
    .await;
    for id in &ids {
        assert_eq!(status(&gw, id).await["state"], "succeeded", "{id}");
    }
    assert_eq!(left_unsettled(&nats).await, (0, 0, 0));
    assert_eq!(function.count(), CALLS, "no call ran twice");
    worker.stop(T).await.unwrap();
}
