//! Completion reports: one small JSON event per finished attempt, published by workers on core
//! NATS (`flotilla.report.<function>`, from `subjects::report_subject`) for dashboards and status
//! pages. Reports are best effort: a worker drops them when its report queue is full, so nothing
//! may depend on them for delivery.
//!
//! # Wire format
//!
//! A worker batches a function's events: one NATS message carries one or more events as
//! [JSON Lines](https://jsonlines.org/), each event a [`Report`] object followed by `\n`:
//!
//! ```text
//! {"call_id":"c-1","function":"resize","status":200,"duration_seconds":0.0123,"attempt":1}
//! {"call_id":"c-2","function":"resize","status":502,"duration_seconds":0.0007,"attempt":2}
//! ```
//!
//! Read every message with [`split_batch`] (or any JSON Lines reader). A message with one event
//! is a JSON object with trailing whitespace, which a plain JSON parser also accepts, so consumers
//! written for one event per message read the first event of each batch and miss the rest: they
//! must split. Events of one function keep their order within a worker; a batch waits at most a
//! few milliseconds for company.

use serde::{Deserialize, Serialize};

/// One finished call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub call_id: String,
    pub function: String,
    /// The function's HTTP status, or 502/504 when it was unreachable or timed out.
    pub status: u16,
    /// How long the function call took, in seconds.
    pub duration_seconds: f64,
    /// Which attempt this was, starting at 1.
    pub attempt: u32,
}

/// A [`Report`] borrowed from its parts, so a worker serializes an event without building the
/// owned one; same fields, same JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReportRef<'a> {
    pub call_id: &'a str,
    pub function: &'a str,
    pub status: u16,
    pub duration_seconds: f64,
    pub attempt: u32,
}

/// The events of one report message: its non-empty lines, each one JSON [`Report`].
pub fn split_batch(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_its_lines() {
        let lines: Vec<&[u8]> = split_batch(b"{\"a\":1}\n{\"b\":2}\n").collect();
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        // One event without a trailing newline, and stray blank lines.
        assert_eq!(split_batch(b"{}").count(), 1);
        assert_eq!(split_batch(b"\n{}\n\n").count(), 1);
        assert_eq!(split_batch(b"").count(), 0);
    }
}
