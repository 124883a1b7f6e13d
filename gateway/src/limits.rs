//! The workers' concurrency limits per function, heard on `flotilla.limits.>` (see
//! `flotilla_queue::limits`), for `/system/queues`. Soft state: each replica's latest report,
//! forgotten [`limits::EXPIRY`] after it; nothing is read from JetStream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use flotilla_queue::limits::{self, LimitReport};
use flotilla_queue::subjects;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// One function's limits summed over the replicas that reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Calls the replicas may have in flight at once now, together.
    pub limit: u64,
    /// Whether the limit is learned (adaptive) rather than fixed.
    pub adaptive: bool,
    /// Refusals the replicas met since they started.
    pub refusals: u64,
    /// Calls the replicas settled since they started.
    pub settled: u64,
}

/// The latest report of each replica.
#[derive(Debug, Default)]
pub struct Limits {
    heard: Mutex<HashMap<String, (Instant, LimitReport)>>,
}

impl Limits {
    /// Follows the reports until `stop`; a failed subscription is tried again.
    pub async fn follow(&self, client: async_nats::Client, stop: CancellationToken) {
        loop {
            let mut sub = match client.subscribe(subjects::limits_wildcard()).await {
                Ok(sub) => sub,
                Err(error) => {
                    tracing::debug!(%error, "limit reports not followed; trying again");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(limits::REPORT_EVERY) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    m = sub.next() => match m {
                        Some(m) => self.heard(&m.payload),
                        None => break,
                    },
                }
            }
        }
    }

    fn heard(&self, payload: &[u8]) {
        match LimitReport::decode(payload) {
            Ok(report) => {
                let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
                heard.retain(|_, (at, _)| at.elapsed() < limits::EXPIRY);
                heard.insert(report.replica.clone(), (Instant::now(), report));
            }
            Err(error) => tracing::debug!(%error, "limit report ignored"),
        }
    }

    /// Each function's limits over the replicas heard from within [`limits::EXPIRY`].
    pub fn summaries(&self) -> HashMap<String, Summary> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<String, Summary> = HashMap::new();
        for (at, report) in heard.values() {
            if at.elapsed() >= limits::EXPIRY {
                continue;
            }
            for f in &report.functions {
                let s = out.entry(f.function.clone()).or_default();
                s.limit += u64::from(f.limit);
                s.adaptive |= f.adaptive;
                s.refusals += f.refusals;
                s.settled += f.settled;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_queue::limits::FunctionLimit;

    fn report(replica: &str, limit: u32, refusals: u64, settled: u64) -> Vec<u8> {
        LimitReport {
            replica: replica.into(),
            functions: vec![FunctionLimit {
                function: "narrow".into(),
                limit,
                adaptive: true,
                refusals,
                settled,
            }],
        }
        .encode()
        .into_bytes()
    }

    #[test]
    fn replicas_add_up_and_a_newer_report_replaces_an_older() {
        let l = Limits::default();
        l.heard(&report("a", 3, 10, 100));
        l.heard(&report("b", 1, 2, 5));
        l.heard(&report("a", 2, 12, 150));
        l.heard(b"not\na report");
        let s = l.summaries()["narrow"];
        assert_eq!(
            s,
            Summary {
                limit: 3,
                adaptive: true,
                refusals: 14,
                settled: 155,
            }
        );
    }
}
