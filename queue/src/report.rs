//! Completion reports: one small JSON event per finished call, published by workers on core NATS
//! (`flotilla.report.<function>`) for dashboards and status pages. Reports are best effort: a
//! worker drops them when its report queue is full, so nothing may depend on them for delivery.

use serde::{Deserialize, Serialize};

use crate::names::FunctionName;

pub const REPORT_SUBJECT_PREFIX: &str = "flotilla.report";

/// The subject a function's reports are published on; subscribe to `flotilla.report.>` for all.
pub fn report_subject(function: &FunctionName) -> String {
    format!("{REPORT_SUBJECT_PREFIX}.{function}")
}

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
