//! The `flotilla-worker` binary's process edge: an unknown flag, an unparsable value or a value
//! the worker refuses is one line on stderr and exit 64; `--help` and `--version` exit 0.

use flotilla_testsupport::{assert_help_and_version, assert_refused};

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
