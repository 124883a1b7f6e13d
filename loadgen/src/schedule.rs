//! The open-loop plan: the instant at which each call is meant to be sent, fixed or stepped rate.
//! Latency is measured from these instants, not from when the sender got round to it, so a
//! stalled system shows up in the percentiles instead of hiding behind coordinated omission.

use std::time::Duration;

/// One stage of a stepped load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStep {
    /// Calls per second.
    pub rate: f64,
    /// How long the step lasts; `None` lasts until the run ends.
    pub duration: Option<Duration>,
}

/// Yields intended send offsets (from the start of the run), evenly spaced within each step.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    steps: Vec<RateStep>,
    /// Index of the current step.
    step: usize,
    /// Offset at which the current step began.
    step_start: Duration,
    /// Calls already planned in the current step.
    in_step: u64,
    /// No call is planned at or after this offset.
    end: Duration,
}

impl OpenLoop {
    /// Calls planned over `steps`, none at or after `end`.
    pub fn new(steps: Vec<RateStep>, end: Duration) -> Self {
        Self {
            steps,
            step: 0,
            step_start: Duration::ZERO,
            in_step: 0,
            end,
        }
    }

    /// The rate in force at `offset`, for the report.
    pub fn rate_at(&self, offset: Duration) -> Option<f64> {
        let mut start = Duration::ZERO;
        for s in &self.steps {
            match s.duration {
                Some(d) if offset >= start + d => start += d,
                _ => return Some(s.rate),
            }
        }
        None
    }
}

impl Iterator for OpenLoop {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        loop {
            let step = *self.steps.get(self.step)?;
            let at = self.step_start + Duration::from_secs_f64(self.in_step as f64 / step.rate);
            let step_end = step.duration.map(|d| self.step_start + d);
            if step_end.is_some_and(|e| at >= e) {
                self.step += 1;
                self.step_start = step_end.unwrap_or(self.step_start);
                self.in_step = 0;
                continue;
            }
            if at >= self.end {
                self.steps.clear();
                return None;
            }
            self.in_step += 1;
            return Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, ms: Option<u64>) -> RateStep {
        RateStep {
            rate,
            duration: ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn fixed_rate_is_evenly_spaced() {
        let plan: Vec<Duration> =
            OpenLoop::new(vec![step(1000.0, None)], Duration::from_secs(1)).collect();
        assert_eq!(plan.len(), 1000);
        assert_eq!(plan[0], Duration::ZERO);
        assert_eq!(plan[1], Duration::from_millis(1));
        assert_eq!(plan[999], Duration::from_millis(999));
        assert!(plan.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn steps_follow_each_other() {
        let plan: Vec<Duration> = OpenLoop::new(
            vec![
                step(10.0, Some(1000)),
                step(100.0, Some(500)),
                step(20.0, None),
            ],
            Duration::from_secs(2),
        )
        .collect();
        // 10 in the first second, 50 in the next half, 10 in the last half.
        assert_eq!(plan.len(), 10 + 50 + 10);
        assert_eq!(plan[10], Duration::from_secs(1));
        assert_eq!(plan[11], Duration::from_millis(1010));
        assert_eq!(plan[60], Duration::from_millis(1500));
        assert!(plan.iter().all(|&t| t < Duration::from_secs(2)));
        assert!(plan.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn ends_with_the_last_bounded_step() {
        let plan: Vec<Duration> =
            OpenLoop::new(vec![step(4.0, Some(1000))], Duration::from_secs(60)).collect();
        assert_eq!(plan.len(), 4);
    }

    #[test]
    fn rate_at_reports_the_step() {
        let l = OpenLoop::new(
            vec![step(10.0, Some(1000)), step(30.0, None)],
            Duration::from_secs(5),
        );
        assert_eq!(l.rate_at(Duration::from_millis(999)), Some(10.0));
        assert_eq!(l.rate_at(Duration::from_millis(1000)), Some(30.0));
        assert_eq!(l.rate_at(Duration::from_secs(4)), Some(30.0));
    }
}
