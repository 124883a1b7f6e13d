//! Completion reports: after each call a small event goes through a bounded queue to core NATS
//! (`flotilla.report.<function>`). Reports are statistics: when the queue is full they are
//! dropped and counted, so a slow NATS never slows calls down.

use flotilla_queue::report::{Report, report_subject};
use flotilla_queue::{Envelope, FunctionName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::Outcome;

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

async fn publish(client: &async_nats::Client, p: Pending) {
    let report = Report {
        call_id: p.call_id,
        function: p.function.as_str().to_owned(),
        status: p.status,
        duration_seconds: p.duration_seconds,
        attempt: p.attempt,
    };
    let Ok(json) = serde_json::to_vec(&report) else {
        return;
    };
    if let Err(error) = client
        .publish(report_subject(&p.function), json.into())
        .await
    {
        tracing::debug!(%error, "report not published");
    }
}

/// Starts the publishing task on `tracker`; it publishes what is queued until `closed` fires,
/// then what is left, and flushes.
pub(crate) fn start(
    capacity: usize,
    client: async_nats::Client,
    dropped: metrics::Counter,
    tracker: &TaskTracker,
    closed: CancellationToken,
) -> ReportQueue {
    let (tx, mut rx) = mpsc::channel::<Pending>(capacity);
    tracker.spawn(async move {
        // Taken in bursts so the publishes leave in few writes.
        let mut burst = Vec::with_capacity(REPORT_BURST);
        loop {
            let n = tokio::select! {
                biased;
                n = rx.recv_many(&mut burst, REPORT_BURST) => n,
                _ = closed.cancelled() => {
                    while burst.len() < REPORT_BURST {
                        let Ok(p) = rx.try_recv() else { break };
                        burst.push(p);
                    }
                    burst.len()
                }
            };
            if n == 0 {
                break;
            }
            for p in burst.drain(..) {
                publish(&client, p).await;
            }
        }
        let _ = client.flush().await;
    });
    ReportQueue { tx, dropped }
}
