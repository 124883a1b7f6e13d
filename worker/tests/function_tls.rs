//! `https://` functions, with certificates `openssl` makes for the test: the worker calls a
//! function whose certificate a private CA signed (`--function-ca-file`) and one that asks for a
//! client certificate (`--function-cert-file`, `--function-key-file`); a certificate for another
//! host and an expired one end the call with a 502 whose dead letter says why, and the function
//! never sees the request.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Nats, Worker, dead_letters, envelope};
use flotilla_queue::dead_letter as dl;
use flotilla_testsupport::{Certificates, Recorded, RecordingServer, Reply};

const T: Duration = Duration::from_secs(30);

/// A function that answers 200 with the request's body.
async fn echo_over_tls(certs: &Certificates, name: &str, client_auth: bool) -> RecordingServer {
    RecordingServer::start_tls(
        Arc::new(|r: &Recorded| Reply::status(200).body(r.body.clone())),
        certs.server_config(name, client_auth),
    )
    .await
}

/// A policy file naming each function's URL, in `dir`.
fn policies(dir: &std::path::Path, urls: &[(&str, String)]) -> String {
    let text: String = urls
        .iter()
        .map(|(f, url)| format!("[functions.{f}]\nurl = \"{url}\"\n"))
        .collect();
    let path = dir.join("policies.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_behind_a_private_ca_are_called_over_https_with_and_without_mutual_tls() {
    let nats = Nats::start(1).await;
    let certs = Certificates::make();
    let plain = echo_over_tls(&certs, "function", false).await;
    let mutual = echo_over_tls(&certs, "function", true).await;
    assert!(plain.url().starts_with("https://127.0.0.1:"));
    let sink = RecordingServer::answering(200).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policies(
        dir.path(),
        &[("secure", plain.url()), ("mutual", mutual.url())],
    );
    let flags = certs.function_flags(true);
    let mut args = vec!["--policies", &policy];
    args.extend(flags.iter().map(String::as_str));
    let worker = Worker::start_ready(&nats.url(), &args).await;

    let cb = format!("{}/cb", sink.url());
    for (function, id) in [
        ("secure", "tls-1"),
        ("mutual", "tls-2"),
        ("secure", "tls-3"),
    ] {
        nats.publish(&envelope(function, id, Some(&cb), id)).await;
    }
    sink.wait_for(3, T).await;
    for c in sink.requests() {
        assert_eq!(c.header("x-function-status"), "200", "{c:?}");
        assert_eq!(&c.body[..], c.header("x-call-id").as_bytes());
    }
    assert_eq!(plain.count(), 2);
    assert_eq!(mutual.count(), 1);
    assert_eq!(plain.handshake_failures() + mutual.handshake_failures(), 0);
    // Calls run concurrently: which server saw which, in any order.
    let ids = |server: &RecordingServer| {
        let mut ids: Vec<String> = server
            .requests()
            .iter()
            .map(|r| r.header("x-call-id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&plain), ["tls-1", "tls-3"]);
    assert_eq!(ids(&mutual), ["tls-2"]);
    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_or_expired_ends_in_a_502_whose_dead_letter_says_why() {
    let nats = Nats::start(1).await;
    let certs = Certificates::make();
    let misnamed = echo_over_tls(&certs, "other-host", false).await;
    let expired = echo_over_tls(&certs, "expired", false).await;
    // Trusts the CA, but has no client certificate for a function that asks for one.
    let mutual = echo_over_tls(&certs, "function", true).await;
    let sink = RecordingServer::answering(200).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policies(
        dir.path(),
        &[
            ("misnamed", misnamed.url()),
            ("expired", expired.url()),
            ("mutual", mutual.url()),
        ],
    );
    let flags = certs.function_flags(false);
    // One attempt: the first failure is the dead letter.
    let mut args = vec!["--policies", &policy, "--retry-attempts", "1"];
    args.extend(flags.iter().map(String::as_str));
    let worker = Worker::start_ready(&nats.url(), &args).await;

    let cb = format!("{}/cb", sink.url());
    for function in ["misnamed", "expired", "mutual"] {
        nats.publish(&envelope(function, function, Some(&cb), "x"))
            .await;
    }
    sink.wait_for(3, T).await;
    for c in sink.requests() {
        assert_eq!(c.header("x-function-status"), "502", "{c:?}");
    }

    let reasons: HashMap<String, String> = dead_letters(&nats, 3)
        .await
        .into_iter()
        .map(|(subject, headers, _)| {
            let reason = headers.get(dl::H_REASON).map_or("", |v| v.as_str());
            (subject, reason.to_owned())
        })
        .collect();
    let reason = |f: &str| reasons[&format!("flotilla.dead.{f}")].clone();
    let misnamed_reason = reason("misnamed");
    assert!(
        misnamed_reason.contains("TLS handshake")
            && misnamed_reason.contains("certificate not valid for name"),
        "{misnamed_reason}"
    );
    let expired_reason = reason("expired");
    assert!(
        expired_reason.contains("TLS handshake") && expired_reason.contains("certificate expired"),
        "{expired_reason}"
    );
    // The function refused the handshake for want of a client certificate. Under TLS 1.3 the
    // client learns it only after its side of the handshake ended, from the function's alert
    // (or the reset behind it) while reading the answer.
    let mutual_reason = reason("mutual");
    assert!(
        mutual_reason.contains("function unreachable"),
        "{mutual_reason}"
    );
    // No request reached a function whose certificate was refused.
    assert_eq!(misnamed.count() + expired.count() + mutual.count(), 0);
    flotilla_testsupport::wait_until(T, "the functions saw the handshakes fail", || {
        misnamed.handshake_failures() >= 1 && expired.handshake_failures() >= 1
    })
    .await;
    nats.wait_settled(T).await;
    worker.stop(T).await.unwrap();
}
