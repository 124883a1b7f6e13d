//! Hostile input against a running gateway: seeded random names, paths, queries, headers and
//! bodies on every route, and random junk stored as dead letters that the dead-letter reader
//! must list and replay. Every answer is one the contract allows (never a 5xx but a 503 on a
//! route that may shed load, or a 502/504 on the synchronous route), and the gateway is still
//! ready at the end. Bounded in count; `FUZZ_SEED` and `FUZZ_ITERATIONS` widen a run by hand.

#[path = "support/harness.rs"]
mod harness;

use bytes::Bytes;
use flotilla_queue::subjects;
use flotilla_testsupport::{NatsServer, closed_port};
use harness::{Gateway, get, send};
use http::{Request, StatusCode};
use http_body_util::Full;

fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(
        std::env::var("FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0xf022),
    )
}

fn iterations() -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}

/// A random run of characters a URI path or query may hold, percent escapes and odd ones
/// included.
fn uri_text(rng: &mut fastrand::Rng, max: usize) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", "0", "-", "_", ".", "/", "%2F", "%00", "%C3%A9", "%ZZ", "..", "~", "!", "$", "&",
        "'", "(", "*", "+", ",", ";", "=", ":", "@", "?", "%", "ns", "fn",
    ];
    (0..rng.usize(0..=max))
        .map(|_| PIECES[rng.usize(..PIECES.len())])
        .collect()
}

/// A random header value of visible ASCII (what HTTP can carry), sometimes long.
fn header_text(rng: &mut fastrand::Rng) -> String {
    let len = if rng.u8(..20) == 0 {
        rng.usize(1000..=9000)
    } else {
        rng.usize(0..=40)
    };
    (0..len).map(|_| char::from(rng.u8(0x20..0x7f))).collect()
}

fn json_body(rng: &mut fastrand::Rng) -> Vec<u8> {
    const SEEDS: &[&str] = &[
        r#"{"sequences":[1,2]}"#,
        r#"{"function":"f"}"#,
        r#"{"all":true}"#,
        r#"{"all":true,"after":3,"limit":2}"#,
        r#"{}"#,
        r#"[]"#,
        r#"{"sequences":[]}"#,
        r#"{"all":"yes"}"#,
        r#"{"function":"a b"}"#,
        r#"{"sequences":[18446744073709551615]}"#,
    ];
    let mut b = SEEDS[rng.usize(..SEEDS.len())].as_bytes().to_vec();
    for _ in 0..rng.usize(0..=3) {
        let at = rng.usize(..=b.len());
        b.insert(at, rng.u8(..));
    }
    b
}

async fn fire(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> StatusCode {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", gw.addr.to_string());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.body(Full::new(Bytes::from(body))) {
        Ok(req) => send(gw.addr, req).await.status,
        // Not a request a client library would even send.
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_on_every_route_get_answers_the_contract_allows() {
    let nats = NatsServer::start();
    let template = format!("http://127.0.0.1:{}/{{name}}", closed_port());
    let gw = Gateway::ready(
        &nats.url(),
        &[
            "--shards",
            "2",
            "--function-url-template",
            &template,
            "--sync-timeout",
            "2s",
        ],
    )
    .await;
    let mut rng = rng();
    const NAMES: &[&str] = &[
        "x-callback-url",
        "x-call-id",
        "idempotency-key",
        "content-type",
        "x-custom",
        "authorization",
    ];
    for _ in 0..iterations() {
        let headers: Vec<(String, String)> = (0..rng.usize(0..4))
            .map(|_| {
                (
                    NAMES[rng.usize(..NAMES.len())].to_owned(),
                    header_text(&mut rng),
                )
            })
            .collect();
        let (method, path, allowed): (&str, String, &[u16]) = match rng.u8(..4) {
            0 => (
                ["POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"][rng.usize(..6)],
                format!("/async-function/{}", uri_text(&mut rng, 12)),
                &[202, 400, 404, 405, 413, 431],
            ),
            1 => (
                ["POST", "GET"][rng.usize(..2)],
                format!("/function/{}", uri_text(&mut rng, 12)),
                &[400, 404, 502, 504],
            ),
            2 => (
                "GET",
                format!("/system/dead-letters?{}", uri_text(&mut rng, 20)),
                &[200, 400],
            ),
            _ => (
                "POST",
                "/system/dead-letters/replay".to_owned(),
                &[200, 400],
            ),
        };
        let body = if path.ends_with("/replay") {
            json_body(&mut rng)
        } else {
            header_text(&mut rng).into_bytes()
        };
        let status = fire(&gw, method, &path, &headers, body).await;
        assert!(
            allowed.contains(&status.as_u16()),
            "{method} {path} {headers:?} answered {status}"
        );
    }
    assert_eq!(get(gw.addr, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_the_dead_letters_is_listed_and_replayed_without_harm() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "2"]).await;
    let js = async_nats::jetstream::new(nats.client().await);
    let mut rng = rng();
    const HEADERS: &[&str] = &[
        "Flotilla-Dead-Reason",
        "Flotilla-Dead-Kind",
        "Flotilla-Dead-Stream",
        "Flotilla-Dead-Sequence",
        "Flotilla-Dead-Subject",
        "Flotilla-Dead-Time",
        "Flotilla-Dead-Attempts",
        "Flotilla-Dead-Last-Status",
        "Flotilla-Call",
        "Flotilla-Version",
        "Nats-Msg-Id",
    ];
    let stored = 200;
    for i in 0..stored {
        let mut h = async_nats::HeaderMap::new();
        for _ in 0..rng.usize(0..6) {
            let value = header_text(&mut rng).replace(['\r', '\n'], "");
            h.insert(HEADERS[rng.usize(..HEADERS.len())], value.as_str());
        }
        let token = ["resize", "~invalid", "a.b", "x"][rng.usize(..4)];
        let body: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
        js.publish_with_headers(
            format!("{}.{token}", subjects::DEAD_SUBJECT_PREFIX),
            h,
            body.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap_or_else(|e| panic!("letter {i}: {e}"));
    }
    // Listed, page after page, to the end.
    let mut after = 0u64;
    let mut listed = 0;
    loop {
        let (status, page) = get(
            gw.addr,
            &format!("/system/dead-letters?limit=37&after={after}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page: serde_json::Value = serde_json::from_str(&page).unwrap();
        listed += page["dead_letters"].as_array().map_or(0, Vec::len);
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(listed, stored);
    // Replayed: each letter is replayed, skipped or failed with a reason; the gateway stays up.
    let req = Request::post("/system/dead-letters/replay")
        .header("host", gw.addr.to_string())
        .body(Full::new(Bytes::from_static(br#"{"all":true}"#)))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(gw.addr, "/readyz").await.0, StatusCode::OK);
}
