//! Signed callbacks against a real nats-server: with two secrets every callback carries two
//! Standard Webhooks signatures, each verified here by `openssl` (an HMAC-SHA256 the worker's
//! code has no part in); a function's own secrets file from the policy file replaces them.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Nats, Worker, envelope};
use flotilla_testsupport::{Recorded, RecordingServer};

const T: Duration = Duration::from_secs(30);

/// HMAC-SHA256 of `message` under `key`, base64, computed by openssl.
fn openssl_hmac(key: &[u8], message: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex}"),
            "-binary",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    BASE64.encode(out.stdout)
}

/// The signatures a receiver checks: `v1,<base64>` for each of `keys`, over `id.timestamp.body`.
fn expected(r: &Recorded, keys: &[&[u8]]) -> Vec<String> {
    let signed = [
        r.header("webhook-id").as_bytes(),
        b".",
        r.header("webhook-timestamp").as_bytes(),
        b".",
        &r.body,
    ]
    .concat();
    keys.iter()
        .map(|k| format!("v1,{}", openssl_hmac(k, &signed)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_carry_a_verifiable_signature_per_secret() {
    let (old, new, own) = (
        b"an old secret of 24 bytes or more".as_slice(),
        b"the new secret, 32 bytes or so!!".as_slice(),
        b"a function's very own signing key".as_slice(),
    );
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(
        &secrets,
        format!(
            "# rotating\nwhsec_{}\nwhsec_{}\n",
            BASE64.encode(old),
            BASE64.encode(new)
        ),
    )
    .unwrap();
    let own_secrets = dir.path().join("own");
    std::fs::write(&own_secrets, format!("whsec_{}\n", BASE64.encode(own))).unwrap();
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        format!(
            "[functions.mine]\ncallback_signing_secrets_file = \"{}\"\n",
            own_secrets.display()
        ),
    )
    .unwrap();

    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let sink = RecordingServer::answering(200).await;
    let cb = format!("{}/cb", sink.url());
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &function.url(),
            "--callback-signing-secrets-file",
            secrets.to_str().unwrap(),
            "--policies",
            policies.to_str().unwrap(),
        ],
    )
    .await;
    nats.publish(&envelope("shared", "call-shared", Some(&cb), "x"))
        .await;
    nats.publish(&envelope("mine", "call-mine", Some(&cb), "x"))
        .await;
    sink.wait_for(2, T).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for r in sink.requests() {
        let id = r.header("webhook-id");
        assert_eq!(id, r.header("x-call-id"));
        let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
        assert!(ts.abs_diff(now) < 60, "{ts} vs {now}");
        let keys: &[&[u8]] = if id == "call-mine" {
            &[own]
        } else {
            &[old, new]
        };
        let got: Vec<&str> = r.header("webhook-signature").split(' ').collect();
        assert_eq!(got, expected(&r, keys), "{id}");
    }
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_secrets_callbacks_are_unsigned_and_a_bad_secrets_file_is_a_configuration_error() {
    let nats = Nats::start(1).await;
    let function = RecordingServer::answering(200).await;
    let sink = RecordingServer::answering(200).await;
    let cb = format!("{}/cb", sink.url());
    let worker =
        Worker::start_ready(&nats.url(), &["--function-url-template", &function.url()]).await;
    nats.publish(&envelope("plain", "call-plain", Some(&cb), "x"))
        .await;
    sink.wait_for(1, T).await;
    assert_eq!(sink.requests()[0].header("webhook-signature"), "");
    worker.stop(T).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "whsec_c2VjcmV0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-worker"))
        .args(["--callback-signing-secrets-file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1: the secret is 6 bytes; at least 24 are needed")
            && !err.contains("c2VjcmV0"),
        "{err}"
    );
}
