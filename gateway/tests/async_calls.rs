//! The asynchronous path against a real nats-server: 202 only with the call stored in the right
//! shard stream, the envelope as the worker will read it, de-duplication by `X-Call-Id` and
//! `Idempotency-Key`, and every refusal (400, 405, 404, 413, 503).

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::{ShardMap, subjects};
use flotilla_testsupport::NatsServer;
use harness::{Gateway, call, envelopes, eventually, get, send, stream_len};
use http::{Request, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn accepted_call_is_stored_in_its_shard_as_the_worker_reads_it() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "4"]).await;

    let r = call(
        gw.addr,
        "POST",
        "/async-function/echo.ns/a/b?x=1&y=2",
        &[
            ("content-type", "text/plain"),
            ("x-custom", "kept"),
            ("x-callback-url", "https://cb.example:8443/done?k=v"),
            ("nats-msg-id", "forged"),
        ],
        b"hello",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert!(r.body.is_empty());
    let call_id = r.header("x-call-id").to_owned();
    assert!(uuid::Uuid::parse_str(&call_id).is_ok(), "{call_id:?}");

    let client = nats.client().await;
    let shard = ShardMap::new(4).shard_of("echo.ns");
    for k in 0..4 {
        let want = u64::from(k == shard);
        assert_eq!(
            stream_len(&client, &subjects::call_stream(k)).await,
            want,
            "shard {k}"
        );
    }
    let got = envelopes(&client, &subjects::call_stream(shard)).await;
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.call_id, call_id);
    assert_eq!(e.function.as_str(), "echo.ns");
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, "/a/b");
    assert_eq!(e.query, "x=1&y=2");
    assert_eq!(
        e.callback_url.as_deref(),
        Some("https://cb.example:8443/done?k=v")
    );
    assert_eq!(e.body, Bytes::from_static(b"hello"));
    assert_eq!(e.attempt, 0);
    let now = flotilla_queue::time::unix_nanos();
    assert!(e.start_time <= now && now - e.start_time < 60_000_000_000);
    let header = |n: &str| {
        e.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("content-type"), ["text/plain"]);
    assert_eq!(header("x-custom"), ["kept"]);
    for absent in ["host", "content-length", "x-callback-url", "nats-msg-id"] {
        assert!(header(absent).is_empty(), "{absent} was forwarded");
    }

    // Every accepted method travels as itself; an empty path suffix stays empty.
    for method in ["GET", "PUT", "PATCH", "DELETE"] {
        let r = call(gw.addr, method, "/async-function/echo.ns", &[], b"").await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{method}");
    }
    let got = envelopes(&client, &subjects::call_stream(shard)).await;
    let methods: Vec<&str> = got.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(methods, ["POST", "GET", "PUT", "PATCH", "DELETE"]);
    assert!(
        got[1..]
            .iter()
            .all(|e| e.path.is_empty() && e.query.is_empty())
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn client_call_id_is_kept_echoed_and_enqueues_once() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    for _ in 0..2 {
        let r = call(
            gw.addr,
            "POST",
            "/async-function/dedup",
            &[("x-call-id", "order-42")],
            b"once",
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert_eq!(r.header("x-call-id"), "order-42");
    }
    let client = nats.client().await;
    let got = envelopes(&client, &subjects::call_stream(0)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call_id, "order-42");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn idempotency_key_enqueues_once_with_one_call_id() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let post = |f: &'static str| {
        let addr = gw.addr;
        async move { call(addr, "POST", f, &[("idempotency-key", "pay-7")], b"charge").await }
    };
    let first = post("/async-function/pay").await;
    let second = post("/async-function/pay").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    let id = first.header("x-call-id");
    assert!(!id.is_empty());
    assert_eq!(second.header("x-call-id"), id);

    // The key is scoped by function: another function with the same key is another call.
    let other = post("/async-function/refund").await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    assert_ne!(other.header("x-call-id"), id);

    let client = nats.client().await;
    let got = envelopes(&client, &subjects::call_stream(0)).await;
    let ids: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.function.as_str(), e.call_id.as_str()))
        .collect();
    assert_eq!(ids, [("pay", id), ("refund", other.header("x-call-id"))]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_are_refused_with_the_reason() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let a = gw.addr;

    for (path, why) in [
        ("/async-function/a.b.c", "may only hold"),
        ("/async-function/bad*name", "may only hold"),
        ("/async-function/", "empty"),
    ] {
        let r = call(a, "POST", path, &[], b"").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(r.text().contains(why), "{path}: {}", r.text());
    }
    for url in ["ftp://cb.example/x", "/relative", "not a url", "http://"] {
        let r = call(
            a,
            "POST",
            "/async-function/f",
            &[("x-callback-url", url)],
            b"",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}");
        assert!(r.text().contains("X-Callback-Url"), "{url}: {}", r.text());
    }
    let long = "k".repeat(200);
    let r = call(
        a,
        "POST",
        "/async-function/f",
        &[("idempotency-key", &long)],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("Idempotency-Key"), "{}", r.text());

    for priority in ["urgent", "", "high,low"] {
        let r = call(
            a,
            "POST",
            "/async-function/f",
            &[("x-priority", priority)],
            b"",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{priority:?}");
        assert!(
            r.text()
                .contains("X-Priority must be one of high, normal or low"),
            "{priority:?}: {}",
            r.text()
        );
    }

    let r = call(a, "OPTIONS", "/async-function/f", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, POST, PUT, PATCH, DELETE");

    for path in ["/nope", "/async-function", "/functions/x", "/"] {
        assert_eq!(get(a, path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let client = nats.client().await;
    assert_eq!(stream_len(&client, &subjects::call_stream(0)).await, 0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1", "--max-body-bytes", "1000"]).await;

    // A declared length over the limit is refused before any body byte is sent.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /async-function/big HTTP/1.1\r\nhost: gw\r\ncontent-length: 2000\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("413 without waiting for the body");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A chunked body is cut off once it passes the limit.
    let chunks = (0..3).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; 700]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post("/async-function/big")
        .header("host", "gw")
        .body(body)
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(r.text().contains("1000"), "{}", r.text());

    // At the limit is fine.
    let r = call(gw.addr, "POST", "/async-function/big", &[], &[b'y'; 1000]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let client = nats.client().await;
    assert_eq!(stream_len(&client, &subjects::call_stream(0)).await, 1);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn nats_down_is_503_with_retry_after_and_recovers() {
    let mut nats = NatsServer::start();
    let mut gw = Gateway::ready(
        &nats.url(),
        &["--shards", "1", "--retry-after-seconds", "3"],
    )
    .await;
    nats.kill();

    eventually("503 while NATS is down", || async {
        let r = call(gw.addr, "POST", "/async-function/f", &[], b"x").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.header("retry-after"), "3");
            assert!(!r.text().is_empty());
            true
        } else {
            false
        }
    })
    .await;
    let started = std::time::Instant::now();
    let r = call(gw.addr, "POST", "/async-function/f", &[], b"x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a down NATS must answer at once, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        get(gw.addr, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    nats.resume();
    gw.wait_ready().await;
    let r = call(gw.addr, "POST", "/async-function/f", &[], b"x").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn before_nats_is_reachable_async_calls_are_503_and_readyz_fails() {
    let mut nats = NatsServer::start();
    nats.kill();
    let mut gw = Gateway::start(&nats.url(), &["--shards", "2"]).await;

    let (status, reason) = get(gw.addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason.contains("NATS"), "{reason}");
    let r = call(gw.addr, "POST", "/async-function/early", &[], b"x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.header("retry-after").is_empty());
    assert_eq!(get(gw.addr, "/healthz").await.0, StatusCode::OK);

    nats.resume();
    gw.wait_ready().await;
    let r = call(gw.addr, "POST", "/async-function/early", &[], b"x").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_shard_count_mismatch_stops_the_gateway_as_a_config_error() {
    let nats = NatsServer::start();
    let first = Gateway::ready(&nats.url(), &["--shards", "3"]).await;
    let mut second = Gateway::start(&nats.url(), &["--shards", "5"]).await;
    let err = second.join().await.unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("--shards 3"), "{err}");
    // Adopting the stored count works.
    let third = Gateway::ready(&nats.url(), &[]).await;
    third.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test]
async fn a_deleted_stream_is_503_then_recreated() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    js.delete_stream(subjects::call_stream(0)).await.unwrap();

    let r = call(gw.addr, "POST", "/async-function/f", &[], b"x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.header("retry-after").is_empty());
    assert!(r.text().contains("FLOTILLA_CALLS_0"), "{}", r.text());

    eventually("the stream re-created and calls accepted", || async {
        call(gw.addr, "POST", "/async-function/f", &[], b"x")
            .await
            .status
            == StatusCode::ACCEPTED
    })
    .await;
    assert_eq!(get(gw.addr, "/readyz").await.0, StatusCode::OK);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_over_one_nats_message_goes_through_the_object_store() {
    let nats = NatsServer::start();
    // 10 MiB allowed; nats-server's max_payload is 1 MiB, of which 16 KiB is left for headers.
    let gw = Gateway::ready(
        &nats.url(),
        &["--shards", "1", "--max-body-bytes", "10485760"],
    )
    .await;
    let cap = 1024 * 1024 - 16 * 1024;
    let over: &'static [u8] = Box::leak(vec![b'z'; cap + 1].into_boxed_slice());
    let r = call(gw.addr, "POST", "/async-function/big", &[], over).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let client = nats.client().await;
    let stored = envelopes(&client, &subjects::call_stream(0)).await;
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].body.is_empty(),
        "the body travelled in the message"
    );
    let object = stored[0]
        .body_object
        .clone()
        .expect("the call names its body");
    let bucket = async_nats::jetstream::new(client.clone())
        .get_object_store(flotilla_queue::topology::BODY_BUCKET)
        .await
        .unwrap();
    assert_eq!(bucket.info(&object).await.unwrap().size, cap + 1);

    // Past --max-body-bytes: 413, nothing stored.
    let huge: &'static [u8] = Box::leak(vec![b'z'; 10 * 1024 * 1024 + 1].into_boxed_slice());
    let r = call(gw.addr, "POST", "/async-function/big", &[], huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().contains("10485760"), "{}", r.text());
    assert_eq!(stream_len(&client, &subjects::call_stream(0)).await, 1);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_whose_headers_overflow_the_message_is_413() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let cap = 1024 * 1024 - 16 * 1024;
    // A body under the cap whose headers push the message past max_payload is refused by the
    // publish's own size check, also with 413.
    let body: &'static [u8] = Box::leak(vec![b'z'; cap].into_boxed_slice());
    let big = "h".repeat(8 * 1024);
    let headers: Vec<(String, String)> = (0..3)
        .map(|i| (format!("x-big-{i}"), big.clone()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = call(gw.addr, "POST", "/async-function/big", &headers, body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(r.text().contains("max_payload"), "{}", r.text());

    let client = nats.client().await;
    assert_eq!(stream_len(&client, &subjects::call_stream(0)).await, 0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn headers_jetstream_cannot_store_are_431_and_nothing_is_enqueued() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let big = "x".repeat(70 * 1024);
    let r = call(
        gw.addr,
        "POST",
        "/async-function/heavy",
        &[("x-big", big.as_str())],
        b"x",
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(r.header("retry-after").is_empty(), "retrying cannot help");
    assert!(
        r.text().starts_with("request headers take ") && r.text().contains("at most 65535 fit"),
        "{}",
        r.text()
    );
    let client = nats.client().await;
    assert_eq!(stream_len(&client, &subjects::call_stream(0)).await, 0);
    // Headers that fit are taken.
    let fits = "x".repeat(60 * 1024);
    let r = call(
        gw.addr,
        "POST",
        "/async-function/heavy",
        &[("x-big", fits.as_str())],
        b"x",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_callback_policy_refuses_targets_at_the_gateway_with_the_reason() {
    let nats = NatsServer::start();
    let open = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let r = call(
        open.addr,
        "POST",
        "/async-function/f",
        &[("x-callback-url", "http://169.254.169.254/latest/meta-data/")],
        b"x",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .starts_with("X-Callback-Url refused: 169.254.169.254 is a link-local address"),
        "{}",
        r.text()
    );
    let only_1 = Gateway::ready(
        &nats.url(),
        &["--shards", "1", "--callback-allow", "127.0.0.1"],
    )
    .await;
    for (url, status) in [
        ("http://127.0.0.2:9/cb", StatusCode::BAD_REQUEST),
        ("http://127.0.0.1:9/cb", StatusCode::ACCEPTED),
    ] {
        let r = call(
            only_1.addr,
            "POST",
            "/async-function/f",
            &[("x-callback-url", url)],
            b"x",
        )
        .await;
        assert_eq!(r.status, status, "{url}: {}", r.text());
    }
    let only_2 = Gateway::ready(
        &nats.url(),
        &["--shards", "1", "--callback-allow", "127.0.0.2"],
    )
    .await;
    let r = call(
        only_2.addr,
        "POST",
        "/async-function/f",
        &[("x-callback-url", "http://localhost:9/cb")],
        b"x",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .contains("localhost (127.0.0.1) is not in --callback-allow")
            || r.text().contains("localhost (::1)"),
        "{}",
        r.text()
    );
    // Only the accepted call was enqueued.
    let client = nats.client().await;
    assert_eq!(stream_len(&client, &subjects::call_stream(0)).await, 1);
}
