//! `--audit status`: calls go without a callback, and each accepted call is followed through the
//! gateway's status API (`GET /async-call/<id>`) until it reaches a final state. A final call is
//! recorded as a completion at the time its record last changed (the worker's clock), with its
//! acceptance as the start, so the timeline and end-to-end latency mean what they mean with
//! callbacks; the audit then counts the calls by final state.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::net::{Clock, HttpClient};
use crate::sink::{Callback, SinkState};
use crate::stats::Recorder;

/// Status requests in flight at once: enough to keep up with a fast fleet, few enough not to
/// become its load.
const IN_FLIGHT: usize = 32;
/// Between rounds over the calls not yet final.
const ROUND_PAUSE: Duration = Duration::from_millis(50);

/// The states a call ends in.
const FINAL: [&str; 4] = ["succeeded", "failed", "dead", "cancelled"];

/// What one status read found.
enum Read {
    Final(Callback, String),
    NotYet,
}

/// Calls counted by final state.
pub type States = Arc<Mutex<BTreeMap<String, u64>>>;

/// Follows every call `rec` accepted until it is final, recording each into `sink` and
/// `states`, until `stop` fires.
pub async fn follow(
    gateway: String,
    rec: Arc<Recorder>,
    sink: Arc<SinkState>,
    states: States,
    stop: CancellationToken,
) {
    let client = crate::net::client();
    let mut done: HashSet<String> = HashSet::new();
    loop {
        let pending: Vec<String> = rec
            .accepted_calls()
            .into_iter()
            .map(|a| a.call_id)
            .filter(|id| !done.contains(id))
            .collect();
        let round = async {
            for (id, read) in read_all(&client, &gateway, &rec.clock, pending).await {
                if let Read::Final(cb, state) = read {
                    sink.record(cb);
                    if let Ok(mut s) = states.lock() {
                        *s.entry(state).or_insert(0) += 1;
                    }
                    done.insert(id);
                }
            }
        };
        tokio::select! {
            () = round => {}
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(ROUND_PAUSE) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Waits (at most `within`) until every one of `ids` is final; returns how many are.
pub async fn wait_final(gateway: &str, clock: &Clock, ids: &[String], within: Duration) -> usize {
    let client = crate::net::client();
    let deadline = tokio::time::Instant::now() + within;
    let mut pending = ids.to_vec();
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let reads = read_all(&client, gateway, clock, pending).await;
        pending = reads
            .into_iter()
            .filter(|(_, r)| matches!(r, Read::NotYet))
            .map(|(id, _)| id)
            .collect();
        if !pending.is_empty() {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
    ids.len() - pending.len()
}

async fn read_all(
    client: &HttpClient,
    gateway: &str,
    clock: &Clock,
    ids: Vec<String>,
) -> Vec<(String, Read)> {
    futures_util::stream::iter(ids)
        .map(|id| async move {
            let read = read(client, gateway, clock, &id).await;
            (id, read)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// One call's status: final (as a completion) or not yet (unreadable counts as not yet: the
/// next round asks again, and the audit's wait bounds it).
async fn read(client: &HttpClient, gateway: &str, clock: &Clock, id: &str) -> Read {
    let Ok(req) =
        http::Request::get(format!("{gateway}/async-call/{id}")).body(Full::new(Bytes::new()))
    else {
        return Read::NotYet;
    };
    let Ok(resp) = client.request(req).await else {
        return Read::NotYet;
    };
    if resp.status() != http::StatusCode::OK {
        return Read::NotYet;
    }
    let Ok(body) = resp.into_body().collect().await else {
        return Read::NotYet;
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return Read::NotYet;
    };
    let state = doc["state"].as_str().unwrap_or_default();
    if !FINAL.contains(&state) {
        return Read::NotYet;
    }
    let unix = |field: &str| {
        doc[field]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .and_then(|t| u128::try_from(t.unix_timestamp_nanos()).ok())
    };
    let ended = unix("updated_at").unwrap_or_else(flotilla_queue::time::unix_nanos);
    Read::Final(
        Callback {
            call_id: id.to_owned(),
            arrived_ns: clock.ns_of_unix(ended),
            status: doc["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0),
            start_unix_ns: unix("accepted_at"),
        },
        state.to_owned(),
    )
}
