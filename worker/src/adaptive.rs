//! Adaptive concurrency: one function's limit in this replica, learned from its answers. A plain
//! struct fed samples on a clock the caller passes in, so its tests run on a simulated one.
//!
//! Invariants: the limit stays within `[min, max]`; a refusal never raises it and a success
//! never lowers it; nothing here sleeps or reads the time. Why this controller, with the
//! measurements: `docs/flow-control.md`.

use std::time::Duration;

use tokio::time::Instant;

/// The limit a function starts at across the replicas serving it, below its ceiling: a function
/// that takes only a few calls sees at most about this many at once before its first refusal,
/// and slow start doubles each replica's part per round trip while the function keeps up.
pub(crate) const INITIAL: u32 = 8;
/// The quiet period after a refusal before the limit grows again...
const HOLD_MIN: Duration = Duration::from_millis(250);
/// ...doubled each time a probe above it is refused, up to this. It bounds how long room that
/// appears (more replicas) goes unused, and how often a full function is probed.
const HOLD_MAX: Duration = Duration::from_secs(2);
/// The largest step of one probe: steps double while probes find room.
const STEP_MAX: u32 = 64;
/// How long a replica sends nothing more after a refusal at its floor: the function refuses
/// even `min` calls, so it is down, not full. Doubled per refusal, reset by a success.
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

/// One function's learned concurrency in this replica.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    limit: u32,
    min: u32,
    max: u32,
    /// Until the first refusal, each success at full use adds one call: the limit doubles per
    /// round trip, so a function without limits reaches its ceiling at once.
    slow_start: bool,
    /// No growth before this: the quiet period after a refusal, or a probe's wait for its
    /// verdict.
    hold_until: Option<Instant>,
    /// The quiet period after the next refusal.
    hold: Duration,
    /// The level a probe raised the limit to, until a call sent at that level answers (the
    /// function had room) or a refusal does (it had not).
    probing: Option<u32>,
    /// What the next probe adds.
    step: u32,
    /// The pause the next refusal at the floor brings.
    pause: Duration,
}

/// What a refusal does to the replica's sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The limit is lowered; the refused call waits for room like any other.
    Lowered,
    /// Even the floor is too much: send nothing more for this long.
    Pause(Duration),
}

impl Refusal {
    /// How long the refused call's function slot stays taken.
    pub fn pause(&self) -> Duration {
        match self {
            Refusal::Lowered => Duration::ZERO,
            Refusal::Pause(pause) => *pause,
        }
    }
}

impl Limit {
    /// A limit between `min` and `max` for one of `replicas` replicas, which start with an
    /// equal part of [`INITIAL`].
    pub fn new(min: u32, max: u32, replicas: u32) -> Self {
        let max = max.max(1);
        let min = min.clamp(1, max);
        Self {
            limit: INITIAL.div_ceil(replicas.max(1)).clamp(min, max),
            min,
            max,
            slow_start: true,
            hold_until: None,
            hold: HOLD_MIN,
            probing: None,
            step: 1,
            pause: PAUSE_MIN,
        }
    }

    /// The calls this replica may have in flight at the function now.
    pub fn current(&self) -> u32 {
        self.limit
    }

    /// A new ceiling (this replica's share of the cluster-wide one changed).
    pub fn set_max(&mut self, max: u32) {
        self.max = max.max(1);
        self.min = self.min.min(self.max);
        self.limit = self.limit.clamp(self.min, self.max);
    }

    /// The function answered, with anything but a refusal, a call that was sent with
    /// `in_flight` calls at it (itself included).
    pub fn succeeded(&mut self, now: Instant, in_flight: u32) {
        self.pause = PAUSE_MIN;
        // Only a limit that was in use learns that it can grow: a quiet function keeps its limit.
        if in_flight * 2 < self.limit {
            return;
        }
        if self.slow_start {
            self.limit = (self.limit + 1).min(self.max);
            return;
        }
        match self.probing {
            // No verdict yet: no call has been at the function at the probed level.
            Some(level) if in_flight < level => return,
            Some(_) => {
                // The probed level was used and met no refusal: look further, sooner.
                self.hold = (self.hold / 2).max(HOLD_MIN);
                self.step = (self.step * 2).min(STEP_MAX);
            }
            None if self.hold_until.is_some_and(|until| now < until) => return,
            None => {}
        }
        self.limit = (self.limit + self.step).min(self.max);
        self.probing = Some(self.limit);
    }

    /// Calls wait for the function's slots while it has never refused one: in slow start the
    /// limit doubles to meet them (up to the ceiling) rather than send them to wait elsewhere.
    /// `false` once the function has refused, or at the ceiling.
    pub fn grow_on_demand(&mut self) -> bool {
        if !self.slow_start || self.limit >= self.max {
            return false;
        }
        self.limit = (self.limit * 2).min(self.max);
        true
    }

    /// The function refused a call (429, or 503 with `Retry-After`) that was sent with
    /// `in_flight` calls at it (itself included), while it held `others` more of this
    /// replica's calls: those still at it, and those it answered since the call was sent (their
    /// answers crossed the refusal). It has room for at most `others`.
    pub fn refused(&mut self, now: Instant, in_flight: u32, others: u32) -> Refusal {
        let at_floor = others < self.min;
        if in_flight > self.limit && !self.slow_start {
            // Sent beyond today's limit (before it came down): the refusal says only that the
            // function holds no more than `others`; it is no new verdict on a probe.
            self.limit = self.limit.min(others).max(self.min);
        } else {
            self.slow_start = false;
            self.limit = others
                .min(self.limit.saturating_sub(1))
                .clamp(self.min, self.max);
            if self.probing.take().is_some() {
                // The probe found the edge: wait longer before the next one.
                self.hold = (self.hold * 2).min(HOLD_MAX);
            }
            self.step = 1;
            self.hold_until = Some(now + self.hold);
        }
        if at_floor {
            let pause = self.pause;
            self.pause = (self.pause * 2).min(PAUSE_MAX);
            Refusal::Pause(pause)
        } else {
            Refusal::Lowered
        }
    }
}

#[cfg(test)]
mod tests;
