//! The wait loop's state between events, as a plain struct: the [`Ledger`] (slots, requests, rate
//! credit), the replica's share of the function's rate, and the loop's clocks (when the function
//! was last busy, when its requests count as lost, when its consumer is read next). The loop in
//! `pull.rs` feeds it events and does the I/O it asks for.
//!
//! Invariant: no I/O and no waiting; time is tokio's clock, so paused time drives the tests.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

use super::ledger::{Ledger, Plan, RateShare};
use super::pace::{BUSY, Pace, QUIET_AFTER, Silence};
use crate::budget::Slot;

/// One waiting function's loop state in this replica.
#[derive(Debug)]
pub(crate) struct WaitState {
    ledger: Ledger,
    /// The function's cluster-wide rate, if it has one.
    rate: Option<NonZeroU32>,
    /// This replica's part of `rate`, split anew when the shard's replicas change.
    share: Option<RateShare>,
    /// Whether replica counts still arrive (only a rate depends on them).
    watch_replicas: bool,
    /// `--consumer-idle`: bounds how rarely a quiet function's consumer is read.
    consumer_idle: Duration,
    silence: Silence,
    /// When a message last arrived (or the loop started): the function is busy until
    /// [`QUIET_AFTER`] past it.
    last_activity: Instant,
    /// When the consumer is read next.
    next_info: Instant,
}

impl WaitState {
    /// `replicas`: the shard's replicas now, which split the rate.
    pub fn new(
        ledger: Ledger,
        rate: Option<NonZeroU32>,
        replicas: u32,
        consumer_idle: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            ledger,
            rate,
            share: rate.map(|r| RateShare::new(r, replicas)),
            watch_replicas: rate.is_some(),
            consumer_idle,
            silence: Silence::new(BUSY.lost_after),
            last_activity: now,
            next_info: now,
        }
    }

    /// A message arrived within [`QUIET_AFTER`].
    fn busy(&self) -> bool {
        self.last_activity.elapsed() < QUIET_AFTER
    }

    /// How to pace the next request and consumer reading.
    pub fn pace(&self) -> Pace {
        Pace::of(self.last_activity, self.consumer_idle)
    }

    /// The start of a turn: what to request, or `None` once the loop may end (nothing waits and
    /// no request of the loop is open at the server: a message sent to an inbox nobody reads
    /// would wait out `ack_wait`). `waiting`: calls of the function still wait; `paused`: the
    /// replica ran out of a resource and asks for nothing new.
    pub fn plan(&mut self, waiting: bool, paused: bool) -> Option<Plan> {
        if waiting {
            self.ledger.set_busy(self.busy());
            self.ledger.reserve();
        } else if self.ledger.outstanding() == 0 {
            return None;
        } else {
            // The open request runs out holding nothing back: the function's new calls start
            // directly, and other functions and the dispatch loop get the replica's permits
            // (holding them until the request expired stalled a replica for seconds).
            self.ledger.stand_down();
        }
        Some(self.ledger.plan(self.share.as_ref(), paused))
    }

    /// A request for `n` messages went out at `pace`.
    pub fn requested(&mut self, n: usize, pace: &Pace) {
        self.ledger.requested(n, self.share.is_some());
        self.silence.requested(pace.lost_after);
    }

    /// Anything arrived on the inbox (a message, a status, a heartbeat): the requests are alive.
    pub fn heard(&mut self) {
        self.silence.heard();
    }

    /// A message arrived: the slot it starts in, or `None` when it came beyond what was asked
    /// for (see [`Ledger::arrived`]).
    pub fn delivered(&mut self) -> Option<Slot> {
        self.last_activity = Instant::now();
        self.ledger.arrived()
    }

    /// A request ended with `unfulfilled` messages it will never deliver (`None`: all).
    pub fn expired(&mut self, unfulfilled: Option<usize>) {
        self.ledger.expired(unfulfilled);
    }

    /// Nothing arrived for too long: the open requests are gone with a NATS node.
    pub fn lost(&mut self) {
        self.ledger.expired(None);
    }

    /// A rate token came due.
    pub fn rate_token(&mut self) {
        self.ledger.rate_token();
    }

    /// The shard's replica count changed to `replicas`, or (`None`) will no longer be told
    /// (shutdown: the last share stays). True when the rate was split anew.
    pub fn replicas(&mut self, replicas: Option<u32>) -> bool {
        match (replicas, self.rate) {
            (Some(n), Some(rate)) => {
                let anew = self.share.as_ref().is_some_and(|s| s.replicas != n);
                if anew {
                    self.share = Some(RateShare::new(rate, n));
                }
                anew
            }
            _ => {
                self.watch_replicas = false;
                false
            }
        }
    }

    /// The consumer was read (or the reading failed): the next reading is due at the pace.
    pub fn info_read(&mut self) {
        self.next_info = Instant::now() + self.pace().info_every;
    }

    /// Whether the function's calls may start directly again, from a reading of its consumer:
    /// nothing pending, no move under way, and it is not a rate-limited function still busy (a
    /// rate-limited function's calls all pass through the loop: it stays for as long as they
    /// keep coming, rather than start over for each).
    pub fn drained(&self, num_pending: u64, always_waits: bool, moves: usize) -> bool {
        let lingering = always_waits && self.busy();
        num_pending == 0 && moves == 0 && !lingering
    }

    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    pub fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    pub fn share(&self) -> Option<&RateShare> {
        self.share.as_ref()
    }

    pub fn watch_replicas(&self) -> bool {
        self.watch_replicas
    }

    pub fn lost_at(&self) -> Instant {
        self.silence.lost_at()
    }

    pub fn next_info(&self) -> Instant {
        self.next_info
    }
}

#[cfg(test)]
mod tests;
