//! The one backoff of the fleet: how long to wait before trying again, as pure arithmetic (no
//! timer, no runtime). The retry policy's backoff is part of the contract, and the gateway and
//! the worker wait for NATS and for callback receivers the same way, so every wait is computed
//! here and only the sleeping is left to the caller.
//!
//! The step grows from `min`, doubling each time, up to `max`; the jitter then decides where in
//! its range the wait falls. Who uses it, with which numbers:
//! - retry policy (worker `retry.rs`): `min_backoff` to `max_backoff`, [`Jitter::Full`];
//! - callback delivery (worker `callback.rs`): 200 ms to 5 s, [`Jitter::UpTo`] half a step;
//! - topology agreement: worker 250 ms to 5 s, gateway 100 ms to 2 s, [`Jitter::None`];
//! - following the cancel stream again (worker `status.rs`): 250 ms to 5 s, [`Jitter::None`].

use std::time::Duration;

/// Where in its range a wait falls. A roll is a number in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exactly the step. For a process waiting for NATS to come up: its few cheap requests need
    /// no spreading, and a predictable wait reads better in the logs.
    None,
    /// Uniform between `min` and the step ("full jitter" above a floor): spreads the retries of
    /// calls that failed together, while the floor keeps the function some rest however the dice
    /// fall.
    Full,
    /// The step plus up to this share of it (0.5: up to half a step more; held to [0, 1]), so
    /// waiters that failed together come back apart but never sooner than the step. The cap
    /// bounds the step, not the share added to it.
    UpTo(f64),
}

/// Exponential backoff: the step after `n` earlier waits is `min × 2^n`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff from `min` to `max`; a `max` below `min` is read as `min` (no growth).
    pub const fn new(min: Duration, max: Duration, jitter: Jitter) -> Self {
        let max = if max.as_nanos() < min.as_nanos() {
            min
        } else {
            max
        };
        Self { min, max, jitter }
    }

    /// The step after `n` earlier waits: `min × 2^n`, at most `max`.
    pub fn step(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The wait after `n` earlier waits, with a roll of the dice from a fast, non-cryptographic
    /// generator (jitter needs spread, not secrecy).
    pub fn delay(&self, n: u32) -> Duration {
        let roll = match self.jitter {
            Jitter::None => 0.0,
            Jitter::Full | Jitter::UpTo(_) => fastrand::f64(),
        };
        self.delay_at(n, roll)
    }

    /// The wait after `n` earlier waits for a given `roll` in [0, 1] (outside it, the nearest
    /// bound; not a number, 0): the deterministic core of [`delay`](Self::delay), for tests and
    /// for callers that bring their own dice.
    pub fn delay_at(&self, n: u32, roll: f64) -> Duration {
        let step = self.step(n);
        match self.jitter {
            Jitter::None => step,
            Jitter::Full => self.min + share(step - self.min, roll),
            Jitter::UpTo(fraction) => step.saturating_add(share(step, unit(fraction) * roll)),
        }
    }

    /// The successive waits of a loop that keeps no count of its own.
    pub fn delays(self) -> Delays {
        Delays {
            backoff: self,
            waited: 0,
        }
    }
}

/// A backoff in progress: each [`next_delay`](Self::next_delay) is one step further.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    waited: u32,
}

impl Delays {
    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.waited);
        self.waited = self.waited.saturating_add(1);
        delay
    }
}

/// `roll` of `span`, the roll first brought into [0, 1]; never more than `span`, which float
/// rounding could otherwise give.
fn share(span: Duration, roll: f64) -> Duration {
    Duration::try_from_secs_f64(span.as_secs_f64() * unit(roll))
        .unwrap_or(span)
        .min(span)
}

/// `x` in [0, 1]: the nearest bound outside it, 0 for not a number.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn steps_double_from_min_up_to_max() {
        let b = Backoff::new(100 * MS, 2000 * MS, Jitter::None);
        let steps: Vec<_> = (0..7).map(|n| b.step(n)).collect();
        assert_eq!(
            steps,
            [100, 200, 400, 800, 1600, 2000, 2000].map(|ms| ms * MS)
        );
        // Far past the cap nothing overflows.
        assert_eq!(b.step(31), 2000 * MS);
        assert_eq!(b.step(u32::MAX), 2000 * MS);
        let huge = Backoff::new(Duration::MAX, Duration::MAX, Jitter::UpTo(1.0));
        assert_eq!(huge.delay_at(40, 1.0), Duration::MAX);
    }

    #[test]
    fn a_max_below_min_means_no_growth() {
        let b = Backoff::new(2000 * MS, 1000 * MS, Jitter::Full);
        assert_eq!(b.step(0), 2000 * MS);
        assert_eq!(b.step(5), 2000 * MS);
        assert_eq!(b.delay_at(5, 1.0), 2000 * MS);
    }

    #[test]
    fn no_jitter_is_the_step() {
        let b = Backoff::new(250 * MS, 5000 * MS, Jitter::None);
        let mut delays = b.delays();
        let waits: Vec<_> = (0..7).map(|_| delays.next_delay()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 5000, 5000].map(|ms| ms * MS)
        );
        assert_eq!(b.delay_at(2, 0.7), 1000 * MS);
    }

    #[test]
    fn full_jitter_spans_min_to_the_step() {
        let b = Backoff::new(100 * MS, 1000 * MS, Jitter::Full);
        assert_eq!(b.delay_at(1, 0.0), 100 * MS);
        assert_eq!(b.delay_at(1, 1.0), 200 * MS);
        assert_eq!(b.delay_at(2, 0.5), 250 * MS);
        assert_eq!(b.delay_at(30, 1.0), 1000 * MS);
        // Rolls outside [0, 1] are held to its bounds.
        assert_eq!(b.delay_at(2, -3.0), 100 * MS);
        assert_eq!(b.delay_at(2, 7.0), 400 * MS);
        assert_eq!(b.delay_at(2, f64::NAN), 100 * MS);
        for n in 0..40 {
            for _ in 0..50 {
                let d = b.delay(n);
                assert!(d >= 100 * MS && d <= b.step(n), "{n}: {d:?}");
            }
        }
    }

    #[test]
    fn up_to_jitter_adds_at_most_its_share_of_the_step() {
        let b = Backoff::new(200 * MS, 5000 * MS, Jitter::UpTo(0.5));
        assert_eq!(b.delay_at(0, 0.0), 200 * MS);
        assert_eq!(b.delay_at(0, 1.0), 300 * MS);
        assert_eq!(b.delay_at(2, 0.5), 1000 * MS);
        // The cap bounds the step; the jitter comes on top.
        assert_eq!(b.delay_at(30, 1.0), 7500 * MS);
        for n in 0..40 {
            for _ in 0..50 {
                let (d, step) = (b.delay(n), b.step(n));
                assert!(d >= step && d <= step + step / 2, "{n}: {d:?}");
            }
        }
    }
}
