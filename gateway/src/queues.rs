//! Queue visibility: per function, calls pending, in flight, retrying and dead, and the oldest
//! pending call's age, read from JetStream alone, so it holds while no worker runs. One snapshot,
//! kept [`SNAPSHOT_TTL`], answers `GET /system/queues` and sets the `flotilla_queue_*` gauges.
//! Where each number comes from and what a read costs: `docs/ARCHITECTURE.md`, gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use flotilla_queue::subjects::{self, DEAD_STREAM, DISPATCH_CONSUMER};
use flotilla_queue::{FunctionName, Priority, Topology};
use flotilla_runtime::Telemetry;
use futures_util::TryStreamExt;
use serde::Serialize;

/// How long a snapshot is served before NATS is read again.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(5);

pub const PENDING: &str = "flotilla_queue_pending";
pub const IN_FLIGHT: &str = "flotilla_queue_in_flight";
pub const RETRYING: &str = "flotilla_queue_retrying";
pub const DEAD: &str = "flotilla_queue_dead";
pub const OLDEST_AGE: &str = "flotilla_queue_oldest_pending_age_seconds";

/// One function's queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueRow {
    pub function: String,
    pub shard: u32,
    /// Accepted, not started, held by no worker (including calls waiting for their function to
    /// have room).
    pub pending: u64,
    /// Delivered to a worker and not yet settled.
    pub in_flight: u64,
    /// Failed attempts waiting for their next try.
    pub retrying: u64,
    /// In the dead letters.
    pub dead: u64,
    /// Age of the oldest pending call; 0 when none is pending.
    pub oldest_pending_age_seconds: f64,
    /// Calls the workers serving the function may have in flight at once now, summed over the
    /// replicas that reported it within the last few seconds; `null` when none did.
    pub concurrency_limit: Option<u64>,
    /// Whether that limit is learned from the function's refusals (adaptive) or fixed.
    pub adaptive: Option<bool>,
    /// Refusals (429, or 503 with `Retry-After`) the reporting replicas met since they started.
    pub refusals: Option<u64>,
    /// Calls the reporting replicas settled since they started (a counter: the difference of
    /// two readings over the time between them is the completion rate; it drops when a replica
    /// restarts or stops reporting).
    pub completed: Option<u64>,
}

/// Why the queues could not be read: `what` names what was being read.
#[derive(Debug, thiserror::Error)]
pub enum QueuesError {
    /// JetStream refused or did not answer; `source` is NATS's error (one of several types).
    #[error("reading {what} from JetStream: {source}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// JetStream answered something the read cannot use.
    #[error("reading {what} from JetStream: {answer}")]
    Answer { what: String, answer: String },
}

fn failed(
    what: impl Into<String>,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> QueuesError {
    QueuesError::Nats {
        what: what.into(),
        source: e.into(),
    }
}

fn bad_answer(what: String, answer: impl Into<String>) -> QueuesError {
    QueuesError::Answer {
        what,
        answer: answer.into(),
    }
}

/// The latest snapshot and when it was taken.
#[derive(Debug)]
pub struct Snapshots {
    latest: tokio::sync::Mutex<Option<(Instant, Arc<Vec<QueueRow>>)>>,
    /// Functions that have had gauges, so a queue that empties shows 0 instead of its last value.
    seen: std::sync::Mutex<std::collections::BTreeSet<(String, u32)>>,
    /// The gateway's recorder and series cap, which the gauges go to.
    telemetry: Telemetry,
}

impl Snapshots {
    /// No snapshot yet; the gauges will be set in `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            latest: tokio::sync::Mutex::default(),
            seen: std::sync::Mutex::default(),
            telemetry,
        }
    }

    /// The queues, read from NATS at most every [`SNAPSHOT_TTL`]; each fresh read also sets the
    /// gauges.
    pub async fn get(
        &self,
        js: &jetstream::Context,
        topology: &Topology,
    ) -> Result<Arc<Vec<QueueRow>>, QueuesError> {
        let mut latest = self.latest.lock().await;
        if let Some((at, rows)) = latest.as_ref()
            && at.elapsed() < SNAPSHOT_TTL
        {
            return Ok(rows.clone());
        }
        let rows = Arc::new(read(js, topology).await?);
        self.publish(&rows);
        *latest = Some((Instant::now(), rows.clone()));
        Ok(rows)
    }

    /// Sets the `flotilla_queue_*` gauges from `rows`; functions no longer listed go to 0.
    /// Functions beyond the series cap add up under `~other` (the oldest age is the oldest).
    fn publish(&self, rows: &[QueueRow]) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let mut labelled: BTreeMap<(String, u32), QueueRow> = BTreeMap::new();
        for r in rows {
            let label = self.telemetry.function_label(&r.function);
            let sum = labelled
                .entry((label.clone(), r.shard))
                .or_insert_with(|| QueueRow {
                    function: label,
                    shard: r.shard,
                    ..QueueRow::default()
                });
            sum.pending += r.pending;
            sum.in_flight += r.in_flight;
            sum.retrying += r.retrying;
            sum.dead += r.dead;
            sum.oldest_pending_age_seconds = sum
                .oldest_pending_age_seconds
                .max(r.oldest_pending_age_seconds);
        }
        self.telemetry.register(|| {
            for key in seen.iter().filter(|k| !labelled.contains_key(*k)) {
                set_gauges(&QueueRow {
                    function: key.0.clone(),
                    shard: key.1,
                    ..QueueRow::default()
                });
            }
            labelled.values().for_each(set_gauges);
        });
        seen.extend(labelled.into_keys());
    }
}

/// Describes the gauges; call once before the first scrape, inside [`Telemetry::register`].
pub fn describe() {
    use metrics::describe_gauge;
    describe_gauge!(
        PENDING,
        "Calls accepted and not started that no worker holds, by function and shard (read from NATS)"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Calls delivered to a worker and not yet settled, by function and shard (read from NATS)"
    );
    describe_gauge!(
        RETRYING,
        "Failed attempts waiting for their next try, by function and shard (read from NATS)"
    );
    describe_gauge!(
        DEAD,
        "Calls in the dead letters, by function and shard (read from NATS)"
    );
    describe_gauge!(
        OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest pending call, by function and shard; 0 when none is pending (read from NATS)"
    );
}

fn set_gauges(r: &QueueRow) {
    let labels = [
        ("function_name", r.function.clone()),
        ("shard", r.shard.to_string()),
    ];
    metrics::gauge!(PENDING, &labels).set(r.pending as f64);
    metrics::gauge!(IN_FLIGHT, &labels).set(r.in_flight as f64);
    metrics::gauge!(RETRYING, &labels).set(r.retrying as f64);
    metrics::gauge!(DEAD, &labels).set(r.dead as f64);
    metrics::gauge!(OLDEST_AGE, &labels).set(r.oldest_pending_age_seconds);
}

/// Messages per subject under `filter` in `stream` (none when the stream does not exist).
async fn subject_counts(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(String, u64)>, QueuesError> {
    let Ok(s) = js.get_stream_no_info(stream).await else {
        return Ok(Vec::new());
    };
    let counts: Vec<(String, usize)> = s
        .info_with_subjects(filter)
        .await
        .map_err(|e| failed(format!("the subjects of {stream}"), e))?
        .try_collect()
        .await
        .map_err(|e| failed(format!("the subjects of {stream}"), e))?;
    Ok(counts.into_iter().map(|(s, n)| (s, n as u64)).collect())
}

/// The last stream sequence a consumer delivered; 0 when it does not exist (nothing was ever
/// delivered through it).
async fn delivered(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<u64, QueuesError> {
    let Ok(s) = js.get_stream_no_info(stream).await else {
        return Ok(0);
    };
    match s.consumer_info(consumer).await {
        Ok(info) => Ok(info.delivered.stream_sequence),
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(0),
        Err(e) => Err(failed(format!("consumer {consumer} of {stream}"), e)),
    }
}

/// The first message of `subject` in `stream` after sequence `after`: when it was stored, and
/// how many messages of `subject` there are from it on. One batched direct get (NATS 2.11+),
/// whose answer carries the count of matching messages left in `Nats-Num-Pending`.
async fn pending_after(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    after: u64,
) -> Result<Option<(time::OffsetDateTime, u64)>, QueuesError> {
    let what = || format!("the calls of {subject} after {after}");
    let request = serde_json::json!({ "seq": after + 1, "next_by_subj": subject, "batch": 1 });
    let api = format!("$JS.API.DIRECT.GET.{stream}");
    let reply = js
        .client()
        .request(api, request.to_string().into())
        .await
        .map_err(|e| failed(what(), e))?;
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    // 404: no such message; 408 (or another status) is an error.
    match reply.status {
        Some(s) if s.as_u16() == 404 => return Ok(None),
        Some(s) if s.as_u16() >= 300 => {
            return Err(bad_answer(
                what(),
                format!("status {s}: {:?}", reply.description),
            ));
        }
        _ => {}
    }
    let stored = header("Nats-Time-Stamp")
        .and_then(|t| {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        })
        .ok_or_else(|| bad_answer(what(), "an answer without Nats-Time-Stamp"))?;
    let left: u64 = header("Nats-Num-Pending")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad_answer(what(), "an answer without Nats-Num-Pending"))?;
    Ok(Some((stored, left + 1)))
}

#[derive(Debug, Default)]
struct Counts {
    calls: u64,
    /// Calls in each priority's wait lane, in `Priority::ALL` order.
    waiting: [u64; 3],
    /// Calls parked under their fairness keys, per priority: all pending.
    parked: [u64; 3],
    retrying: u64,
    dead: u64,
}

/// Reads every function's queue from JetStream.
pub async fn read(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<Vec<QueueRow>, QueuesError> {
    let map = topology.shard_map();
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    let dead = subject_counts(js, DEAD_STREAM, &subjects::dead_wildcard()).await?;
    let mut dead_by_shard: BTreeMap<u32, Vec<(FunctionName, u64)>> = BTreeMap::new();
    for (subject, n) in dead {
        let Some(f) = subject
            .strip_prefix(subjects::DEAD_SUBJECT_PREFIX)
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| FunctionName::parse(s).ok())
        else {
            continue;
        };
        dead_by_shard
            .entry(map.shard_of(f.as_str()))
            .or_default()
            .push((f, n));
    }
    for shard in 0..topology.shards {
        let calls_stream = subjects::call_stream(shard);
        let wait_stream = subjects::wait_stream(shard);
        let mut counts: BTreeMap<FunctionName, Counts> = BTreeMap::new();
        // The call stream holds the shard's calls and its waiting retries: one read for both.
        for (subject, n) in subject_counts(js, &calls_stream, ">").await? {
            if let Some(f) = subjects::function_of_subject(shard, &subject) {
                counts.entry(f).or_default().calls += n;
            } else if let Some(f) = subjects::function_of_retry_subject(shard, &subject) {
                counts.entry(f).or_default().retrying += n;
            }
        }
        for (subject, n) in
            subject_counts(js, &wait_stream, &subjects::wait_wildcard(shard)).await?
        {
            if let Some((f, lane, _)) = subjects::park_of_wait_subject(shard, &subject) {
                counts.entry(f).or_default().parked[lane.index()] += n;
            } else if let Some((f, lane)) = subjects::lane_of_wait_subject(shard, &subject) {
                counts.entry(f).or_default().waiting[lane.index()] += n;
            }
        }
        for (f, n) in dead_by_shard.remove(&shard).unwrap_or_default() {
            counts.entry(f).or_default().dead += n;
        }
        let dispatched = delivered(js, &calls_stream, DISPATCH_CONSUMER).await?;
        for (f, c) in counts {
            let call_subject = subjects::call_subject(shard, &f);
            // Calls above the dispatch consumer's delivered sequence are pending; the rest of
            // the stored ones are held by a worker.
            let first_call = if c.calls == 0 {
                None
            } else {
                pending_after(js, &calls_stream, &call_subject, dispatched).await?
            };
            let calls_pending = first_call.map_or(0, |(_, n)| n.min(c.calls));
            // Each priority's lane has a consumer of its own: above its delivered sequence the
            // lane's calls are pending.
            let (mut waiting_pending, mut oldest) = (0, first_call.map(|(t, _)| t));
            for lane in Priority::ALL {
                let waiting = c.waiting[lane.index()];
                if waiting == 0 {
                    continue;
                }
                let consumer = subjects::lane_consumer_name(&f, lane);
                let waited = delivered(js, &wait_stream, &consumer).await?;
                let lane_subject = subjects::wait_lane_subject(shard, &f, lane);
                if let Some((t, n)) = pending_after(js, &wait_stream, &lane_subject, waited).await?
                {
                    waiting_pending += n.min(waiting);
                    oldest = Some(oldest.map_or(t, |o: time::OffsetDateTime| o.min(t)));
                }
            }
            // Parked calls are all pending; one batched direct get per lane finds the oldest,
            // whatever the number of keys.
            for lane in Priority::ALL {
                if c.parked[lane.index()] == 0 {
                    continue;
                }
                waiting_pending += c.parked[lane.index()];
                let parked = subjects::park_wildcard(shard, &f, lane);
                if let Some((t, _)) = pending_after(js, &wait_stream, &parked, 0).await? {
                    oldest = Some(oldest.map_or(t, |o: time::OffsetDateTime| o.min(t)));
                }
            }
            let waited_total: u64 = c.waiting.iter().sum::<u64>() + c.parked.iter().sum::<u64>();
            rows.push(QueueRow {
                function: f.as_str().to_owned(),
                shard,
                pending: calls_pending + waiting_pending,
                in_flight: (c.calls - calls_pending) + (waited_total - waiting_pending),
                retrying: c.retrying,
                dead: c.dead,
                oldest_pending_age_seconds: oldest
                    .map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0)),
                ..QueueRow::default()
            });
        }
    }
    rows.sort_by(|a, b| a.function.cmp(&b.function));
    Ok(rows)
}
