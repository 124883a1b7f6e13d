//! A worker replica's report of its functions' concurrency limits, sent on core NATS every
//! [`REPORT_EVERY`] (`flotilla.limits.<shard>`) so the gateway's `/system/queues` can show what
//! the replicas learned. Soft state: a report is forgotten [`EXPIRY`] after its replica's last.
//!
//! The payload is text, one line for the replica and one per function:
//! `<replica>\n<function> <limit> <adaptive|fixed> <refusals> <settled>\n...`. A line without
//! `<settled>` (from a replica of an earlier release) reads as none settled.

use std::time::Duration;

/// How often a replica reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// A replica not heard from for this long no longer counts.
pub const EXPIRY: Duration = Duration::from_secs(7);

/// One function's limit in one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionLimit {
    pub function: String,
    /// Calls the replica may have in flight now.
    pub limit: u32,
    /// Learned from the function's refusals (else a share of a fixed concurrency).
    pub adaptive: bool,
    /// Refusals the replica met since it started.
    pub refusals: u64,
    /// Calls of the function the replica settled (acknowledged with their final outcome) since
    /// it started: successive reports give the completion rate.
    pub settled: u64,
}

/// One replica's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReport {
    /// Unique per replica and shard.
    pub replica: String,
    pub functions: Vec<FunctionLimit>,
}

/// Why a report was not understood.
#[derive(Debug, thiserror::Error)]
pub enum LimitReportError {
    #[error("limit report is not UTF-8")]
    NotText,
    #[error("limit report names no replica")]
    NoReplica,
    #[error(
        "limit report line {line:?} is not `<function> <limit> <adaptive|fixed> <refusals> <settled>`"
    )]
    Line { line: String },
}

impl LimitReport {
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32 + self.functions.len() * 40);
        out.push_str(&self.replica);
        for f in &self.functions {
            let kind = if f.adaptive { "adaptive" } else { "fixed" };
            out.push_str(&format!(
                "\n{} {} {kind} {} {}",
                f.function, f.limit, f.refusals, f.settled
            ));
        }
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Self, LimitReportError> {
        let text = std::str::from_utf8(payload).map_err(|_| LimitReportError::NotText)?;
        let mut lines = text.lines();
        let replica = lines
            .next()
            .filter(|r| !r.is_empty())
            .ok_or(LimitReportError::NoReplica)?
            .to_owned();
        let functions = lines
            .map(|line| {
                let bad = || LimitReportError::Line {
                    line: line.to_owned(),
                };
                let mut parts = line.split(' ');
                let (Some(function), Some(limit), Some(kind), Some(refusals), settled, None) = (
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                ) else {
                    return Err(bad());
                };
                Ok(FunctionLimit {
                    function: function.to_owned(),
                    limit: limit.parse().map_err(|_| bad())?,
                    adaptive: match kind {
                        "adaptive" => true,
                        "fixed" => false,
                        _ => return Err(bad()),
                    },
                    refusals: refusals.parse().map_err(|_| bad())?,
                    settled: settled.map_or(Ok(0), str::parse).map_err(|_| bad())?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { replica, functions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_wire_and_a_bad_one_is_named() {
        let r = LimitReport {
            replica: "_INBOX.abc".into(),
            functions: vec![
                FunctionLimit {
                    function: "resize.ns".into(),
                    limit: 4,
                    adaptive: true,
                    refusals: 17,
                    settled: 12_345,
                },
                FunctionLimit {
                    function: "echo".into(),
                    limit: 50,
                    adaptive: false,
                    refusals: 0,
                    settled: 0,
                },
            ],
        };
        assert_eq!(LimitReport::decode(r.encode().as_bytes()).unwrap(), r);
        let empty = LimitReport {
            replica: "r".into(),
            functions: Vec::new(),
        };
        assert_eq!(LimitReport::decode(b"r").unwrap(), empty);
        assert!(matches!(
            LimitReport::decode(b""),
            Err(LimitReportError::NoReplica)
        ));
        let e = LimitReport::decode(b"r\nf 4 maybe 0").unwrap_err();
        assert!(e.to_string().contains("\"f 4 maybe 0\""), "{e}");
        assert!(LimitReport::decode(b"r\nf x adaptive 0").is_err());
        assert!(LimitReport::decode(b"r\nf 4 adaptive 0 9 extra").is_err());
        assert!(LimitReport::decode(b"r\nf 4 adaptive 0 x").is_err());
        // An earlier release's line, without the settled count.
        let old = LimitReport::decode(b"r\nf 4 fixed 2").unwrap();
        assert_eq!(
            (old.functions[0].refusals, old.functions[0].settled),
            (2, 0)
        );
    }
}
