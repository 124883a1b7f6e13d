//! How often a pull loop asks NATS for messages and reads its consumer, and when its open
//! requests count as lost. Invariant: no I/O; every deadline is read from tokio's clock, so paused
//! time drives the tests.

use std::time::Duration;

use tokio::time::Instant;

/// How a pull loop paces its requests to NATS. A busy function renews its pull request often and
/// notices a lost one quickly; a quiet one (nothing delivered or waiting for `QUIET_AFTER`) asks
/// rarely, so thousands of idle functions cost NATS and the worker little.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// How long a pull request waits at the server for messages before it expires and is renewed.
    pub expires: Duration,
    /// While a pull request waits, the server sends a heartbeat this often...
    pub heartbeat: Duration,
    /// ...so when nothing at all arrived for this long, the request is lost (this replica
    /// reconnected to another node, or the consumer's leader died with it) and is sent again.
    pub lost_after: Duration,
    /// How often the consumer is read (for `worker_pending` and idle detection).
    pub info_every: Duration,
}

pub(crate) const BUSY: Pace = Pace {
    expires: Duration::from_secs(5),
    heartbeat: Duration::from_secs(1),
    lost_after: Duration::from_millis(2500),
    info_every: Duration::from_secs(1),
};
pub(crate) const QUIET: Pace = Pace {
    expires: Duration::from_secs(30),
    heartbeat: Duration::from_secs(5),
    lost_after: Duration::from_millis(11_000),
    info_every: Duration::from_secs(30),
};
/// A function with nothing delivered for this long is quiet.
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(10);

impl Pace {
    pub fn of(last_activity: Instant, consumer_idle: Duration) -> Self {
        let mut pace = if last_activity.elapsed() < QUIET_AFTER {
            BUSY
        } else {
            QUIET
        };
        // Idle detection must be able to act within `--consumer-idle`, and a released consumer
        // must not be kept alive by its last request for much longer than that.
        pace.info_every = pace.info_every.min(consumer_idle / 2);
        if pace.expires > consumer_idle.max(BUSY.expires) {
            pace = Pace {
                info_every: pace.info_every,
                ..BUSY
            };
        }
        pace
    }
}

/// When a loop's open pull requests count as lost: `lost_after` past the last request sent or
/// the last thing heard on the inbox (a message, a status or a heartbeat).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Silence {
    lost_after: Duration,
    lost_at: Instant,
}

impl Silence {
    pub fn new(lost_after: Duration) -> Self {
        Self {
            lost_after,
            lost_at: Instant::now(),
        }
    }

    /// A request went out with a server heartbeat that makes silence mean `lost_after`.
    pub fn requested(&mut self, lost_after: Duration) {
        self.lost_after = lost_after;
        self.heard();
    }

    /// Anything arrived on the inbox: the requests are alive.
    pub fn heard(&mut self) {
        self.lost_at = Instant::now() + self.lost_after;
    }

    /// When the open requests count as lost unless something arrives first.
    pub fn lost_at(&self) -> Instant {
        self.lost_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quiet_functions_ask_rarely_but_within_the_idle_time() {
        let now = Instant::now();
        let five_minutes = Duration::from_secs(300);
        assert_eq!(Pace::of(now, five_minutes).expires, BUSY.expires);
        tokio::time::advance(Duration::from_secs(60)).await;
        let quiet = Pace::of(now, five_minutes);
        assert_eq!(
            (quiet.expires, quiet.info_every),
            (QUIET.expires, QUIET.info_every)
        );
        let short_idle = Pace::of(now, Duration::from_secs(2));
        assert_eq!(short_idle.expires, BUSY.expires);
        assert_eq!(short_idle.info_every, Duration::from_secs(1));
        for p in [BUSY, QUIET] {
            // The server refuses a heartbeat above half the expiry; two may be lost.
            assert!(p.heartbeat * 2 <= p.expires && p.lost_after > p.heartbeat * 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_counts_from_the_last_request_or_arrival() {
        let start = Instant::now();
        let mut s = Silence::new(BUSY.lost_after);
        assert_eq!(s.lost_at(), start, "nothing open: no deadline ahead");
        s.requested(QUIET.lost_after);
        assert_eq!(s.lost_at(), start + QUIET.lost_after);
        tokio::time::advance(Duration::from_secs(3)).await;
        s.heard();
        assert_eq!(
            s.lost_at(),
            start + Duration::from_secs(3) + QUIET.lost_after,
            "a heartbeat pushes the deadline out by the pace of the last request"
        );
    }
}
