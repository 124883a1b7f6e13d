//! Batch progress: how many of a batch's calls are in each state, from counters, never a scan.
//! Stored in `FLOTILLA_BATCHES` (the last message of each subject, for the status retention):
//! - `flotilla.batch.<id>.meta`: what the gateway accepted (the total, the batch callback URL),
//!   written when the batch's body ended;
//! - `flotilla.batch.<id>.p.<process>`: one process's counts for the batch, cumulative, written
//!   every second while they change. A process counts what it did (a worker: calls it ended,
//!   started and stored as retries; a gateway: calls it cancelled), so the counts add up across
//!   processes and survive their restarts (a restarted process writes under a new name);
//! - `flotilla.batch.<id>.done`: the counts when every call was final, written once (a
//!   compare-and-set) by the process that saw it first, which then sends the batch callback.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::status::{CallState, last_json};

pub const BATCH_STREAM: &str = "FLOTILLA_BATCHES";
pub const BATCH_SUBJECT_PREFIX: &str = "flotilla.batch";

/// What the gateway accepted in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub batch_id: String,
    pub function: String,
    /// Calls accepted (lines answered with a call id; a repeated key counts each time).
    pub total: u64,
    /// Lines refused.
    pub refused: u64,
    pub accepted_at: u128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// One process's counts for one batch (cumulative), or their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Calls running now.
    pub running: u64,
    /// Retries stored, and retries started: their difference is waiting.
    pub retries_stored: u64,
    pub retries_started: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.dead += o.dead;
        self.cancelled += o.cancelled;
        self.running += o.running;
        self.retries_stored += o.retries_stored;
        self.retries_started += o.retries_started;
    }

    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.dead + self.cancelled
    }
}

/// A batch's progress as clients read it: calls by state, and the total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub batch_id: String,
    pub function: String,
    pub total: u64,
    pub refused: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Every call is final.
    pub done: bool,
    /// Where the batch's own callback goes when every call is final; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl Progress {
    /// `counts` against `meta`. A call run twice after a crash may be counted twice: no state
    /// is shown above the total, and `queued` is what the others leave.
    pub fn of(meta: &Meta, c: &Counts) -> Self {
        let cap = |n: u64| n.min(meta.total);
        let finished = cap(c.finished());
        let retrying = c.retries_stored.saturating_sub(c.retries_started);
        let running = c.running.min(meta.total - finished);
        let retrying = retrying.min(meta.total - finished - running);
        Self {
            batch_id: meta.batch_id.clone(),
            function: meta.function.clone(),
            total: meta.total,
            refused: meta.refused,
            queued: meta.total - finished - running - retrying,
            running,
            retrying,
            succeeded: cap(c.succeeded),
            failed: cap(c.failed),
            dead: cap(c.dead),
            cancelled: cap(c.cancelled),
            done: finished >= meta.total,
            callback_url: meta.callback_url.clone(),
        }
    }
}

/// Why batch progress could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// JetStream did not answer or refused; its own error is the source.
    #[error("batch progress: {0}")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("batch progress: {0}")]
    Last(#[from] crate::status::LastError),
}

fn nats(e: impl std::error::Error + Send + Sync + 'static) -> BatchError {
    BatchError::Nats(Box::new(e))
}

fn subject(batch_id: &str, part: &str) -> String {
    format!(
        "{BATCH_SUBJECT_PREFIX}.{}.{part}",
        crate::status::key(batch_id)
    )
}

/// What a process counted, waiting to be written, and the batches it waits to see finished.
#[derive(Debug)]
pub struct Tally {
    js: jetstream::Context,
    /// This process's name in the counts' subjects: new at each start.
    process: String,
    state: Mutex<TallyState>,
}

#[derive(Debug, Default)]
struct TallyState {
    counts: HashMap<String, Counts>,
    dirty: HashSet<String>,
    /// Batches touched and not yet seen finished, with when they were last touched.
    open: HashMap<String, Instant>,
}

/// What a flush found: batches this process saw finish first (it wrote their `done`), with the
/// batch's meta and counts, so it can send the batch callback.
pub type Finished = Vec<(Meta, Progress)>;

impl Tally {
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            process: crate::envelope::new_call_id(),
            state: Mutex::new(TallyState::default()),
        }
    }

    /// Adds `change` to this process's counts of `batch_id`.
    pub fn count(&self, batch_id: &str, change: impl FnOnce(&mut Counts)) {
        if let Ok(mut s) = self.state.lock() {
            change(s.counts.entry(batch_id.to_owned()).or_default());
            s.dirty.insert(batch_id.to_owned());
            s.open.insert(batch_id.to_owned(), Instant::now());
        }
    }

    /// Counts a call of `batch_id` reaching a final state.
    pub fn ended(&self, batch_id: &str, state: CallState) {
        self.count(batch_id, |c| match state {
            CallState::Succeeded => c.succeeded += 1,
            CallState::Failed => c.failed += 1,
            CallState::Dead => c.dead += 1,
            CallState::Cancelled => c.cancelled += 1,
            CallState::Queued | CallState::Running | CallState::Retrying => {}
        });
    }

    /// Writes the counts that changed since the last write.
    pub async fn write(&self) -> Result<(), BatchError> {
        let dirty: Vec<(String, Counts)> = {
            let Ok(mut s) = self.state.lock() else {
                return Ok(());
            };
            let s = &mut *s;
            s.dirty
                .drain()
                .filter_map(|b| s.counts.get(&b).map(|c| (b.clone(), *c)))
                .collect()
        };
        for (i, (batch, counts)) in dirty.iter().enumerate() {
            let payload = serde_json::to_vec(counts).unwrap_or_default();
            let written = self
                .js
                .publish(
                    subject(batch, &format!("p.{}", self.process)),
                    payload.into(),
                )
                .await;
            let acked = match written {
                Ok(ack) => ack.await.map(drop).map_err(nats),
                Err(e) => Err(nats(e)),
            };
            if let Err(e) = acked {
                // Written at the next flush, with whatever they count by then.
                if let Ok(mut s) = self.state.lock() {
                    s.dirty.extend(dirty[i..].iter().map(|(b, _)| b.clone()));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Looks at every batch this process touched within `forget_after`: those found finished are
    /// claimed (`done`, a compare-and-set), and the ones this process won are returned, so it
    /// sends their batch callback. A batch whose meta is not written yet is looked at again.
    pub async fn done(&self, forget_after: Duration) -> Result<Finished, BatchError> {
        let open: Vec<String> = {
            let Ok(mut s) = self.state.lock() else {
                return Ok(Vec::new());
            };
            s.open.retain(|_, at| at.elapsed() < forget_after);
            s.open.keys().cloned().collect()
        };
        let mut won = Vec::new();
        for batch in open {
            let Some((meta, progress)) = read(&self.js, &batch).await? else {
                continue;
            };
            if !progress.done {
                continue;
            }
            if let Ok(mut s) = self.state.lock() {
                s.open.remove(&batch);
            }
            if claim(&self.js, &batch, &progress).await? {
                won.push((meta, progress));
            }
        }
        Ok(won)
    }
}

/// Writes a batch's meta (the gateway, when its body ended).
pub async fn write_meta(js: &jetstream::Context, meta: &Meta) -> Result<(), BatchError> {
    let payload = serde_json::to_vec(meta).unwrap_or_default();
    js.publish(subject(&meta.batch_id, "meta"), payload.into())
        .await
        .map_err(nats)?
        .await
        .map_err(nats)?;
    Ok(())
}

/// A batch's meta and progress, summed over every process's counts; `None` when no meta is
/// stored (unknown, not ended yet, or older than the retention).
pub async fn read(
    js: &jetstream::Context,
    batch_id: &str,
) -> Result<Option<(Meta, Progress)>, BatchError> {
    let stream = js.get_stream_no_info(BATCH_STREAM).await.map_err(nats)?;
    let Some((meta, _)) = last_json::<Meta>(&stream, subject(batch_id, "meta")).await? else {
        return Ok(None);
    };
    let filter = subject(batch_id, "p.*");
    let info = stream.info_with_subjects(filter).await.map_err(nats)?;
    let mut subjects = Vec::new();
    {
        use futures_util::TryStreamExt;
        let mut info = info;
        while let Some((s, _)) = info.try_next().await.map_err(nats)? {
            subjects.push(s);
        }
    }
    let mut sum = Counts::default();
    for s in subjects {
        if let Some((counts, _)) = last_json::<Counts>(&stream, s).await? {
            sum.add(&counts);
        }
    }
    let progress = Progress::of(&meta, &sum);
    Ok(Some((meta, progress)))
}

/// Writes `done` for a finished batch unless another process did first; true when this one did.
async fn claim(
    js: &jetstream::Context,
    batch_id: &str,
    progress: &Progress,
) -> Result<bool, BatchError> {
    let payload = serde_json::to_vec(progress).unwrap_or_default().into();
    let won = crate::status::publish_expecting(js, subject(batch_id, "done"), payload, 0)
        .await
        .map_err(nats)?;
    Ok(won.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(total: u64) -> Meta {
        Meta {
            batch_id: "b".into(),
            function: "f".into(),
            total,
            refused: 2,
            accepted_at: 1,
            callback_url: None,
        }
    }

    #[test]
    fn progress_adds_up_to_the_total() {
        let c = Counts {
            succeeded: 5,
            failed: 1,
            running: 2,
            retries_stored: 3,
            retries_started: 1,
            ..Counts::default()
        };
        let p = Progress::of(&meta(10), &c);
        assert_eq!(
            (
                p.queued,
                p.running,
                p.retrying,
                p.succeeded,
                p.failed,
                p.done
            ),
            (0, 2, 2, 5, 1, false)
        );
        let p = Progress::of(&meta(20), &c);
        assert_eq!(p.queued, 10);
        // Counted twice after a crash: never above the total.
        let over = Counts {
            succeeded: 12,
            ..Counts::default()
        };
        let p = Progress::of(&meta(10), &over);
        assert_eq!((p.succeeded, p.queued, p.done), (10, 0, true));
    }
}
