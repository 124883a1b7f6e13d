//! Runs a fleet binary the way an operator does and checks its process edge: every binary refuses
//! a bad command line with exit 64 and one line on stderr, and prints `--help` and `--version` to
//! stdout with exit 0. One helper, so the three binaries are held to the same promise.

use std::process::{Command, Stdio};

/// What a finished binary left behind.
#[derive(Debug)]
pub struct Finished {
    /// `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin` with `args` to its end: stdin closed, and no `RUST_LOG`, so the default filter
/// applies.
pub fn run_binary(bin: &str, args: &[&str]) -> Finished {
    let out = Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts that `bin` refuses `args` before it starts anything: exit 64 and exactly one line on
/// stderr, `configuration error: …`. Returns that line for further checks.
pub fn assert_refused(bin: &str, args: &[&str]) -> String {
    let out = run_binary(bin, args);
    assert_eq!(out.code, Some(64), "{args:?}: {}", out.stderr);
    let line = out.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "{args:?}: {}", out.stderr);
    assert!(
        line.starts_with("configuration error: "),
        "{args:?}: {line}"
    );
    line.to_owned()
}

/// Asserts that `--help` prints the usage and `--version` the version of `name` to stdout, each
/// with exit 0.
pub fn assert_help_and_version(bin: &str, name: &str) {
    let help = run_binary(bin, &["--help"]);
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    assert!(help.stdout.contains("Usage:"), "{}", help.stdout);
    let version = run_binary(bin, &["--version"]);
    assert_eq!(version.code, Some(0), "{}", version.stderr);
    assert!(
        version.stdout.starts_with(&format!("{name} ")),
        "{}",
        version.stdout
    );
}
