//! The `flotilla-loadgen` binary's process edge: an unknown flag, an unparsable value or a
//! combination it refuses is one line on stderr and exit 64 (a run and the `ceiling` subcommand
//! alike); `--help` and `--version` exit 0.

use flotilla_testsupport::{assert_help_and_version, assert_refused};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla-loadgen");

#[test]
fn bad_configuration_exits_64_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["--duration", "soon"],
        &["--rate", "fast"],
        &["--functions", "0"],
        &["--gateway", "http://gw:8080"],
        &["ceiling", "--bogus"],
        &["ceiling", "--ceiling-duration", "soon"],
        &["ceiling", "--nats-url", "http://127.0.0.1:4222"],
    ] {
        assert_refused(BIN, args);
    }
    let line = assert_refused(BIN, &["--timeout", "-1s"]);
    assert!(line.contains("a duration cannot be negative"), "{line}");
    let line = assert_refused(BIN, &["--audit", "logs"]);
    assert!(
        line.contains("(possible values: callbacks, status)"),
        "{line}"
    );
    let line = assert_refused(BIN, &["ceiling", "--ceiling-duraton", "1s"]);
    assert!(
        line.contains("did you mean '--ceiling-duration'?"),
        "{line}"
    );
}

#[test]
fn help_and_version_exit_0() {
    assert_help_and_version(BIN, "flotilla-loadgen");
}
