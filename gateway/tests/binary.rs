//! The `flotilla-gateway` binary as an operator runs it: bad configuration (a malformed
//! `--nats-url` included) exits 64 with one line, an unreachable NATS is waited out, `--help` and
//! `--version` exit 0, a shard-count mismatch exits 64 (its log lines without
//! colour, stderr being no terminal), SIGTERM drains and exits 0.

#[path = "support/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_testsupport::{
    NatsServer, assert_help_and_version, assert_refused, closed_port, run_binary,
};
use harness::{Gateway, eventually, get};
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla-gateway");

#[test]
fn bad_configuration_exits_64_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["--shards", "0"],
        &["--basic-auth-user", "admin"],
        &["--sync-timeout", "soon"],
        &["--max-body-bytes", "lots"],
        &["--function-url-template", "ftp://{name}"],
        &["--log", "flotilla=loud"],
        &["--nats-url", "nats://127.0.0.1:42x22"],
        &["--nats-url", "http://127.0.0.1:4222"],
        &["--nats-url", ""],
    ] {
        assert_refused(BIN, args);
    }
    let line = assert_refused(BIN, &["--nats-url", "nats://gw:s3cret@127.0.0.1:42x22"]);
    assert!(line.contains("--nats-url nats://127.0.0.1:42x22"), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
    let line = assert_refused(BIN, &["--sync-timeout", "1m30"]);
    assert!(line.contains("30 has no unit"), "{line}");
    let line = assert_refused(BIN, &["--sync-timeout", "-1s"]);
    assert!(line.contains("a duration cannot be negative"), "{line}");
    let line = assert_refused(BIN, &["--log-format", "xml"]);
    assert!(line.contains("(possible values: console, json)"), "{line}");
    let line = assert_refused(BIN, &["--sync-timout", "5s"]);
    assert!(line.contains("did you mean '--sync-timeout'?"), "{line}");
}

/// A `--nats-url` the NATS client cannot parse is the operator's to fix: exit 64 with one line
/// that names the flag and the URL, as the worker does.
#[test]
fn a_malformed_nats_url_exits_64_naming_it() {
    let line = assert_refused(BIN, &["--nats-url", "nats://exa mple:4222"]);
    assert!(
        line.starts_with("configuration error: --nats-url nats://exa mple:4222: "),
        "{line}"
    );
    assert!(line.contains("invalid"), "{line}");
    let line = assert_refused(BIN, &["--nats-url", ""]);
    assert_eq!(line, "configuration error: --nats-url names no server");
    let line = assert_refused(BIN, &["--nats-url", "nats://127.0.0.1:4222,nats://[::1"]);
    assert!(
        line.starts_with("configuration error: --nats-url nats://[::1: "),
        "{line}"
    );
}

#[tokio::test]
async fn an_unreachable_nats_is_one_line_naming_its_url() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let url = format!("nats://127.0.0.1:{}", closed_port());
    let listen = format!("127.0.0.1:{}", closed_port());
    let mut child = tokio::process::Command::new(BIN)
        .args(["--nats-url", &url, "--listen", &listen, "--log", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the gateway");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut before = Vec::new();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("NATS connection error") {
                return line;
            }
            before.push(line);
        }
        panic!("stderr ended: {before:?}");
    })
    .await
    .expect("a connection error logged in time");
    assert!(line.contains(&format!("nats_url={url}")), "{line}");
    // The client library's own line for the same event ("event: ...") is not there.
    assert!(!before.iter().any(|l| l.contains("event:")), "{before:?}");
    // An outage at start is waited out: the gateway serves, not ready, and keeps trying.
    let addr = listen.parse().unwrap();
    eventually("the gateway answering while NATS is away", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(addr, "/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(child.try_wait().expect("wait").is_none(), "exited");
    child.kill().await.expect("kill the gateway");
}

#[test]
fn help_and_version_exit_0() {
    assert_help_and_version(BIN, "flotilla-gateway");
}

#[tokio::test]
async fn a_shard_mismatch_exits_64_and_sigterm_exits_0() {
    let nats = NatsServer::start();
    let first = Gateway::ready(&nats.url(), &["--shards", "3"]).await;
    let url = nats.url();

    let mismatch = tokio::task::spawn_blocking(move || {
        let listen = format!("127.0.0.1:{}", closed_port());
        run_binary(
            BIN,
            &["--nats-url", &url, "--shards", "5", "--listen", &listen],
        )
    });
    let out = tokio::time::timeout(Duration::from_secs(20), mismatch)
        .await
        .expect("exited in time")
        .unwrap();
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("--shards 3"), "{}", out.stderr);
    // Log lines came first; stderr is a pipe here, so they carry no colour.
    assert!(out.stderr.contains("topology disagrees"), "{}", out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ANSI escapes: {:?}",
        out.stderr
    );

    let port = closed_port();
    let mut child = Command::new(BIN)
        .args([
            "--nats-url",
            &nats.url(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the gateway");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the binary ready", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(addr, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().expect("wait"));
    let code = tokio::time::timeout(Duration::from_secs(20), code)
        .await
        .expect("exited after SIGTERM")
        .unwrap();
    assert_eq!(code.code(), Some(0));
    first.stop().await.unwrap();
}
