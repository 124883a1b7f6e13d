//! Stream, subject and consumer names. Every name either side of NATS uses comes from here.
//!
//! Layout: shard `k` is the stream `FLOTILLA_CALLS_k` holding subjects `flotilla.call.k.<function>`
//! (a namespaced function adds one token: `flotilla.call.k.fn.ns`), read by the shard's one
//! dispatch consumer. Retries waiting for their due time are kept in the same shard stream under
//! `flotilla.retry.k.<function>`, a prefix the dispatch consumer's filter does not match, and are
//! read by the shard's one retry consumer. Calls of a function that is at its limit wait in the
//! shard's second stream `FLOTILLA_WAIT_k` under `flotilla.wait.k.<function>`, read by one
//! consumer per function; calls of another priority than normal wait in lanes of their own,
//! `flotilla.wait.k.~high.<function>` and `flotilla.wait.k.~low.<function>`, each with its own
//! consumer. A waiting call with a fairness key (or any waiting call of a function whose calls
//! carry keys) is parked under its key in the same stream,
//! `flotilla.wait.k.~keys.<priority>.<key token>.<function>`, read by no consumer: workers claim
//! each key's oldest call in turn into the lane. Slots of a function's keys under
//! `key_concurrency` are `flotilla.keyslot.<key token>.<slot>.<function>` in `FLOTILLA_KEY_SLOTS`.
//! Dead letters go to the one stream `FLOTILLA_DEAD` under `flotilla.dead.<function>`.
//!
//! On core NATS, outside any stream: completion reports on `flotilla.report.<function>` and the
//! replicas' presence heartbeat on `flotilla.presence.<k>`. The one JetStream API subject the
//! fleet sends to itself (a pull request) is built here too.

use crate::names::FunctionName;
use crate::priority::Priority;
use crate::shard::fingerprint;

pub const CALL_SUBJECT_PREFIX: &str = "flotilla.call";
pub const RETRY_SUBJECT_PREFIX: &str = "flotilla.retry";
pub const WAIT_SUBJECT_PREFIX: &str = "flotilla.wait";
/// The wait-subject token after which keyed calls are parked. `~` is in no function name.
const PARK_TOKEN: &str = "~keys";
pub const KEY_SLOT_STREAM: &str = "FLOTILLA_KEY_SLOTS";
pub const KEY_SLOT_SUBJECT_PREFIX: &str = "flotilla.keyslot";
/// Durable consumer of a shard's calls, shared by every replica of the shard.
pub const DISPATCH_CONSUMER: &str = "flotilla-dispatch";
/// Durable consumer of a shard's waiting retries, shared by every replica of the shard.
pub const RETRY_CONSUMER: &str = "flotilla-retries";
pub const DEAD_STREAM: &str = "FLOTILLA_DEAD";
pub const DEAD_SUBJECT_PREFIX: &str = "flotilla.dead";
pub const REPORT_SUBJECT_PREFIX: &str = "flotilla.report";
pub const PRESENCE_SUBJECT_PREFIX: &str = "flotilla.presence";
pub const LIMITS_SUBJECT_PREFIX: &str = "flotilla.limits";
/// KV bucket holding the topology (shard count), written once by the first process to start.
pub const TOPOLOGY_BUCKET: &str = "flotilla_topology";

pub fn call_stream(shard: u32) -> String {
    format!("FLOTILLA_CALLS_{shard}")
}

/// A shard's stream of calls waiting for their function to have room.
pub fn wait_stream(shard: u32) -> String {
    format!("FLOTILLA_WAIT_{shard}")
}

/// The wildcard subject of a shard's waiting calls (what its wait stream captures).
pub fn wait_wildcard(shard: u32) -> String {
    format!("{WAIT_SUBJECT_PREFIX}.{shard}.>")
}

/// Where a call waits while its function is at its limit.
pub fn wait_subject(shard: u32, function: &FunctionName) -> String {
    format!("{WAIT_SUBJECT_PREFIX}.{shard}.{function}")
}

/// Where a call of `priority` waits while its function is at its limit: its lane. The normal
/// lane is the function's wait subject itself, so calls stored before priorities existed wait in
/// it unchanged.
pub fn wait_lane_subject(shard: u32, function: &FunctionName, priority: Priority) -> String {
    match priority.lane_token() {
        None => wait_subject(shard, function),
        Some(lane) => format!("{WAIT_SUBJECT_PREFIX}.{shard}.{lane}.{function}"),
    }
}

/// What follows `flotilla.wait.<shard>.` in a wait subject of `shard`.
fn wait_rest(shard: u32, subject: &str) -> Option<&str> {
    let rest = subject
        .strip_prefix(WAIT_SUBJECT_PREFIX)?
        .strip_prefix('.')?;
    let (k, rest) = rest.split_once('.')?;
    (k.parse::<u32>().ok()? == shard).then_some(rest)
}

/// The function and lane a wait subject (a lane's, or a park subject) belongs to, or `None` when
/// the subject is not a wait subject of `shard` (or names an invalid function).
pub fn lane_of_wait_subject(shard: u32, subject: &str) -> Option<(FunctionName, Priority)> {
    let rest = wait_rest(shard, subject)?;
    if rest.starts_with(PARK_TOKEN) {
        return park_of_wait_subject(shard, subject).map(|(f, p, _)| (f, p));
    }
    for p in [Priority::High, Priority::Low] {
        if let Some(name) = p
            .lane_token()
            .and_then(|lane| rest.strip_prefix(lane)?.strip_prefix('.'))
        {
            return Some((FunctionName::parse(name).ok()?, p));
        }
    }
    Some((FunctionName::parse(rest).ok()?, Priority::Normal))
}

/// Where a waiting call of `priority` and the key whose token is `key_token` is parked (see
/// `fairness`).
pub fn park_subject(
    shard: u32,
    function: &FunctionName,
    priority: Priority,
    key_token: &str,
) -> String {
    format!("{WAIT_SUBJECT_PREFIX}.{shard}.{PARK_TOKEN}.{priority}.{key_token}.{function}")
}

/// Where a waiting call of `priority` goes: parked under the key whose token is `key_token`, or
/// into its lane when it is not parked by key.
pub fn waiting_subject(
    shard: u32,
    function: &FunctionName,
    priority: Priority,
    key_token: Option<&str>,
) -> String {
    match key_token {
        Some(token) => park_subject(shard, function, priority, token),
        None => wait_lane_subject(shard, function, priority),
    }
}

/// Every call of `function` parked in the lane of `priority`, whatever its key.
pub fn park_wildcard(shard: u32, function: &FunctionName, priority: Priority) -> String {
    format!("{WAIT_SUBJECT_PREFIX}.{shard}.{PARK_TOKEN}.{priority}.*.{function}")
}

/// The function, priority and key token of a park subject of `shard`, or `None` when the subject
/// is not one.
pub fn park_of_wait_subject(shard: u32, subject: &str) -> Option<(FunctionName, Priority, &str)> {
    let rest = wait_rest(shard, subject)?
        .strip_prefix(PARK_TOKEN)?
        .strip_prefix('.')?;
    let (priority, rest) = rest.split_once('.')?;
    let (token, name) = rest.split_once('.')?;
    let priority = Priority::parse(priority).ok()?;
    Some((FunctionName::parse(name).ok()?, priority, token))
}

/// The subject of slot `slot` of a key of `function` under `key_concurrency`.
pub fn key_slot_subject(function: &FunctionName, key_token: &str, slot: u32) -> String {
    format!("{KEY_SLOT_SUBJECT_PREFIX}.{key_token}.{slot}.{function}")
}

/// Every key slot (what `FLOTILLA_KEY_SLOTS` captures).
pub fn key_slot_wildcard() -> String {
    format!("{KEY_SLOT_SUBJECT_PREFIX}.>")
}

/// The function a wait subject (of any lane) belongs to, or `None` when the subject is not a wait
/// subject of `shard` (or names an invalid function).
pub fn function_of_wait_subject(shard: u32, subject: &str) -> Option<FunctionName> {
    lane_of_wait_subject(shard, subject).map(|(f, _)| f)
}

/// The function any of a shard's call, wait or retry subjects names.
pub fn function_of_any_subject(shard: u32, subject: &str) -> Option<FunctionName> {
    function_of_subject(shard, subject)
        .or_else(|| function_of_wait_subject(shard, subject))
        .or_else(|| function_of_retry_subject(shard, subject))
}

/// The wildcard subject a shard's stream captures.
pub fn shard_wildcard(shard: u32) -> String {
    format!("{CALL_SUBJECT_PREFIX}.{shard}.>")
}

/// The wildcard subject of a shard's waiting retries (also captured by the shard's stream).
pub fn retry_wildcard(shard: u32) -> String {
    format!("{RETRY_SUBJECT_PREFIX}.{shard}.>")
}

/// Where a failed call waits for its next attempt.
pub fn retry_subject(shard: u32, function: &FunctionName) -> String {
    format!("{RETRY_SUBJECT_PREFIX}.{shard}.{function}")
}

/// The function a retry subject belongs to, or `None` when the subject is not a retry subject of
/// `shard` (or names an invalid function).
pub fn function_of_retry_subject(shard: u32, subject: &str) -> Option<FunctionName> {
    of_subject(RETRY_SUBJECT_PREFIX, shard, subject)
}

pub fn call_subject(shard: u32, function: &FunctionName) -> String {
    format!("{CALL_SUBJECT_PREFIX}.{shard}.{function}")
}

/// The function a call subject belongs to, or `None` when the subject is not a call subject of
/// `shard` (or names an invalid function).
pub fn function_of_subject(shard: u32, subject: &str) -> Option<FunctionName> {
    of_subject(CALL_SUBJECT_PREFIX, shard, subject)
}

fn of_subject(prefix: &str, shard: u32, subject: &str) -> Option<FunctionName> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (k, name) = rest.split_once('.')?;
    if k.parse::<u32>().ok()? != shard {
        return None;
    }
    FunctionName::parse(name).ok()
}

/// The dead-letter subject token of poison that names no valid function. `~` cannot occur in a
/// function name, so no real function's letters are ever filed with them.
pub const UNNAMED_DEAD_TOKEN: &str = "~invalid";

/// The dead-letter subject token of `function`: the name itself, or [`UNNAMED_DEAD_TOKEN`].
pub fn dead_token(function: &str) -> &str {
    match FunctionName::parse(function) {
        Ok(_) => function,
        Err(_) => UNNAMED_DEAD_TOKEN,
    }
}

pub fn dead_subject(function: &str) -> String {
    // Poison messages may name no valid function; they still need a subject.
    format!("{DEAD_SUBJECT_PREFIX}.{}", dead_token(function))
}

/// Every dead letter's subject: what `FLOTILLA_DEAD` captures and what lists all letters.
pub fn dead_wildcard() -> String {
    format!("{DEAD_SUBJECT_PREFIX}.>")
}

/// The token after `flotilla.dead.` (a function name or [`UNNAMED_DEAD_TOKEN`]), or `None` when
/// the subject is not a dead-letter subject.
pub fn dead_token_of_subject(subject: &str) -> Option<&str> {
    subject.strip_prefix(DEAD_SUBJECT_PREFIX)?.strip_prefix('.')
}

/// The core NATS subject a function's completion reports are published on (see `report`);
/// subscribe to `flotilla.report.>` for all.
pub fn report_subject(function: &FunctionName) -> String {
    format!("{REPORT_SUBJECT_PREFIX}.{function}")
}

/// The function a report subject names, borrowed from it; `None` when it is not a report subject.
pub fn function_of_report_subject(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(REPORT_SUBJECT_PREFIX)?
        .strip_prefix('.')
}

/// The core NATS subject on which the replicas of `shard` announce themselves. Core NATS, not
/// JetStream: presence is soft state that must cost nothing to store and vanish with its owner.
pub fn presence_subject(shard: u32) -> String {
    format!("{PRESENCE_SUBJECT_PREFIX}.{shard}")
}

/// The core NATS subject on which each replica of `shard` reports its functions' concurrency
/// limits, for `/system/queues`: soft state, like presence.
pub fn limits_subject(shard: u32) -> String {
    format!("{LIMITS_SUBJECT_PREFIX}.{shard}")
}

/// Every shard's limit reports.
pub fn limits_wildcard() -> String {
    format!("{LIMITS_SUBJECT_PREFIX}.>")
}

/// Durable consumer name of a function (of its waiting calls). Consumer names may not contain '.', so the namespace dot
/// becomes '_' and a fingerprint of the full name keeps `a.b` and `a_b` apart.
pub fn consumer_name(function: &FunctionName) -> String {
    format!(
        "fn-{}-{:08x}",
        function.as_str().replace('.', "_"),
        fingerprint(function.as_str())
    )
}

/// Durable consumer name of a function's lane of `priority`: the normal lane's is the function's
/// own ([`consumer_name`]), the others add the lane.
pub fn lane_consumer_name(function: &FunctionName, priority: Priority) -> String {
    let name = consumer_name(function);
    match priority {
        Priority::Normal => name,
        other => format!("{name}-{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> FunctionName {
        FunctionName::parse(s).unwrap()
    }

    #[test]
    fn subjects_round_trip() {
        for name in ["echo", "fn.ns"] {
            let s = call_subject(3, &f(name));
            assert_eq!(function_of_subject(3, &s), Some(f(name)));
            assert_eq!(function_of_subject(2, &s), None);
        }
        assert_eq!(function_of_subject(0, "other.0.x"), None);
        let r = retry_subject(3, &f("fn.ns"));
        assert_eq!(function_of_retry_subject(3, &r), Some(f("fn.ns")));
        assert_eq!(function_of_subject(3, &r), None);
        assert_eq!(
            function_of_retry_subject(3, &call_subject(3, &f("x"))),
            None
        );
        let w = wait_subject(3, &f("fn.ns"));
        assert_eq!(w, "flotilla.wait.3.fn.ns");
        assert_eq!(function_of_wait_subject(3, &w), Some(f("fn.ns")));
        assert_eq!(function_of_subject(3, &w), None);
        for s in [&w, &r, &call_subject(3, &f("fn.ns"))] {
            assert_eq!(function_of_any_subject(3, s), Some(f("fn.ns")));
        }
    }

    #[test]
    fn parked_calls_are_subjects_of_the_wait_stream_no_lane_consumer_reads() {
        for name in ["echo", "fn.ns"] {
            for p in Priority::ALL {
                for token in ["616263", "-"] {
                    let s = park_subject(3, &f(name), p, token);
                    assert!(s.starts_with("flotilla.wait.3.~keys."), "{s}");
                    assert_eq!(park_of_wait_subject(3, &s), Some((f(name), p, token)));
                    assert_eq!(lane_of_wait_subject(3, &s), Some((f(name), p)));
                    assert_eq!(park_of_wait_subject(2, &s), None);
                    for lane in Priority::ALL {
                        assert_ne!(s, wait_lane_subject(3, &f(name), lane));
                    }
                }
            }
        }
        assert_eq!(
            park_subject(0, &f("echo"), Priority::High, "6b"),
            "flotilla.wait.0.~keys.high.6b.echo"
        );
        assert_eq!(
            park_wildcard(0, &f("fn.ns"), Priority::Normal),
            "flotilla.wait.0.~keys.normal.*.fn.ns"
        );
        assert_eq!(park_of_wait_subject(0, "flotilla.wait.0.echo"), None);
        assert_eq!(
            waiting_subject(0, &f("echo"), Priority::Low, Some("6b")),
            park_subject(0, &f("echo"), Priority::Low, "6b")
        );
        assert_eq!(
            waiting_subject(0, &f("echo"), Priority::Low, None),
            wait_lane_subject(0, &f("echo"), Priority::Low)
        );
        assert_eq!(
            lane_of_wait_subject(0, "flotilla.wait.0.~keys.mid.6b.echo"),
            None
        );
        assert_eq!(
            key_slot_subject(&f("fn.ns"), "6b", 2),
            "flotilla.keyslot.6b.2.fn.ns"
        );
    }

    #[test]
    fn lanes_are_subjects_of_the_wait_stream_that_no_function_shares() {
        for name in ["echo", "fn.ns"] {
            for p in Priority::ALL {
                let s = wait_lane_subject(3, &f(name), p);
                assert!(s.starts_with("flotilla.wait.3."), "{s}");
                assert_eq!(lane_of_wait_subject(3, &s), Some((f(name), p)), "{s}");
                assert_eq!(function_of_wait_subject(3, &s), Some(f(name)));
                assert_eq!(lane_of_wait_subject(2, &s), None);
            }
        }
        assert_eq!(
            wait_lane_subject(0, &f("echo"), Priority::Normal),
            wait_subject(0, &f("echo"))
        );
        assert_eq!(
            wait_lane_subject(0, &f("echo"), Priority::High),
            "flotilla.wait.0.~high.echo"
        );
        assert_eq!(lane_of_wait_subject(0, "flotilla.wait.0.~high"), None);
        assert_eq!(lane_of_wait_subject(0, "flotilla.wait.0.~mid.echo"), None);
        let names: Vec<_> = Priority::ALL
            .map(|p| lane_consumer_name(&f("a.b"), p))
            .into();
        assert_eq!(names[1], consumer_name(&f("a.b")));
        assert!(names.iter().all(|n| !n.contains('.')));
        assert!(names[0] != names[1] && names[1] != names[2] && names[0] != names[2]);
    }

    #[test]
    fn unnamed_poison_never_shares_a_function_subject() {
        assert_eq!(dead_subject("fn.ns"), "flotilla.dead.fn.ns");
        assert_eq!(dead_subject("_invalid"), "flotilla.dead._invalid");
        assert_eq!(dead_subject("a b"), "flotilla.dead.~invalid");
        assert!(FunctionName::parse(UNNAMED_DEAD_TOKEN).is_err());
    }

    #[test]
    fn core_and_api_subjects() {
        assert_eq!(dead_wildcard(), "flotilla.dead.>");
        assert_eq!(dead_token_of_subject("flotilla.dead.fn.ns"), Some("fn.ns"));
        assert_eq!(
            dead_token_of_subject(&dead_subject("a b")),
            Some(UNNAMED_DEAD_TOKEN)
        );
        assert_eq!(dead_token_of_subject("flotilla.deadx"), None);
        let r = report_subject(&f("a.ns"));
        assert_eq!(r, "flotilla.report.a.ns");
        assert_eq!(function_of_report_subject(&r), Some("a.ns"));
        assert_eq!(function_of_report_subject("flotilla.call.0.a"), None);
        assert_eq!(presence_subject(3), "flotilla.presence.3");
        assert_eq!(limits_subject(3), "flotilla.limits.3");
        assert_eq!(limits_wildcard(), "flotilla.limits.>");
    }

    #[test]
    fn consumer_names_are_distinct_and_legal() {
        let (a, b) = (consumer_name(&f("a.b")), consumer_name(&f("a_b")));
        assert_ne!(a, b);
        assert!(!a.contains('.'));
    }
}
