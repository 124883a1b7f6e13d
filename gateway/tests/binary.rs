//! The `flotilla-gateway` binary as an operator runs it: bad configuration exits 64 with one
//! line, a shard-count mismatch exits 64, SIGTERM drains and exits 0.

#[path = "support/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_testsupport::NatsServer;
use harness::{Gateway, closed_port, eventually, get};
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla-gateway");

fn exit_of(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["--shards", "0"],
        &["--basic-auth-user", "admin"],
        &["--sync-timeout", "soon"],
        &["--function-url-template", "ftp://{name}"],
    ] {
        let (code, stderr) = exit_of(args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("configuration error: "), "{stderr}");
    }
}

#[tokio::test]
async fn a_shard_mismatch_exits_64_and_sigterm_exits_0() {
    let nats = NatsServer::start();
    let first = Gateway::ready(&nats.url(), &["--shards", "3"]).await;
    let url = nats.url();

    let mismatch = tokio::task::spawn_blocking(move || {
        let listen = format!("127.0.0.1:{}", closed_port());
        exit_of(&["--nats-url", &url, "--shards", "5", "--listen", &listen])
    });
    let (code, stderr) = tokio::time::timeout(Duration::from_secs(20), mismatch)
        .await
        .expect("exited in time")
        .unwrap();
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--shards 3"), "{stderr}");

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
