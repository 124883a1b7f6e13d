//! The dead-letter API against a real nats-server: letters written into `FLOTILLA_DEAD` the way
//! the worker writes them are listed with their fields, filtered and paged, and replayed (one, a
//! function's, all) back onto their shard with the attempt count reset; poison stays put, a
//! repeated replay enqueues once; one letter is shown with its headers and body and deleted; the
//! routes and the console's pages sit behind the `/system` auth, and a cross-site request that
//! would change state is refused.

// Helpers may unwrap like the tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use flotilla_queue::dead_letter as dl;
use flotilla_queue::{Envelope, FunctionName, ShardMap, subjects};
use flotilla_testsupport::NatsServer;
use harness::{Gateway, Reply, call, envelopes, get, send, stream_len};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const SHARDS: u32 = 2;
const AUTH: (&str, &str) = ("authorization", "Basic YWRtaW46c2VjcmV0"); // admin:secret

/// A dead letter written by the test, with the call it holds.
#[derive(Debug, Clone)]
struct Written {
    sequence: u64,
    call: Option<Envelope>,
}

fn call_of(function: &str, n: u32) -> Envelope {
    Envelope {
        call_id: format!("{function}-call-{n}"),
        function: FunctionName::parse(function).unwrap(),
        method: "POST".into(),
        path: format!("/p/{n}"),
        query: format!("n={n}"),
        callback_url: Some(format!("http://127.0.0.1:9/cb/{function}/{n}")),
        start_time: 1_700_000_000_000_000_000 + u128::from(n),
        // Two attempts were already made before the last one failed.
        attempt: 2,
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-tenant".into(), "t1".into()),
        ],
        body: Bytes::from(format!("body of {function} {n}")),
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    }
}

fn shard_of(function: &str) -> u32 {
    ShardMap::new(SHARDS).shard_of(function)
}

/// Writes an `exhausted` letter as the worker does: the original envelope headers (no `Nats-*`)
/// plus the `Flotilla-Dead-*` headers, under `flotilla.dead.<function>`.
async fn write_exhausted(js: &jetstream::Context, call: Envelope, origin_seq: u64) -> Written {
    let (mut h, payload) = call.to_nats(None);
    let shard = shard_of(call.function.as_str());
    let stream = subjects::call_stream(shard);
    h.insert(dl::H_KIND, dl::KIND_EXHAUSTED);
    h.insert(dl::H_REASON, "function answered 500 on every attempt");
    h.insert(dl::H_STREAM, stream.as_str());
    h.insert(dl::H_SEQUENCE, origin_seq.to_string().as_str());
    h.insert(
        dl::H_SUBJECT,
        subjects::call_subject(shard, &call.function).as_str(),
    );
    h.insert(
        dl::H_TIME,
        flotilla_queue::time::unix_nanos().to_string().as_str(),
    );
    h.insert(dl::H_ATTEMPTS, "3");
    h.insert(dl::H_LAST_STATUS, "500");
    h.insert("Nats-Msg-Id", dl::dedup_id(&stream, origin_seq).as_str());
    let sequence = publish(
        js,
        &subjects::dead_subject(call.function.as_str()),
        h,
        payload,
    )
    .await;
    Written {
        sequence,
        call: Some(call),
    }
}

/// A poison letter: a message on a subject naming no valid function, without an envelope.
async fn write_poison(js: &jetstream::Context) -> Written {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", "application/octet-stream");
    h.insert(dl::H_KIND, dl::KIND_POISON);
    h.insert(dl::H_REASON, "subject names no valid function");
    h.insert(dl::H_STREAM, "FLOTILLA_CALLS_0");
    h.insert(dl::H_SEQUENCE, "77");
    h.insert(dl::H_SUBJECT, "flotilla.call.0.bad*name");
    h.insert(dl::H_TIME, "1700000000000000000");
    let sequence = publish(
        js,
        &subjects::dead_subject("bad*name"),
        h,
        Bytes::from_static(b"\xff\xfe not an envelope"),
    )
    .await;
    Written {
        sequence,
        call: None,
    }
}

async fn publish(js: &jetstream::Context, subject: &str, h: HeaderMap, payload: Bytes) -> u64 {
    js.publish_with_headers(subject.to_owned(), h, payload)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// A gateway with the dead letters of three functions and one poison message.
struct Fleet {
    nats: NatsServer,
    gw: Gateway,
    client: async_nats::Client,
    alpha: Vec<Written>,
    beta: Vec<Written>,
    gamma: Vec<Written>,
    poison: Written,
}

impl Fleet {
    async fn start(extra: &[&str]) -> Self {
        let nats = NatsServer::start();
        let mut flags = vec!["--shards", "2"];
        flags.extend_from_slice(extra);
        let gw = Gateway::ready(&nats.url(), &flags).await;
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        // Interleaved, as failures arrive in production.
        let mut alpha = Vec::new();
        let mut beta = Vec::new();
        let mut gamma = Vec::new();
        alpha.push(write_exhausted(&js, call_of("alpha", 1), 11).await);
        beta.push(write_exhausted(&js, call_of("beta.ns", 1), 12).await);
        let poison = write_poison(&js).await;
        alpha.push(write_exhausted(&js, call_of("alpha", 2), 13).await);
        gamma.push(write_exhausted(&js, call_of("gamma", 1), 14).await);
        beta.push(write_exhausted(&js, call_of("beta.ns", 2), 15).await);
        alpha.push(write_exhausted(&js, call_of("alpha", 3), 16).await);
        Self {
            nats,
            gw,
            client,
            alpha,
            beta,
            gamma,
            poison,
        }
    }

    /// A fleet whose `/system` routes need `AUTH`.
    async fn with_auth() -> Self {
        Self::start(&[
            "--basic-auth-user",
            "admin",
            "--basic-auth-password",
            "secret",
        ])
        .await
    }

    fn all_sequences(&self) -> BTreeSet<u64> {
        self.alpha
            .iter()
            .chain(&self.beta)
            .chain(&self.gamma)
            .chain([&self.poison])
            .map(|w| w.sequence)
            .collect()
    }

    async fn list(&self, query: &str, auth: &[(&str, &str)]) -> Value {
        let r = call(
            self.gw.addr,
            "GET",
            &format!("/system/dead-letters{query}"),
            auth,
            b"",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("content-type"), "application/json");
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Sequences of every letter still listed.
    async fn listed(&self, auth: &[(&str, &str)]) -> BTreeSet<u64> {
        let page = self.list("?limit=1000", auth).await;
        sequences(&page)
    }

    /// Calls waiting on `function`'s shard.
    async fn queued(&self, function: &str) -> Vec<Envelope> {
        let stream = subjects::call_stream(shard_of(function));
        envelopes(&self.client, &stream)
            .await
            .into_iter()
            .filter(|e| e.function.as_str() == function)
            .collect()
    }

    async fn queued_total(&self) -> u64 {
        let mut n = 0;
        for shard in 0..SHARDS {
            n += stream_len(&self.client, &subjects::call_stream(shard)).await;
        }
        n
    }
}

fn sequences(page: &Value) -> BTreeSet<u64> {
    page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sequence"].as_u64().unwrap())
        .collect()
}

async fn replay(addr: SocketAddr, body: &str, auth: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method("POST")
        .uri("/system/dead-letters/replay")
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in auth {
        req = req.header(*k, *v);
    }
    send(
        addr,
        req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

async fn replay_ok(addr: SocketAddr, body: &str) -> Value {
    let r = replay(addr, body, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    serde_json::from_slice(&r.body).unwrap()
}

/// The replayed call is the original one with its attempts reset.
fn assert_replayed(got: &Envelope, original: &Envelope) {
    let mut want = original.clone();
    want.attempt = 0;
    // NATS headers come back in no particular order across names.
    let mut got = got.clone();
    got.headers.sort();
    want.headers.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn lists_every_letter_with_its_fields_oldest_first() {
    let f = Fleet::start(&[]).await;
    let page = f.list("", &[]).await;
    assert_eq!(page["total"], 7);
    assert_eq!(page["next"], Value::Null);
    let letters = page["dead_letters"].as_array().unwrap();
    let seqs: Vec<u64> = letters
        .iter()
        .map(|l| l["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, f.all_sequences().into_iter().collect::<Vec<_>>());

    let second_alpha = letters
        .iter()
        .find(|l| l["sequence"] == f.alpha[1].sequence)
        .unwrap();
    let shard = shard_of("alpha");
    assert_eq!(second_alpha["function"], "alpha");
    assert_eq!(second_alpha["call_id"], "alpha-call-2");
    assert_eq!(second_alpha["kind"], "exhausted");
    assert_eq!(
        second_alpha["reason"],
        "function answered 500 on every attempt"
    );
    assert_eq!(second_alpha["attempts"], 3);
    assert_eq!(second_alpha["last_status"], 500);
    assert_eq!(
        second_alpha["origin_stream"],
        subjects::call_stream(shard).as_str()
    );
    assert_eq!(second_alpha["origin_sequence"], 13);
    assert_eq!(
        second_alpha["origin_subject"],
        format!("flotilla.call.{shard}.alpha").as_str()
    );
    assert_eq!(second_alpha["method"], "POST");
    assert_eq!(second_alpha["path"], "/p/2");
    assert_eq!(second_alpha["query"], "n=2");
    assert_eq!(
        second_alpha["callback_url"],
        "http://127.0.0.1:9/cb/alpha/2"
    );
    assert_eq!(second_alpha["body_bytes"], "body of alpha 2".len());
    let time = second_alpha["time"].as_str().unwrap();
    assert!(
        time.len() == 30 && time.starts_with("20") && time.ends_with('Z'),
        "{time}"
    );

    let beta = letters
        .iter()
        .find(|l| l["sequence"] == f.beta[0].sequence)
        .unwrap();
    assert_eq!(beta["function"], "beta.ns");

    let poison = letters
        .iter()
        .find(|l| l["sequence"] == f.poison.sequence)
        .unwrap();
    assert_eq!(poison["function"], "~invalid");
    assert_eq!(poison["kind"], "poison");
    assert_eq!(poison["reason"], "subject names no valid function");
    assert_eq!(poison["call_id"], Value::Null);
    assert_eq!(poison["attempts"], Value::Null);
    assert_eq!(poison["time"], "2023-11-14T22:13:20.000000000Z");
    assert_eq!(poison["body_bytes"], b"\xff\xfe not an envelope".len());
}

#[tokio::test]
async fn filters_by_function_and_pages_cover_everything_once() {
    let f = Fleet::start(&[]).await;
    for (function, written) in [
        ("alpha", &f.alpha),
        ("beta.ns", &f.beta),
        ("gamma", &f.gamma),
    ] {
        let page = f.list(&format!("?function={function}"), &[]).await;
        assert_eq!(page["total"], written.len(), "{function}");
        let want: BTreeSet<u64> = written.iter().map(|w| w.sequence).collect();
        assert_eq!(sequences(&page), want, "{function}");
        assert!(
            page["dead_letters"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["function"] == function)
        );
    }
    // A namespace is its own function: `beta` alone has no letters.
    let page = f.list("?function=beta", &[]).await;
    assert_eq!(page["total"], 0);
    assert!(sequences(&page).is_empty());
    let page = f.list("?function=~invalid", &[]).await;
    assert_eq!(sequences(&page), BTreeSet::from([f.poison.sequence]));

    // Pages of 2 over everything, then over one function.
    for (filter, want) in [
        ("", f.all_sequences()),
        (
            "&function=alpha",
            f.alpha.iter().map(|w| w.sequence).collect(),
        ),
    ] {
        let mut seen = Vec::new();
        let mut after = 0u64;
        let mut pages = 0;
        loop {
            let page = f
                .list(&format!("?limit=2&after={after}{filter}"), &[])
                .await;
            assert_eq!(page["total"], want.len());
            let got = sequences(&page);
            assert!(got.len() <= 2);
            assert!(got.iter().all(|s| *s > after));
            seen.extend(got);
            pages += 1;
            match page["next"].as_u64() {
                Some(next) => after = next,
                None => break,
            }
            assert!(pages <= want.len(), "paging does not end");
        }
        assert_eq!(seen.len(), want.len(), "a letter was listed twice");
        assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);
    }
    let page = f.list(&format!("?after={}", u64::MAX), &[]).await;
    assert!(sequences(&page).is_empty());
    assert_eq!(page["next"], Value::Null);

    for bad in [
        "?function=bad*name",
        "?limit=1001",
        "?limit=0",
        "?after=x",
        "?fn=alpha",
    ] {
        let r = call(
            f.gw.addr,
            "GET",
            &format!("/system/dead-letters{bad}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
    }
}

#[tokio::test]
async fn replaying_one_letter_requeues_exactly_that_call() {
    let f = Fleet::start(&[]).await;
    let target = &f.alpha[1];
    let report = replay_ok(
        f.gw.addr,
        &json!({ "sequences": [target.sequence] }).to_string(),
    )
    .await;
    assert_eq!(
        report,
        json!({ "replayed": 1, "skipped": [], "failed": [], "next": null })
    );

    let queued = f.queued("alpha").await;
    assert_eq!(queued.len(), 1);
    assert_replayed(&queued[0], target.call.as_ref().unwrap());
    assert_eq!(queued[0].call_id, "alpha-call-2");
    assert_eq!(
        queued[0].callback_url.as_deref(),
        Some("http://127.0.0.1:9/cb/alpha/2")
    );
    assert_eq!(f.queued_total().await, 1, "only that call is queued");

    let mut want = f.all_sequences();
    want.remove(&target.sequence);
    assert_eq!(f.listed(&[]).await, want);

    // Each gateway has its own recorder, so other tests' replays do not count here.
    let r = call(f.gw.addr, "GET", "/metrics", &[], b"").await;
    assert!(
        r.text()
            .lines()
            .any(|l| l.starts_with("gateway_dead_letter_replays_total{")
                && l.contains("function_name=\"alpha\"")
                && l.contains("outcome=\"replayed\"")
                && l.ends_with(" 1")),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn replaying_a_function_requeues_all_of_its_calls_only() {
    let f = Fleet::start(&[]).await;
    let report = replay_ok(f.gw.addr, r#"{"function":"alpha"}"#).await;
    assert_eq!(report["replayed"], 3);
    assert_eq!(report["next"], Value::Null);
    let mut queued = f.queued("alpha").await;
    queued.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    assert_eq!(queued.len(), 3);
    for (got, written) in queued.iter().zip(&f.alpha) {
        assert_replayed(got, written.call.as_ref().unwrap());
    }
    assert_eq!(f.queued_total().await, 3);
    let left = f.listed(&[]).await;
    assert!(f.alpha.iter().all(|w| !left.contains(&w.sequence)));
    assert_eq!(left.len(), 4);

    // Bounded requests: one letter per request, continued with `next`.
    let first = replay_ok(f.gw.addr, r#"{"function":"beta.ns","limit":1}"#).await;
    assert_eq!(first["replayed"], 1);
    assert_eq!(first["next"], f.beta[0].sequence);
    let body = json!({ "function": "beta.ns", "limit": 1, "after": first["next"] });
    let second = replay_ok(f.gw.addr, &body.to_string()).await;
    assert_eq!(second["replayed"], 1);
    assert_eq!(second["next"], Value::Null);
    assert_eq!(f.queued("beta.ns").await.len(), 2);
}

#[tokio::test]
async fn replaying_all_skips_and_keeps_poison() {
    let f = Fleet::start(&[]).await;
    let report = replay_ok(f.gw.addr, r#"{"all":true}"#).await;
    assert_eq!(report["replayed"], 6, "{report}");
    assert_eq!(report["failed"], json!([]));
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["sequence"], f.poison.sequence);
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not replayable"),
        "{report}"
    );
    assert_eq!(f.listed(&[]).await, BTreeSet::from([f.poison.sequence]));
    assert_eq!(f.queued_total().await, 6);
    for (function, written) in [
        ("alpha", &f.alpha),
        ("beta.ns", &f.beta),
        ("gamma", &f.gamma),
    ] {
        let queued = f.queued(function).await;
        assert_eq!(queued.len(), written.len(), "{function}");
        for w in written {
            let call = w.call.as_ref().unwrap();
            let got = queued.iter().find(|e| e.call_id == call.call_id).unwrap();
            assert_replayed(got, call);
        }
    }

    // Asked for by sequence, poison is skipped and kept too.
    let body = json!({ "sequences": [f.poison.sequence] }).to_string();
    let report = replay_ok(f.gw.addr, &body).await;
    assert_eq!(report["replayed"], 0);
    assert_eq!(report["skipped"][0]["sequence"], f.poison.sequence);
    assert_eq!(f.listed(&[]).await, BTreeSet::from([f.poison.sequence]));
}

#[tokio::test]
async fn replaying_the_same_letter_again_enqueues_once() {
    let f = Fleet::start(&[]).await;
    let target = f.gamma[0].sequence;
    let body = json!({ "sequences": [target] }).to_string();
    // Concurrent requests may all read the letter before one deletes it: JetStream's
    // de-duplication keeps the call once whatever the interleaving.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (addr, body) = (f.gw.addr, body.clone());
        tasks.push(tokio::spawn(async move { replay_ok(addr, &body).await }));
    }
    let mut replayed = 0;
    for t in tasks {
        let report = t.await.unwrap();
        assert_eq!(report["failed"], json!([]), "{report}");
        replayed += report["replayed"].as_u64().unwrap();
    }
    assert!(replayed >= 1);
    // And a retry after the first answered finds nothing left to do.
    let again = replay_ok(f.gw.addr, &body).await;
    assert_eq!(again["replayed"], 0);
    assert_eq!(again["skipped"][0]["sequence"], target);
    assert!(
        again["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no dead letter"),
        "{again}"
    );

    assert_eq!(f.queued("gamma").await.len(), 1);
    assert_eq!(f.queued_total().await, 1);
    assert!(!f.listed(&[]).await.contains(&target));
}

#[tokio::test]
async fn a_replay_must_say_what_to_replay() {
    let f = Fleet::start(&[]).await;
    for body in [
        "",
        "{}",
        r#"{"all":false}"#,
        r#"{"sequences":[]}"#,
        r#"{"function":"alpha","all":true}"#,
        r#"{"function":"bad*name"}"#,
        "not json",
    ] {
        let r = replay(f.gw.addr, body, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}: {}", r.text());
    }
    assert_eq!(f.queued_total().await, 0);
    assert_eq!(f.listed(&[]).await, f.all_sequences());

    let r = call(f.gw.addr, "GET", "/system/dead-letters/replay", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "POST");
    let r = call(f.gw.addr, "POST", "/system/dead-letters", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, HEAD");
    let r = call(f.gw.addr, "GET", "/system/dead-letters/other", &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("not a dead-letter sequence"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn dead_letters_are_behind_the_system_auth() {
    let f = Fleet::with_auth().await;
    let r = call(f.gw.addr, "GET", "/system/dead-letters", &[], b"").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"flotilla\"");
    let r = replay(f.gw.addr, r#"{"all":true}"#, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let wrong = [("authorization", "Basic YWRtaW46d3Jvbmc=")]; // admin:wrong
    let r = replay(f.gw.addr, r#"{"all":true}"#, &wrong).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.queued_total().await, 0, "refused requests replay nothing");

    assert_eq!(f.listed(&[AUTH]).await, f.all_sequences());
    let body = json!({ "sequences": [f.alpha[0].sequence] }).to_string();
    let r = replay(f.gw.addr, &body, &[AUTH]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(f.queued_total().await, 1);
}

async fn letter(f: &Fleet, method: &str, sequence: u64, headers: &[(&str, &str)]) -> Reply {
    let path = format!("/system/dead-letters/{sequence}");
    call(f.gw.addr, method, &path, headers, b"").await
}

#[tokio::test]
async fn one_letter_shows_its_headers_and_body_and_can_be_deleted() {
    let f = Fleet::start(&[]).await;
    let w = &f.alpha[1];
    let r = letter(&f, "GET", w.sequence, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["sequence"], w.sequence);
    assert_eq!(v["function"], "alpha");
    assert_eq!(v["call_id"], "alpha-call-2");
    assert_eq!(v["reason"], "function answered 500 on every attempt");
    assert_eq!(v["attempts"], 3);
    let headers: Vec<(String, String)> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_owned(),
                h["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        headers.contains(&("x-tenant".into(), "t1".into())),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(dl::H_LAST_STATUS) && v == "500"),
        "{headers:?}"
    );
    let body = "body of alpha 2";
    assert_eq!(
        v["body"],
        json!({ "bytes": body.len(), "preview_bytes": body.len(), "truncated": false,
                "encoding": "text", "preview": body, "in_object_store": false })
    );
    assert_eq!(v["body_bytes"], body.len());

    // The poison letter has no call to show, and is still shown.
    let r = letter(&f, "GET", f.poison.sequence, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let r = letter(&f, "DELETE", w.sequence, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!({ "deleted": w.sequence })
    );
    let mut left = f.all_sequences();
    left.remove(&w.sequence);
    assert_eq!(f.listed(&[]).await, left);
    for method in ["GET", "DELETE"] {
        let r = letter(&f, method, w.sequence, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}: {}", r.text());
        assert!(
            r.text().contains("no dead letter with sequence"),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        f.queued_total().await,
        0,
        "a deleted letter is not replayed"
    );
    for bad in ["abc", "0", "-1", "1.5", "+3"] {
        let (status, text) = get(f.gw.addr, &format!("/system/dead-letters/{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
    }
    let r = letter(&f, "PUT", f.alpha[0].sequence, &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, HEAD, DELETE");
}

/// A page on another site cannot make the operator's browser replay or delete: a request that
/// changes state under `/system` with a foreign `Origin` or `Sec-Fetch-Site` is 403 and does
/// nothing; from the gateway's own origin, or from a client that is no browser, it passes.
#[tokio::test]
async fn cross_site_requests_that_change_state_are_refused() {
    let f = Fleet::start(&[]).await;
    let own = format!("http://{}", f.gw.addr);
    let body = json!({ "sequences": [f.alpha[0].sequence] }).to_string();
    for foreign in [
        vec![("origin", "http://127.0.0.2:8080")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site"), ("origin", own.as_str())],
    ] {
        let r = replay(f.gw.addr, &body, &foreign).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{foreign:?}: {}", r.text());
        assert!(
            r.text().starts_with("cross-site request refused"),
            "{}",
            r.text()
        );
        let r = letter(&f, "DELETE", f.alpha[0].sequence, &foreign).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{foreign:?}");
    }
    assert_eq!(f.queued_total().await, 0);
    assert_eq!(f.listed(&[]).await, f.all_sequences());
    // Reading is never refused: a cross-site page cannot read the answer anyway.
    let r = letter(
        &f,
        "GET",
        f.alpha[0].sequence,
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let same = [("origin", own.as_str()), ("sec-fetch-site", "same-origin")];
    let r = replay(f.gw.addr, &body, &same).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(f.queued_total().await, 1);
    let r = letter(&f, "DELETE", f.alpha[1].sequence, &same).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// The console's page and assets answer only with the `/system` credentials, and carry a
/// Content-Security-Policy that allows no inline script.
#[tokio::test]
async fn the_console_is_behind_the_system_auth() {
    let f = Fleet::with_auth().await;
    for path in [
        "/system/ui",
        "/system/ui/console.js",
        "/system/ui/console.css",
    ] {
        let r = call(f.gw.addr, "GET", path, &[], b"").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(!r.text().contains("Flotilla console"));
        let r = call(f.gw.addr, "GET", path, &[AUTH], b"").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let csp = r.header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), "nosniff");
    }
    let page = call(f.gw.addr, "GET", "/system/ui", &[AUTH], b"").await;
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.text().contains("/system/ui/console.js"));
    let r = letter(&f, "GET", f.alpha[0].sequence, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = letter(&f, "DELETE", f.alpha[0].sequence, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.listed(&[AUTH]).await, f.all_sequences());
}

#[tokio::test]
async fn nats_down_is_503_with_retry_after() {
    let mut f = Fleet::start(&["--publish-timeout", "500ms"]).await;
    f.nats.kill();
    for r in [
        call(f.gw.addr, "GET", "/system/dead-letters", &[], b"").await,
        replay(f.gw.addr, r#"{"all":true}"#, &[]).await,
    ] {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert_eq!(r.header("retry-after"), "1");
    }
}
