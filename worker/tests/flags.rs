//! The `flotilla-worker` binary's process edge: an unknown flag, an unparsable value or a value
//! the worker refuses is one line on stderr and exit 64; an unreachable NATS is waited out, not
//! an exit; `--help` and `--version` exit 0.

mod common;

use std::process::Stdio;
use std::time::Duration;

use flotilla_testsupport::{assert_help_and_version, assert_refused, closed_port};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla-worker");

#[test]
fn bad_configuration_exits_64_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["--ack-wait", "soon"],
        &["--concurrency", "many"],
        &["--shards", "0"],
        &["--ack-wait", "10ms"],
        &["--function-url-template", "ftp://{name}"],
        &["--log", "flotilla=loud"],
        &["--nats-url", "nats://127.0.0.1:42x22"],
        &["--nats-url", "http://127.0.0.1:4222"],
        &["--nats-url", ""],
    ] {
        assert_refused(BIN, args);
    }
    let line = assert_refused(BIN, &["--nats-url", "nats://127.0.0.1:42x22"]);
    assert!(line.contains("--nats-url nats://127.0.0.1:42x22"), "{line}");
    let line = assert_refused(BIN, &["--timeout", "3 days"]);
    assert!(line.contains("unknown unit"), "{line}");
    let line = assert_refused(BIN, &["--grace", "-1s"]);
    assert!(line.contains("a duration cannot be negative"), "{line}");
    let line = assert_refused(BIN, &["--log-format", "xml"]);
    assert!(line.contains("(possible values: console, json)"), "{line}");
    let line = assert_refused(BIN, &["--concurency", "5"]);
    assert!(line.contains("did you mean '--concurrency'?"), "{line}");
}

#[test]
fn help_and_version_exit_0() {
    assert_help_and_version(BIN, "flotilla-worker");
}

#[tokio::test]
async fn an_unreachable_nats_is_waited_out_not_an_exit() {
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["--nats-url", &url, "--listen", &admin.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the worker");
    flotilla_testsupport::wait_until_async(
        Duration::from_secs(20),
        "/readyz saying why",
        || async {
            let (status, body) = common::get(admin, "/readyz").await;
            status == 503 && body.contains("NATS disconnected")
        },
    )
    .await;
    assert_eq!(
        common::get(admin, "/healthz").await.0,
        200,
        "alive while NATS is away"
    );
    // Every series is described from the start, NATS or not.
    let (status, scrape) = common::get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        scrape.contains("# HELP worker_handed_back_total "),
        "{scrape}"
    );
    assert!(scrape.contains("worker_nats_connected 0"), "{scrape}");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the worker exited"
    );
    child.kill().await.expect("kill the worker");
}
