//! The synchronous path: the function's status, headers and body come back, the request reaches
//! it with method, path suffix, query, headers and body intact, and a dead or slow function is
//! reported as 502 or 504 with a short text body.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use flotilla_queue::subjects;
use flotilla_testsupport::{NatsServer, Recorded, RecordingServer, Reply, closed_port};
use harness::{Gateway, call};
use http::StatusCode;

#[tokio::test]
async fn the_functions_answer_comes_back_and_the_request_arrives_intact() {
    let nats = NatsServer::start();
    let function = RecordingServer::start(Arc::new(|r: &Recorded| {
        Reply::status(201)
            .header("x-fn", "yes")
            .header("content-type", "application/json")
            .body(format!(
                "{{\"got\":\"{}\"}}",
                String::from_utf8_lossy(&r.body)
            ))
    }))
    .await;
    let template = function.url();
    let gw = Gateway::start(&nats.url(), &["--function-url-template", &template]).await;

    let r = call(
        gw.addr,
        "PUT",
        "/function/echo/a/b?x=1&y=2",
        &[
            ("content-type", "text/plain"),
            ("x-custom", "kept"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "hop"),
        ],
        b"ping",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.text(), "{\"got\":\"ping\"}");
    assert_eq!(r.header("x-fn"), "yes");
    assert_eq!(r.header("content-type"), "application/json");
    let call_id = r.header("x-call-id").to_owned();
    assert!(uuid::Uuid::parse_str(&call_id).is_ok(), "{call_id:?}");
    let secs: f64 = r.header("x-duration-seconds").parse().unwrap();
    assert!((0.0..15.0).contains(&secs), "{secs}");

    let got = function.requests();
    assert_eq!(got.len(), 1);
    let seen = &got[0];
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.path, "/a/b");
    assert_eq!(seen.query.as_deref(), Some("x=1&y=2"));
    assert_eq!(&seen.body[..], b"ping");
    assert_eq!(seen.header("content-type"), "text/plain");
    assert_eq!(seen.header("x-custom"), "kept");
    assert_eq!(
        seen.header("x-private"),
        "",
        "a Connection-named header was forwarded"
    );
    assert_eq!(seen.header("x-call-id"), call_id);
    let start: u128 = seen.header("x-start-time").parse().unwrap();
    assert!(start > 0);

    // A client's own call id is kept; no path suffix reaches the function as '/'.
    let r = call(
        gw.addr,
        "GET",
        "/function/echo",
        &[("x-call-id", "mine-1")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("x-call-id"), "mine-1");
    let got = function.requests();
    assert_eq!(got[1].header("x-call-id"), "mine-1");
    assert_eq!(got[1].method, "GET");
    assert_eq!(got[1].path, "/");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_function_error_status_is_passed_through() {
    let nats = NatsServer::start();
    let function =
        RecordingServer::start(Arc::new(|_: &Recorded| Reply::status(500).body("boom"))).await;
    let gw = Gateway::start(&nats.url(), &["--function-url-template", &function.url()]).await;
    let r = call(gw.addr, "POST", "/function/fails", &[], b"").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.text(), "boom");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_function_is_502() {
    let nats = NatsServer::start();
    let template = format!("http://127.0.0.1:{}", closed_port());
    let gw = Gateway::start(&nats.url(), &["--function-url-template", &template]).await;
    let r = call(gw.addr, "POST", "/function/gone", &[], b"x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("gone is unreachable"), "{}", r.text());
    assert!(!r.header("x-call-id").is_empty());
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_function_is_504() {
    let nats = NatsServer::start();
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_secs(5))
    }))
    .await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--sync-timeout",
            "300ms",
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let r = call(gw.addr, "GET", "/function/slow", &[], b"").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("timed out"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_name_is_400_before_anything_is_called() {
    let nats = NatsServer::start();
    let function = RecordingServer::answering(200).await;
    let gw = Gateway::start(&nats.url(), &["--function-url-template", &function.url()]).await;
    for path in ["/function/a.b.c", "/function/", "/function/%2e%2e"] {
        let r = call(gw.addr, "GET", path, &[], b"").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(function.count(), 0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn with_known_functions_only_an_unnamed_function_is_404_on_both_routes_and_nothing_is_enqueued()
 {
    let nats = NatsServer::start();
    let function = RecordingServer::answering(200).await;
    let dir = std::env::temp_dir().join(format!("flotilla-known-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policies = dir.join("policies.toml");
    std::fs::write(&policies, "[functions.resize]\n[functions.\"img-*\"]\n").unwrap();
    let template = format!("{}/{{name}}", function.url());
    let gw = Gateway::ready(
        &nats.url(),
        &[
            "--shards",
            "1",
            "--function-url-template",
            &template,
            "--policies",
            policies.to_str().unwrap(),
            "--known-functions-only",
        ],
    )
    .await;
    for path in ["/async-function/nope", "/function/nope"] {
        let r = call(gw.addr, "POST", path, &[], b"x").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.text().trim_end(), "function nope not found", "{path}");
    }
    let client = nats.client().await;
    assert_eq!(
        harness::stream_len(&client, &subjects::call_stream(0)).await,
        0
    );
    assert_eq!(function.count(), 0);
    // Named exactly or by a pattern: served.
    for path in ["/async-function/img-crop", "/async-function/resize"] {
        assert_eq!(
            call(gw.addr, "POST", path, &[], b"x").await.status,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        call(gw.addr, "POST", "/function/resize", &[], b"x")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        harness::stream_len(&client, &subjects::call_stream(0)).await,
        2
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_malformed_chunked_body_on_the_sync_route_is_the_clients_fault() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start();
    let function = RecordingServer::echo().await;
    let gw = Gateway::start(&nats.url(), &["--function-url-template", &function.url()]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // A first chunk, then a chunk size that is not hexadecimal.
    tcp.write_all(
        b"POST /function/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nnope\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer, then the connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("request body could not be read"),
        "{answer}"
    );
}
