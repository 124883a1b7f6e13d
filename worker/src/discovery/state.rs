//! The supervisor's bookkeeping, as plain structs: which loops run, when one that failed may start
//! again, whether the shard is ready, and whether discovery works. The supervisor in
//! `discovery.rs` only dispatches events to them and does the I/O.
//!
//! Invariant: a loop that failed is not started again before its wait is over (a second after a
//! retryable failure, thirty after NATS refused the consumer), however often it is asked for.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_queue::FunctionName;
use metrics::Gauge;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::pull::{Ended, PullError};

/// Wait before restarting a loop that failed with a retryable error.
pub(crate) const RESTART_AFTER: Duration = Duration::from_secs(1);
/// Wait before retrying a consumer that NATS refused (an operator must act first).
pub(crate) const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A running wait loop.
pub(crate) type Loop = JoinHandle<Result<Ended, PullError>>;

/// The shard's wait loops, one per function whose calls wait.
#[derive(Debug, Default)]
pub(crate) struct WaitLoops {
    running: HashMap<FunctionName, Loop>,
    /// When a function whose loop failed may have one again.
    not_before: HashMap<FunctionName, Instant>,
}

impl WaitLoops {
    /// Whether `name`'s loop runs, or ended and is not yet reaped.
    pub fn runs(&self, name: &FunctionName) -> bool {
        self.running.contains_key(name)
    }

    /// Whether a loop for `name` may start now: none runs and none failed too recently. A loop
    /// that ended and is not yet reaped is started again by the next pass, which finds its calls
    /// in the wait stream, once [`WaitLoops::reap`] has seen how it ended.
    pub fn may_start(&self, name: &FunctionName, now: Instant) -> bool {
        !self.runs(name) && self.not_before.get(name).is_none_or(|t| *t <= now)
    }

    pub fn started(&mut self, name: FunctionName, handle: Loop) {
        self.running.insert(name, handle);
    }

    /// Collects finished loops (each one less in `consumers`), logging why they ended and
    /// setting when they may start again.
    pub async fn reap(&mut self, shard: u32, consumers: &Gauge) {
        let done: Vec<FunctionName> = self
            .running
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(f, _)| f.clone())
            .collect();
        for f in done {
            let Some(handle) = self.running.remove(&f) else {
                continue;
            };
            consumers.decrement(1.0);
            if let Some(wait) = wait_loop_ended(handle.await, &f, shard) {
                self.not_before.insert(f, Instant::now() + wait);
            }
        }
    }

    /// Waits for every loop to end (they see the worker's stop signal), each one less in
    /// `consumers`.
    pub async fn stop(&mut self, consumers: &Gauge) {
        for (_, handle) in self.running.drain() {
            let _ = handle.await;
            consumers.decrement(1.0);
        }
    }
}

/// Logs how function `f`'s wait loop ended; how long until it may start again, if it failed.
fn wait_loop_ended(
    ended: Result<Result<Ended, PullError>, JoinError>,
    f: &FunctionName,
    shard: u32,
) -> Option<Duration> {
    match ended {
        Ok(Ok(Ended::Drained)) => {
            tracing::debug!(function = %f, shard, "no call of the function waits any more");
            None
        }
        Ok(Ok(Ended::Stopped)) => None,
        Ok(Err(error)) if error.is_retryable() => {
            tracing::warn!(function = %f, shard, %error, "pull loop failed; restarting");
            Some(RESTART_AFTER)
        }
        Ok(Err(error)) => {
            tracing::error!(function = %f, shard, %error, "NATS refused the function's consumer");
            Some(REFUSED_RETRY_AFTER)
        }
        Err(error) => {
            tracing::error!(function = %f, shard, %error, "pull loop panicked; restarting");
            Some(RESTART_AFTER)
        }
    }
}

/// The shard's dispatch loop: prepared once, restarted when it fails.
#[derive(Debug)]
pub(crate) struct DispatchLoop {
    handle: Option<JoinHandle<Result<(), PullError>>>,
    /// When preparing may be tried again after a failure.
    not_before: Instant,
    /// The loop started once: the shard counts as ready from then on.
    ready: bool,
}

impl DispatchLoop {
    pub fn new() -> Self {
        Self {
            handle: None,
            not_before: Instant::now(),
            ready: false,
        }
    }

    /// Whether to prepare and start the loop now: none runs, and no wait after a failure is
    /// under way.
    pub fn due(&self, now: Instant) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished) && now >= self.not_before
    }

    /// Collects a finished loop, logging how it ended.
    pub async fn reap(&mut self, shard: u32) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(shard, %error, "dispatch loop failed; restarting"),
            Err(error) => tracing::error!(shard, %error, "dispatch loop panicked; restarting"),
        }
    }

    /// The loop started; true the first time (the shard just became ready).
    pub fn started(&mut self, handle: JoinHandle<Result<(), PullError>>) -> bool {
        self.handle = Some(handle);
        !std::mem::replace(&mut self.ready, true)
    }

    /// Preparing the loop failed: it is tried again after a wait, a long one when NATS refused
    /// the consumer (`retryable` false).
    pub fn failed(&mut self, retryable: bool, now: Instant) {
        self.not_before = now
            + if retryable {
                RESTART_AFTER
            } else {
                REFUSED_RETRY_AFTER
            };
    }

    /// Waits for the loop to end (it sees the worker's stop signal).
    pub async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

/// Whether the last discovery pass worked, so a failure is logged once, not on every pass, and
/// the recovery once.
#[derive(Debug)]
pub(crate) struct Health {
    healthy: bool,
}

impl Health {
    pub fn new() -> Self {
        Self { healthy: true }
    }

    /// A pass worked; true when the one before failed.
    pub fn worked(&mut self) -> bool {
        !std::mem::replace(&mut self.healthy, true)
    }

    /// A pass failed; true when the one before worked.
    pub fn failed(&mut self) -> bool {
        std::mem::replace(&mut self.healthy, false)
    }
}

#[cfg(test)]
mod tests;
