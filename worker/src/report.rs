//! Completion reports: after each call a small event goes through a bounded queue to a task that
//! batches them per function and publishes each batch as one core NATS message on
//! `flotilla.report.<function>` (JSON Lines, see `flotilla_queue::report`). Reports are
//! statistics: when the queue is full they are dropped and counted, so a slow NATS never slows
//! calls down.
//!
//! Why batches: one publish per call cost about 4 µs of CPU per call across the worker and
//! nats-server (a subject, a JSON buffer and a protocol message each), a tenth of what the whole
//! "pull → POST → ack" path costs. A batch is published when it holds `BATCH_EVENTS` events or
//! `BATCH_BYTES` bytes, or `FLUSH_AFTER` after its first event, whichever comes first.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::Subject;
use flotilla_queue::report::ReportRef;
use flotilla_queue::subjects::{function_of_report_subject, report_subject};
use flotilla_queue::{Envelope, FunctionName};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::outcome::Outcome;

/// What the call path hands over: no JSON and no subject formatting on the call path.
#[derive(Debug)]
struct Pending {
    call_id: String,
    function: FunctionName,
    status: u16,
    duration_seconds: f64,
    attempt: u32,
}

/// The sending side, held by calls.
#[derive(Debug, Clone)]
pub(crate) struct ReportQueue {
    tx: mpsc::Sender<Pending>,
    dropped: metrics::Counter,
}

impl ReportQueue {
    /// Queues a report, or drops and counts it when the queue is full.
    pub fn send(&self, env: &Envelope, outcome: &Outcome) {
        let Ok(permit) = self.tx.try_reserve() else {
            self.dropped.increment(1);
            return;
        };
        permit.send(Pending {
            call_id: env.call_id.clone(),
            function: env.function.clone(),
            status: outcome.status.as_u16(),
            duration_seconds: outcome.duration.as_secs_f64(),
            attempt: outcome.attempt.number(),
        });
    }
}

/// Reports taken from the queue at once.
const REPORT_BURST: usize = 256;
/// Events in one published batch, at most.
const BATCH_EVENTS: usize = 128;
/// A batch is published once it holds this many bytes (a report line is about 120 bytes), well
/// under NATS's default 1 MiB payload limit.
const BATCH_BYTES: usize = 32 * 1024;
/// How long the first event of a batch may wait for company.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Functions whose subjects and buffers are kept between flushes; beyond it the map is cleared
/// after a flush, so a worker that saw many functions once does not keep them all.
const KEEP_FUNCTIONS: usize = 1024;

/// One function's batch in the making.
struct Batch {
    subject: Subject,
    buf: Vec<u8>,
    events: usize,
}

/// The batches of every function, and when the oldest unpublished event must leave.
struct Batches {
    by_function: HashMap<FunctionName, Batch>,
    due: Option<Instant>,
}

impl Batches {
    fn new() -> Self {
        Self {
            by_function: HashMap::new(),
            due: None,
        }
    }

    /// Adds an event; returns a full batch to publish now.
    fn add(&mut self, p: Pending) -> Option<(Subject, Vec<u8>)> {
        let batch = self
            .by_function
            .entry(p.function)
            .or_insert_with_key(|f| Batch {
                subject: Subject::from(report_subject(f)),
                buf: Vec::new(),
                events: 0,
            });
        write_event(
            &mut batch.buf,
            &ReportRef {
                call_id: &p.call_id,
                function: function_of(&batch.subject),
                status: p.status,
                duration_seconds: p.duration_seconds,
                attempt: p.attempt,
            },
        );
        batch.events += 1;
        self.due.get_or_insert_with(|| Instant::now() + FLUSH_AFTER);
        if batch.events >= BATCH_EVENTS || batch.buf.len() >= BATCH_BYTES {
            return Some(batch.take());
        }
        None
    }

    /// Every unpublished batch.
    fn take_all(&mut self) -> Vec<(Subject, Vec<u8>)> {
        self.due = None;
        let out = self
            .by_function
            .values_mut()
            .filter(|b| b.events > 0)
            .map(Batch::take)
            .collect();
        if self.by_function.len() > KEEP_FUNCTIONS {
            self.by_function.clear();
        }
        out
    }
}

/// The function's name, borrowed from its report subject (`flotilla.report.<function>`).
fn function_of(subject: &Subject) -> &str {
    function_of_report_subject(subject.as_str()).unwrap_or_default()
}

impl Batch {
    fn take(&mut self) -> (Subject, Vec<u8>) {
        self.events = 0;
        let cap = self.buf.len();
        (
            self.subject.clone(),
            std::mem::replace(&mut self.buf, Vec::with_capacity(cap)),
        )
    }
}

/// Appends one event as a JSON line.
fn write_event(buf: &mut Vec<u8>, r: &ReportRef<'_>) {
    // Plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, r);
    buf.push(b'\n');
}

async fn publish(client: &async_nats::Client, (subject, buf): (Subject, Vec<u8>)) {
    if let Err(error) = client.publish(subject, buf.into()).await {
        tracing::debug!(%error, "reports not published");
    }
}

/// Starts the publishing task on `tracker`; it batches and publishes what is queued until
/// `closed` fires, then what is left, and flushes.
pub(crate) fn start(
    capacity: usize,
    client: async_nats::Client,
    dropped: metrics::Counter,
    tracker: &TaskTracker,
    closed: CancellationToken,
) -> ReportQueue {
    let (tx, mut rx) = mpsc::channel::<Pending>(capacity);
    tracker.spawn(async move {
        let mut burst = Vec::with_capacity(REPORT_BURST);
        let mut batches = Batches::new();
        let mut closing = false;
        loop {
            let due = batches.due;
            let n = tokio::select! {
                biased;
                n = rx.recv_many(&mut burst, REPORT_BURST), if !closing => n,
                _ = closed.cancelled(), if !closing => {
                    closing = true;
                    while let Ok(p) = rx.try_recv() {
                        burst.push(p);
                    }
                    burst.len()
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => 0,
            };
            for p in burst.drain(..) {
                if let Some(full) = batches.add(p) {
                    publish(&client, full).await;
                }
            }
            if closing || n == 0 || batches.due.is_some_and(|d| d <= Instant::now()) {
                for b in batches.take_all() {
                    publish(&client, b).await;
                }
            }
            if closing || (n == 0 && due.is_none()) {
                // Closed, or every sender is gone.
                break;
            }
        }
        let _ = client.flush().await;
    });
    ReportQueue { tx, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_queue::report::{Report, split_batch};

    fn pending(function: &str, id: usize) -> Pending {
        Pending {
            call_id: format!("c-{id}"),
            function: FunctionName::parse(function).unwrap(),
            status: 200,
            duration_seconds: 0.25,
            attempt: 1,
        }
    }

    #[test]
    fn batches_per_function_and_publishes_full_ones() {
        let mut b = Batches::new();
        for i in 0..BATCH_EVENTS - 1 {
            assert!(b.add(pending("a.ns", i)).is_none());
        }
        assert!(b.add(pending("b", 0)).is_none());
        let (subject, buf) = b.add(pending("a.ns", 999)).expect("a full batch");
        assert_eq!(subject.as_str(), "flotilla.report.a.ns");
        let reports: Vec<Report> = split_batch(&buf)
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        assert_eq!(reports.len(), BATCH_EVENTS);
        assert_eq!(reports[0].call_id, "c-0");
        assert_eq!(reports[0].function, "a.ns");
        assert_eq!(reports[BATCH_EVENTS - 1].call_id, "c-999");
        // Only b's event is left.
        let rest = b.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0.as_str(), "flotilla.report.b");
        let r: Report = serde_json::from_slice(&rest[0].1).unwrap();
        assert_eq!((r.call_id.as_str(), r.status, r.attempt), ("c-0", 200, 1));
        assert!(b.take_all().is_empty());
        assert!(b.due.is_none());
    }
}
