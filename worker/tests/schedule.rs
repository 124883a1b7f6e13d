//! Delayed calls and maximum age against a real nats-server: `X-Delay` and `X-Not-Before` start
//! a call on time (not before, within a second after), survive a worker SIGKILL during the wait,
//! can be cancelled while they wait; a call older than its function's `max_age` never reaches
//! the function and is dead-lettered as `expired`, its callback saying 410.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Nats, Worker, dead_letters, spawn_worker};
use flotilla_queue::dead_letter as dl;
use flotilla_testsupport::{RecordingServer, wait_until_async};
use http::Method;

const T: Duration = Duration::from_secs(30);
/// How late a delayed call may start.
const ON_TIME: Duration = Duration::from_secs(1);

async fn gateway(nats: &Nats) -> Gateway {
    Gateway::start(&["--nats-url", &nats.url(), "--max-delay", "1m"]).await
}

/// Enqueues a call to `function` with `headers`; returns its id and the instants just before
/// the request was sent and just after the 202 came back.
async fn enqueue(
    gw: &Gateway,
    function: &str,
    headers: &[(&str, &str)],
) -> (String, Instant, Instant) {
    let sent = Instant::now();
    let a = gw
        .post(&format!("/async-function/{function}"), headers, "in")
        .await
        .unwrap();
    let answered = Instant::now();
    assert_eq!(a.status, 202, "{:?}", a.body);
    (a.call_id.unwrap(), sent, answered)
}

async fn state(gw: &Gateway, id: &str) -> serde_json::Value {
    let a = gw
        .send(Method::GET, &format!("/async-call/{id}"), &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    serde_json::from_slice(&a.body).unwrap()
}

/// Asserts the function received its one request at `delay` after the call was accepted
/// (between `sent` and `answered`), no earlier and at most [`ON_TIME`] later.
fn started_on_time(function: &RecordingServer, delay: Duration, sent: Instant, answered: Instant) {
    let at = function.requests()[0].at;
    assert!(
        at >= sent + delay,
        "started {:?} early",
        (sent + delay) - at
    );
    assert!(
        at <= answered + delay + ON_TIME,
        "started {:?} late",
        at - (answered + delay)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_calls_start_on_time_and_bad_delays_are_refused() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start_ready(&nats.url(), &["--function-url-template", &template]).await;

    let delay = Duration::from_secs(2);
    let (id, sent, answered) = enqueue(&gw, "later", &[("x-delay", "2s")]).await;
    let queued = state(&gw, &id).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    assert!(queued["not_before"].is_string(), "{queued}");
    function.wait_for(1, T).await;
    started_on_time(&function, delay, sent, answered);
    assert!(
        function.requests()[0].headers.get("x-delay").is_none(),
        "the delay travelled to the function"
    );

    // An absolute time, as RFC 3339, three seconds ahead in whole seconds.
    let now = time::OffsetDateTime::now_utc();
    let at = (now + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .unwrap();
    let asked = Instant::now() + Duration::try_from(at - now).unwrap();
    let text = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    enqueue(&gw, "at", &[("x-not-before", &text)]).await;
    function.wait_for(2, T).await;
    let started = function.requests()[1].at;
    // The two clocks are read a moment apart: allow a few milliseconds.
    assert!(
        started + Duration::from_millis(20) >= asked,
        "started early"
    );
    assert!(
        started <= asked + ON_TIME,
        "started {:?} late",
        started - asked
    );

    for (headers, why) in [
        (vec![("x-delay", "soon")], "X-Delay must be a duration"),
        (vec![("x-delay", "2m")], "at most 60s (--max-delay)"),
        (vec![("x-not-before", "tomorrow")], "X-Not-Before must be"),
        (
            vec![
                ("x-delay", "1s"),
                ("x-not-before", "Sun, 06 Nov 2044 08:49:37 GMT"),
            ],
            "not both",
        ),
    ] {
        let a = gw
            .post("/async-function/later", &headers, "x")
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{headers:?}");
        assert!(
            String::from_utf8_lossy(&a.body).contains(why),
            "{headers:?}: {:?}",
            a.body
        );
    }
    // A time already past starts at once.
    enqueue(
        &gw,
        "past",
        &[("x-not-before", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    function.wait_for(3, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_call_survives_a_worker_sigkill_during_its_wait() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    // A short ack_wait: killed before it handed the waiting call back, the first worker still
    // holds it, and NATS gives it to the second only after ack_wait, well before it is due.
    let args = ["--ack-wait", "1s"];
    let mut first = spawn_worker(&nats.url(), &template, &args);
    // The worker has taken the waiting call once its retry consumer holds it unacknowledged.
    let delay = Duration::from_secs(5);
    let (_, sent, answered) = enqueue(&gw, "patient", &[("x-delay", "5s")]).await;
    wait_until_async(T, "a worker holds the delayed call", || async {
        let stream = nats
            .js
            .get_stream(flotilla_queue::subjects::call_stream(0))
            .await
            .unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = match stream
            .get_consumer(flotilla_queue::subjects::RETRY_CONSUMER)
            .await
        {
            Ok(c) => c,
            Err(_) => return false,
        };
        consumer.info().await.is_ok_and(|i| i.num_ack_pending == 1)
    })
    .await;
    first.kill().await.expect("SIGKILL");
    let mut second = spawn_worker(&nats.url(), &template, &args);
    function.wait_for(1, T).await;
    started_on_time(&function, delay, sent, answered);
    assert_eq!(function.count(), 1);
    second.kill().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_call_cancelled_while_it_waits_never_runs() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let gw = gateway(&nats).await;
    let template = format!("{}/{{name}}", function.url());
    let _worker = Worker::start_ready(&nats.url(), &["--function-url-template", &template]).await;
    let cb = format!("{}/cb", sink.url());
    let (id, _, _) = enqueue(&gw, "later", &[("x-delay", "1s"), ("x-callback-url", &cb)]).await;
    let a = gw
        .send(Method::DELETE, &format!("/async-call/{id}"), &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, 202);
    // The call leaves the shard stream only once a worker found it due, then cancelled.
    nats.wait_settled(T).await;
    assert_eq!(function.count(), 0, "the cancelled call ran");
    assert_eq!(sink.count(), 0, "the cancelled call called back");
    assert_eq!(state(&gw, &id).await["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_older_than_its_max_age_never_reaches_its_function() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::echo().await;
    let sink = RecordingServer::answering(200).await;
    let gw = gateway(&nats).await;
    let policies = "[functions.stale]\nmax_age = \"1s\"\n";
    let _worker = Worker::with_policies(&nats.url(), &function.url(), policies).await;
    let cb = format!("{}/cb", sink.url());
    // Due two seconds after it is accepted: past its one-second maximum age.
    let (old, _, _) = enqueue(&gw, "stale", &[("x-delay", "2s"), ("x-callback-url", &cb)]).await;
    // Started at once: well within it.
    let (fresh, _, _) = enqueue(&gw, "stale", &[("x-callback-url", &cb)]).await;

    sink.wait_for(2, T).await;
    nats.wait_settled(T).await;
    assert_eq!(
        common::call_ids::<Vec<String>>(&function),
        vec![fresh.clone()],
        "only the fresh call may reach the function"
    );
    let expired = sink
        .requests()
        .into_iter()
        .find(|r| r.header("x-call-id") == old)
        .unwrap();
    assert_eq!(expired.header("x-function-status"), "410");
    let letters = dead_letters(&nats, 1).await;
    assert_eq!(
        letters[0].1.get(dl::H_KIND).unwrap().as_str(),
        dl::KIND_EXPIRED
    );
    assert!(letters[0].1.get(dl::H_LAST_STATUS).is_none());
    let s = state(&gw, &old).await;
    assert_eq!(s["state"], "dead", "{s}");
    assert_eq!(s["attempts"], 0, "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .starts_with("expired: not started within max_age 1s"),
        "{s}"
    );
}
