//! Call status, results and cancel against a real nats-server, through the gateway's HTTP API:
//! every state a call passes through, kept and refused results, cancels that reach a queued call,
//! a waiting retry and a running call, a cancel racing the end of its call, and a worker killed
//! mid-call.
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
    let a = send(gw, Method::GET, &format!("/async-call/{id}")).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    json(&a)
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
    let policies = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policies.path(),
        "[defaults]\nkeep_results = true\nmax_result_bytes = 64\n\
         [defaults.retry]\nattempts = 2\nmin_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n\
         [functions.flaky.retry]\nmin_backoff = \"1500ms\"\nmax_backoff = \"1500ms\"\n\
         [functions.bad]\nkeep_results = false\n",
    )
    .unwrap();
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start(
        &nats.url(),
        &[
            "--function-url-template",
            &template,
            "--policies",
            policies.path().to_str().unwrap(),
        ],
    )
    .await;
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
    let nats = Nats::start(1).await;
    // Every call runs 10 ms; each cancel is sent 0 to 19 ms after its call reached the function,
    // so cancels land before, around and after the ends of their calls.
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_millis(10))
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
            let id = format!("race-{i}");
            enqueue(&gw, "racer", &[("x-callback-url", &cb), ("x-call-id", &id)]).await;
            wait_until(T, &format!("{id} reaches the function"), || {
                call_ids(&function).contains(&id)
            })
            .await;
            tokio::time::sleep(Duration::from_millis(i % 20)).await;
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
