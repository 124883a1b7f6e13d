//! `https://` functions on the synchronous route, with certificates `openssl` makes for the test:
//! a function whose certificate a private CA signed (`--function-ca-file`) and one that asks for a
//! client certificate answer through the gateway; a certificate for another host and an expired
//! one are a 502 whose text says why, and the function never sees the request.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;

use flotilla_testsupport::{Certificates, NatsServer, Recorded, RecordingServer, Reply};
use harness::{Gateway, call};
use http::StatusCode;

/// A function that answers 200 with the request's path and body.
async fn echo_over_tls(certs: &Certificates, name: &str, client_auth: bool) -> RecordingServer {
    RecordingServer::start_tls(
        Arc::new(|r: &Recorded| {
            Reply::status(200).body(format!("{} {}", r.path, String::from_utf8_lossy(&r.body)))
        }),
        certs.server_config(name, client_auth),
    )
    .await
}

#[tokio::test]
async fn https_functions_answer_and_a_refused_certificate_is_a_502_that_says_why() {
    let nats = NatsServer::start();
    let certs = Certificates::make();
    let good = echo_over_tls(&certs, "function", false).await;
    let mutual = echo_over_tls(&certs, "function", true).await;
    let misnamed = echo_over_tls(&certs, "other-host", false).await;
    let expired = echo_over_tls(&certs, "expired", false).await;
    let policy = certs.path("policies.toml");
    let text: String = [
        ("good", &good),
        ("mutual", &mutual),
        ("misnamed", &misnamed),
        ("expired", &expired),
    ]
    .iter()
    .map(|(f, s)| format!("[functions.{f}]\nurl = \"{}\"\n", s.url()))
    .collect();
    std::fs::write(&policy, text).unwrap();
    let policy = policy.display().to_string();
    let flags = certs.function_flags(true);
    let mut args = vec!["--policies", &policy];
    args.extend(flags.iter().map(String::as_str));
    let gw = Gateway::start(&nats.url(), &args).await;

    for function in ["good", "mutual"] {
        let r = call(
            gw.addr,
            "POST",
            &format!("/function/{function}/a?x=1"),
            &[],
            b"ping",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{function}: {}", r.text());
        assert_eq!(r.text(), "/a ping");
    }
    // A second call reuses the pooled TLS connection.
    let r = call(gw.addr, "POST", "/function/good", &[], b"again").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "/ again".to_owned()));
    assert_eq!((good.count(), mutual.count()), (2, 1));

    let r = call(gw.addr, "POST", "/function/misnamed", &[], b"x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().contains("misnamed is unreachable over TLS")
            && r.text().contains("certificate not valid for name"),
        "{}",
        r.text()
    );
    assert!(!r.header("x-call-id").is_empty());
    let r = call(gw.addr, "POST", "/function/expired", &[], b"x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().contains("expired is unreachable over TLS")
            && r.text().contains("certificate expired"),
        "{}",
        r.text()
    );
    assert_eq!(misnamed.count() + expired.count(), 0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_ca_a_private_certificate_is_refused() {
    let nats = NatsServer::start();
    let certs = Certificates::make();
    let function = echo_over_tls(&certs, "function", false).await;
    let template = function.url();
    let gw = Gateway::start(&nats.url(), &["--function-url-template", &template]).await;
    let r = call(gw.addr, "GET", "/function/private", &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().contains("unreachable over TLS") && r.text().contains("certificate"),
        "{}",
        r.text()
    );
    assert_eq!(function.count(), 0);
    gw.stop().await.unwrap();
}
