//! The dispatch loop's open pull requests, as a plain struct: how many messages it asked for and
//! has not received, and when the requests count as lost. Invariant: no I/O; time is tokio's
//! clock, so paused time drives the tests.

use tokio::time::Instant;

use crate::pull::{BUSY, Silence};

/// Messages asked for at once. Each is started, moved or (at the replica's cap) waits a moment
/// for a permit, so few wait in the inbox.
pub(crate) const BATCH: usize = 256;

/// The dispatch loop's requests at the server.
#[derive(Debug)]
pub(crate) struct Requests {
    /// Messages asked for and not yet delivered.
    outstanding: usize,
    silence: Silence,
}

impl Requests {
    pub fn new() -> Self {
        Self {
            outstanding: 0,
            silence: Silence::new(BUSY.lost_after),
        }
    }

    /// Messages to ask for now (0: none). Nothing while the replica is `paused`; otherwise a
    /// batch's worth again once half a batch has arrived, so calls keep flowing without a gap.
    pub fn want(&self, paused: bool) -> usize {
        if !paused && self.outstanding <= BATCH / 2 {
            BATCH - self.outstanding
        } else {
            0
        }
    }

    /// A request for `n` messages went out.
    pub fn requested(&mut self, n: usize) {
        self.outstanding += n;
        self.silence.requested(BUSY.lost_after);
    }

    /// Anything arrived on the inbox (a message, a status, a heartbeat): the requests are alive.
    pub fn heard(&mut self) {
        self.silence.heard();
    }

    /// A message arrived.
    pub fn arrived(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// A request ended with `unfulfilled` messages it will never deliver (`None`: all).
    pub fn expired(&mut self, unfulfilled: Option<usize>) {
        self.outstanding = unfulfilled.map_or(0, |n| self.outstanding.saturating_sub(n));
    }

    /// Nothing arrived for too long: the requests are gone with a NATS node.
    pub fn lost(&mut self) {
        self.outstanding = 0;
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    pub fn lost_at(&self) -> Instant {
        self.silence.lost_at()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn asks_for_a_batch_again_once_half_has_arrived() {
        let mut r = Requests::new();
        assert_eq!(r.want(false), BATCH);
        r.requested(BATCH);
        assert_eq!(r.want(false), 0);
        for _ in 0..BATCH / 2 - 1 {
            r.arrived();
        }
        assert_eq!(r.want(false), 0, "more than half a batch still on its way");
        r.arrived();
        assert_eq!(r.want(false), BATCH / 2);
        assert_eq!(r.want(true), 0, "a pause asks for nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn expiries_and_silence_clear_what_will_not_come() {
        let mut r = Requests::new();
        r.requested(BATCH);
        r.expired(Some(100));
        assert_eq!(r.outstanding(), BATCH - 100);
        r.expired(None);
        assert_eq!(r.outstanding(), 0);
        let sent = Instant::now();
        r.requested(10);
        assert_eq!(r.lost_at(), sent + BUSY.lost_after);
        tokio::time::advance(Duration::from_secs(1)).await;
        r.heard();
        assert_eq!(r.lost_at(), sent + Duration::from_secs(1) + BUSY.lost_after);
        r.lost();
        assert_eq!(r.want(false), BATCH);
    }
}
