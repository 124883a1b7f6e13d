//! The audit: every call the gateway accepted must reach its callback exactly once. Matches the
//! accepted call ids against the callbacks, counts the lost, the duplicated and the unexpected,
//! and derives end-to-end latency and the completion timeline from the first callback of each.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::Serialize;

use flotilla_queue::Priority;

use crate::net::Clock;
use crate::sink::Callback;
use crate::stats::{Accepted, latency_histogram};

/// How many ids of each kind the report lists.
pub const LISTED: usize = 10;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Audit {
    /// Calls answered 202 with a call id.
    pub accepted: u64,
    /// Accepted calls with at least one callback.
    pub completed: u64,
    /// Accepted calls with no callback after the drain wait.
    pub lost: u64,
    /// Callbacks beyond the first for the same call id.
    pub duplicates: u64,
    /// Callbacks whose call id was never accepted (e.g. a 202 that arrived after the sender's
    /// timeout, or another client using the same callback URL).
    pub unexpected: u64,
    /// The first lost call ids.
    pub lost_ids: Vec<String>,
    /// The first duplicated call ids.
    pub duplicate_ids: Vec<String>,
    /// How long the audit waited for stragglers after sending stopped, in seconds.
    pub drain_wait_s: f64,
    /// True when nothing was lost.
    pub ok: bool,
    /// With `--audit status`: the calls by final state (`succeeded`, `failed`, `dead`,
    /// `cancelled`); a lost call is one that reached none in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub states: Option<BTreeMap<String, u64>>,
}

/// Everything derived from matching accepted calls with callbacks.
#[derive(Debug)]
pub struct Matched {
    pub audit: Audit,
    /// Accepted → callback arrival, microseconds.
    pub end_to_end_us: Histogram<u64>,
    /// Arrival of each completed call's first callback, ns since the clock origin.
    pub completions_ns: Vec<u64>,
    /// First callbacks by `X-Function-Status`.
    pub function_status: BTreeMap<String, u64>,
}

/// Matches `accepted` with `callbacks`. End-to-end latency is the callback's arrival minus the
/// gateway's `X-Start-Time` (its acceptance) when the callback carries one, else minus the
/// moment the 202 reached the loadgen.
pub fn reconcile(clock: &Clock, accepted: &[Accepted], callbacks: &[Callback]) -> Matched {
    // Call id → (index into accepted, callbacks seen).
    let mut seen: HashMap<&str, (usize, u32)> = accepted
        .iter()
        .enumerate()
        .map(|(i, a)| (a.call_id.as_str(), (i, 0)))
        .collect();
    let mut end_to_end_us = latency_histogram();
    let mut completions_ns = Vec::with_capacity(callbacks.len());
    let mut function_status = BTreeMap::new();
    let mut duplicates = 0u64;
    let mut unexpected = 0u64;
    let mut duplicate_ids = Vec::new();
    for cb in callbacks {
        let Some((idx, count)) = seen.get_mut(cb.call_id.as_str()) else {
            unexpected += 1;
            continue;
        };
        *count += 1;
        if *count > 1 {
            duplicates += 1;
            if *count == 2 && duplicate_ids.len() < LISTED {
                duplicate_ids.push(cb.call_id.clone());
            }
            continue;
        }
        completions_ns.push(cb.arrived_ns);
        *function_status.entry(cb.status.to_string()).or_insert(0u64) += 1;
        let latency_ns = match cb.start_unix_ns {
            Some(start) => clock.unix_ns_of(cb.arrived_ns).saturating_sub(start),
            None => u128::from(cb.arrived_ns.saturating_sub(accepted[*idx].at_ns)),
        };
        end_to_end_us.saturating_record(u64::try_from(latency_ns / 1000).unwrap_or(u64::MAX));
    }
    let mut lost_ids = Vec::new();
    let mut lost = 0u64;
    for a in accepted {
        if seen.get(a.call_id.as_str()).is_some_and(|&(_, n)| n == 0) {
            lost += 1;
            if lost_ids.len() < LISTED {
                lost_ids.push(a.call_id.clone());
            }
        }
    }
    // Two 202s with the same id would be one call; count distinct ids as accepted.
    let accepted_n = seen.len() as u64;
    completions_ns.sort_unstable();
    Matched {
        audit: Audit {
            accepted: accepted_n,
            completed: accepted_n - lost,
            lost,
            duplicates,
            unexpected,
            lost_ids,
            duplicate_ids,
            drain_wait_s: 0.0,
            ok: lost == 0,
            states: None,
        },
        end_to_end_us,
        completions_ns,
        function_status,
    }
}

/// Start latency, microseconds: from the gateway's acceptance (`X-Start-Time`) to the call's
/// first start at the function, for the accepted calls sent with a priority or a key, by
/// priority (a call sent with a key and no priority counts as `normal`) and by key.
#[derive(Debug, Default)]
pub struct StartLatency {
    pub by_priority: BTreeMap<Priority, Histogram<u64>>,
    pub by_key: HashMap<u32, Histogram<u64>>,
}

/// Each sent call's start latency (see [`StartLatency`]). A retried call counts once, by its
/// first attempt.
pub fn start_latency(clock: &Clock, accepted: &[Accepted], starts: &[Callback]) -> StartLatency {
    let sent: HashMap<&str, (Priority, Option<u32>)> = accepted
        .iter()
        .filter(|a| a.priority.is_some() || a.key.is_some())
        .map(|a| (a.call_id.as_str(), (a.priority.unwrap_or_default(), a.key)))
        .collect();
    let mut first: HashMap<&str, u128> = HashMap::new();
    for s in starts {
        let Some(start) = s.start_unix_ns else {
            continue;
        };
        if !sent.contains_key(s.call_id.as_str()) {
            continue;
        }
        let waited = clock.unix_ns_of(s.arrived_ns).saturating_sub(start);
        first
            .entry(s.call_id.as_str())
            .and_modify(|w| *w = (*w).min(waited))
            .or_insert(waited);
    }
    let mut by = StartLatency::default();
    for (id, waited) in first {
        let us = u64::try_from(waited / 1000).unwrap_or(u64::MAX);
        let (priority, key) = sent[id];
        by.by_priority
            .entry(priority)
            .or_insert_with(latency_histogram)
            .saturating_record(us);
        if let Some(k) = key {
            by.by_key
                .entry(k)
                .or_insert_with(latency_histogram)
                .saturating_record(us);
        }
    }
    by
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(id: &str, at: u64) -> Accepted {
        Accepted {
            call_id: id.into(),
            at_ns: at,
            priority: None,
            key: None,
        }
    }

    fn cb(id: &str, at: u64) -> Callback {
        Callback {
            call_id: id.into(),
            arrived_ns: at,
            status: 200,
            start_unix_ns: None,
        }
    }

    #[test]
    fn counts_lost_duplicates_and_strangers() {
        let clock = Clock::new();
        let accepted = [acc("a", 10), acc("b", 20), acc("c", 30)];
        let callbacks = [
            cb("a", 1_000_010),
            cb("a", 50),
            cb("c", 2_000_030),
            cb("zz", 5),
        ];
        let m = reconcile(&clock, &accepted, &callbacks);
        assert_eq!(m.audit.accepted, 3);
        assert_eq!(m.audit.completed, 2);
        assert_eq!(m.audit.lost, 1);
        assert_eq!(m.audit.lost_ids, vec!["b".to_owned()]);
        assert_eq!(m.audit.duplicates, 1);
        assert_eq!(m.audit.duplicate_ids, vec!["a".to_owned()]);
        assert_eq!(m.audit.unexpected, 1);
        assert!(!m.audit.ok);
        assert_eq!(m.end_to_end_us.len(), 2);
        // 1 ms and 2 ms from the 202.
        assert_eq!(m.end_to_end_us.max() / 100, 20);
        assert_eq!(m.function_status.get("200"), Some(&2));
    }

    #[test]
    fn start_latency_counts_each_call_once_by_its_first_start_its_priority_and_key() {
        let clock = Clock::new();
        let accepted_at = clock.unix_ns_of(0);
        let with = |id: &str, p: Option<Priority>, key: Option<u32>| Accepted {
            call_id: id.into(),
            at_ns: 0,
            priority: p,
            key,
        };
        let accepted = [
            with("h", Some(Priority::High), Some(1)),
            with("l", Some(Priority::Low), None),
            with("plain", None, None),
            with("keyed", None, Some(1)),
        ];
        let start = |id: &str, after_ms: u64| Callback {
            call_id: id.into(),
            arrived_ns: after_ms * 1_000_000,
            status: 0,
            start_unix_ns: Some(accepted_at),
        };
        // `h` retried: its first start counts. `plain` had no priority; `x` was never accepted.
        let starts = [
            start("h", 30),
            start("l", 900),
            start("h", 10),
            start("plain", 5),
            start("keyed", 40),
            start("x", 1),
        ];
        let by = start_latency(&clock, &accepted, &starts);
        assert_eq!(
            by.by_priority.len(),
            3,
            "a key without a priority is normal"
        );
        let high = &by.by_priority[&Priority::High];
        assert_eq!((high.len(), high.max() / 1000), (1, 10));
        assert_eq!(by.by_priority[&Priority::Low].max() / 1000, 900);
        assert_eq!(by.by_priority[&Priority::Normal].max() / 1000, 40);
        let key = &by.by_key[&1];
        assert_eq!((key.len(), key.max() / 1000), (2, 40));
        assert_eq!(by.by_key.len(), 1);
    }
}
