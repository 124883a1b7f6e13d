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
fn a_refused_value_or_combination_says_which_flag_and_why() {
    for (args, says) in [
        (
            &["--gateway", "http://gw:8080"][..],
            "--gateway needs --callback-listen ADDR, an address the workers can reach (the audit \
             counts callbacks)",
        ),
        (
            &["--functions", "0"],
            "--functions must be between 1 and 10000 (or a comma list of such)",
        ),
        (
            &["--rate", "0"],
            "--rate 0: must be above 0 and at most 10,000,000",
        ),
        (
            &["--batch", "4", "--rate", "100"],
            "--batch sends in a closed loop: give --concurrency, not --rate",
        ),
        (
            &["ceiling", "--ceiling-concurrency", "0"],
            "--ceiling-concurrency must be between 1 and 10000",
        ),
        (
            &["--function-capacity", "4,8"],
            r#"invalid value '4,8' for '--function-capacity <FUNCTION_CAPACITY>': "8": every capacity after the first needs @<time>"#,
        ),
        (
            &["function", "--latency", "uniform:5ms..1ms"],
            "invalid value 'uniform:5ms..1ms' for '--latency <LATENCY>': 'uniform:5ms..1ms': MIN \
             exceeds MAX",
        ),
    ] {
        let line = assert_refused(BIN, args);
        assert_eq!(line, format!("configuration error: {says}"), "{args:?}");
    }
}

#[test]
fn help_and_version_exit_0() {
    assert_help_and_version(BIN, "flotilla-loadgen");
}
