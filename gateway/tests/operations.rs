//! The operator's side: health and metrics, `/system/info` behind basic auth (and its warnings
//! about streams made with other settings), the header-read timeout that frees connections from
//! slow clients, and a shutdown that lets the request in flight finish before `run` returns.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_testsupport::{NatsServer, Recorded, RecordingServer, Reply};
use harness::{Gateway, STEP, call, get};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn metrics_carry_the_openfaas_names_with_labels() {
    let nats = NatsServer::start();
    let function = RecordingServer::answering(200).await;
    let gw = Gateway::ready(
        &nats.url(),
        &["--shards", "1", "--function-url-template", &function.url()],
    )
    .await;
    let r = call(gw.addr, "POST", "/async-function/metered-async", &[], b"x").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = call(gw.addr, "GET", "/function/metered-sync", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(gw.addr, "POST", "/async-function/bad*name", &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = call(gw.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").starts_with("text/plain"));
    let text = r.text();
    let line = |name: &str, labels: &[&str]| {
        text.lines().any(|l| {
            l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)) && !l.starts_with('#')
        })
    };
    for (name, labels) in [
        (
            "gateway_function_invocation_total{",
            &["function_name=\"metered-async\"", "code=\"202\""][..],
        ),
        (
            "gateway_function_invocation_total{",
            &["function_name=\"metered-sync\"", "code=\"200\""],
        ),
        (
            "gateway_functions_seconds_bucket{",
            &["function_name=\"metered-sync\"", "code=\"200\""],
        ),
        (
            "gateway_functions_seconds_count{",
            &["function_name=\"metered-async\"", "code=\"202\""],
        ),
        ("gateway_enqueue_seconds_count", &[]),
        (
            "gateway_http_errors_total{",
            &["code=\"400\"", "reason=\"bad_name\""],
        ),
        ("gateway_nats_connected 1", &[]),
    ] {
        assert!(line(name, labels), "no {name} with {labels:?} in\n{text}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn system_info_is_behind_basic_auth_when_configured() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(
        &nats.url(),
        &[
            "--shards",
            "2",
            "--basic-auth-user",
            "admin",
            "--basic-auth-password",
            "secret",
        ],
    )
    .await;
    let r = call(gw.addr, "GET", "/system/info", &[], b"").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"flotilla\"");
    // admin:wrong
    let r = call(
        gw.addr,
        "GET",
        "/system/info",
        &[("authorization", "Basic YWRtaW46d3Jvbmc=")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Every /system path is protected, even unknown ones.
    let r = call(gw.addr, "GET", "/system/functions", &[], b"").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // admin:secret
    let auth = [("authorization", "Basic YWRtaW46c2VjcmV0")];
    let r = call(gw.addr, "GET", "/system/info", &auth, b"").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    let info: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(info["provider"]["provider"], "flotilla");
    assert_eq!(info["provider"]["orchestration"], "nats-jetstream");
    assert_eq!(info["version"]["release"], env!("CARGO_PKG_VERSION"));
    assert!(info["version"]["sha"].is_string());
    assert!(info["arch"].is_string());
    assert_eq!(info["shards"], 2);
    assert_eq!(
        info["streams"],
        serde_json::json!(["FLOTILLA_CALLS_0", "FLOTILLA_CALLS_1", "FLOTILLA_DEAD"])
    );
    let r = call(gw.addr, "GET", "/system/functions", &auth, b"").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Health and metrics stay open for probes and scrapers.
    assert_eq!(get(gw.addr, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(gw.addr, "/metrics").await.0, StatusCode::OK);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn system_info_is_open_without_credentials_and_get_only() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(&nats.url(), &[]).await;
    let (status, body) = get(gw.addr, "/system/info").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = call(gw.addr, "POST", "/healthz", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, HEAD");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn system_info_warns_of_streams_made_with_other_settings() {
    let nats = NatsServer::start();
    let info = |body: &str| -> serde_json::Value { serde_json::from_str(body).expect("JSON") };
    // The first gateway makes every stream, in memory.
    let first = Gateway::ready(&nats.url(), &["--shards", "1", "--memory-streams"]).await;
    let (_, body) = get(first.addr, "/system/info").await;
    assert_eq!(info(&body)["warnings"], serde_json::json!([]), "{body}");
    first.stop().await.unwrap();

    // The next is started for file storage: the streams keep theirs, and it says so.
    let gw = Gateway::ready(&nats.url(), &["--shards", "1"]).await;
    let (status, body) = get(gw.addr, "/system/info").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc = info(&body);
    let warnings: Vec<&str> = doc["warnings"]
        .as_array()
        .expect("a warnings array")
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    let calls = warnings
        .iter()
        .find(|w| w.contains("FLOTILLA_CALLS_0"))
        .unwrap_or_else(|| panic!("no warning for FLOTILLA_CALLS_0: {warnings:?}"));
    assert!(
        calls.contains("has replicas 1, memory storage")
            && calls.contains("ask for replicas 1, file storage"),
        "{calls}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("FLOTILLA_DEAD")),
        "{warnings:?}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url(), &["--header-read-timeout", "300ms"]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /async-function/slow HTTP/1.1\r\nhost: gw\r\nx-partial: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a 408 may precede the close
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was not disconnected");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );
    // The gateway still serves others.
    assert_eq!(get(gw.addr, "/healthz").await.0, StatusCode::OK);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_then_run_returns() {
    let nats = NatsServer::start();
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200)
            .body("finished")
            .delay(Duration::from_millis(700))
    }))
    .await;
    let mut gw = Gateway::start(&nats.url(), &["--function-url-template", &function.url()]).await;
    let addr = gw.addr;
    let in_flight =
        tokio::spawn(async move { call(addr, "POST", "/function/long", &[], b"x").await });
    function.wait_for(1, STEP).await;

    gw.trigger_shutdown();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "finished");
    gw.join().await.unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn readiness_names_why_the_topology_cannot_be_agreed() {
    // Replicated streams on a single server: NATS refuses them, and `/readyz` says so.
    let nats = NatsServer::start();
    let gw = Gateway::start(&nats.url(), &["--stream-replicas", "3"]).await;
    harness::eventually("readyz names NATS's refusal", || async {
        let (status, reason) = get(gw.addr, "/readyz").await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && reason.starts_with("topology not agreed yet: ")
            && reason.contains("replicas > 1 not supported in non-clustered mode")
    })
    .await;
}

#[tokio::test]
async fn after_shutdown_begins_readiness_fails_and_new_requests_are_served_for_the_drain_delay() {
    const DRAIN: Duration = Duration::from_secs(3);
    let nats = NatsServer::start();
    let function = RecordingServer::answering(200).await;
    let mut gw = Gateway::ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--drain-delay",
            "3s",
        ],
    )
    .await;
    let addr = gw.addr;
    let started = Instant::now();
    gw.trigger_shutdown();
    let (status, reason) = get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason, "shutting down\n");
    // A load balancer still sending well into the delay, on new connections, is served.
    tokio::time::sleep(DRAIN * 2 / 3).await;
    let late = call(addr, "POST", "/function/late", &[], b"x").await;
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(function.count(), 1);
    gw.join().await.unwrap();
    assert!(
        started.elapsed() >= DRAIN,
        "stopped after {:?}",
        started.elapsed()
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let nats = NatsServer::start();
    let function = RecordingServer::start(Arc::new(|_: &Recorded| {
        Reply::status(200).delay(Duration::from_secs(10))
    }))
    .await;
    let mut gw = Gateway::start(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--shutdown-grace",
            "300ms",
        ],
    )
    .await;
    let addr = gw.addr;
    let _stuck = tokio::spawn(async move { call(addr, "GET", "/function/stuck", &[], b"").await });
    function.wait_for(1, STEP).await;
    let started = Instant::now();
    gw.trigger_shutdown();
    gw.join().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "run outlived its grace period: {:?}",
        started.elapsed()
    );
}
