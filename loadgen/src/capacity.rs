//! `--function-capacity`: how many calls the built-in function takes at once, and how that
//! changes during a run (`4`, or `4,16@10s,4@20s`). Beyond it the function answers 429 at once,
//! as an OpenFaaS function does at its `max_inflight`.

use std::num::ParseIntError;
use std::str::FromStr;
use std::time::Duration;

use flotilla_queue::{DurationError, parse_duration};

/// Calls the function takes at once, from offsets since the load began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// `(from, calls)`, sorted by `from`; the first from zero.
    steps: Vec<(Duration, u32)>,
}

impl Capacity {
    /// The capacity `since` the load began.
    pub fn at(&self, since: Duration) -> u32 {
        self.steps
            .iter()
            .rev()
            .find(|(from, _)| *from <= since)
            .map_or(self.first(), |(_, c)| *c)
    }

    /// The capacity the run starts with: what a tuned fixed `concurrency` is set to.
    pub fn first(&self) -> u32 {
        self.steps[0].1
    }

    /// The shortest time `calls` calls of `latency` each can take: the function kept full
    /// throughout, its capacity changing on schedule.
    pub fn ideal(&self, calls: u64, latency: Duration) -> Duration {
        let mut work = latency.as_secs_f64() * calls as f64;
        let mut t = 0.0;
        for (i, (from, cap)) in self.steps.iter().enumerate() {
            let cap = f64::from(*cap);
            let span = self
                .steps
                .get(i + 1)
                .map_or(f64::INFINITY, |(next, _)| (*next - *from).as_secs_f64());
            if cap * span >= work {
                return Duration::from_secs_f64(t + work / cap);
            }
            work -= cap * span;
            t += span;
        }
        Duration::MAX
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (from, c)) in self.steps.iter().enumerate() {
            match i {
                0 => write!(f, "{c}")?,
                _ => write!(f, ",{c}@{}s", from.as_secs_f64())?,
            }
        }
        Ok(())
    }
}

/// Why a text is not a capacity schedule (`--function-capacity`); each message quotes the part
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("{0:?}: every capacity after the first needs @<time>")]
    MissingTime(String),
    #[error("{0:?}: the first capacity applies from the start (no @)")]
    FirstWithTime(String),
    #[error("{part:?}: {source}")]
    Time {
        part: String,
        #[source]
        source: DurationError,
    },
    #[error("{part:?}: capacity must be a whole number of calls")]
    NotWhole {
        part: String,
        #[source]
        source: ParseIntError,
    },
    #[error("{0:?}: capacity must be at least 1")]
    Zero(String),
    #[error("{0:?}: times must increase")]
    TimesNotIncreasing(String),
}

impl FromStr for Capacity {
    type Err = CapacityError;

    fn from_str(s: &str) -> Result<Self, CapacityError> {
        let mut steps = Vec::new();
        for (i, part) in s.split(',').enumerate() {
            let owned = || part.to_owned();
            let (calls, from) = match part.split_once('@') {
                None if i == 0 => (part, Duration::ZERO),
                None => return Err(CapacityError::MissingTime(owned())),
                Some(_) if i == 0 => return Err(CapacityError::FirstWithTime(owned())),
                Some((c, at)) => (
                    c,
                    parse_duration(at).map_err(|source| CapacityError::Time {
                        part: owned(),
                        source,
                    })?,
                ),
            };
            let calls: u32 = calls
                .trim()
                .parse()
                .map_err(|source| CapacityError::NotWhole {
                    part: owned(),
                    source,
                })?;
            if calls == 0 {
                return Err(CapacityError::Zero(owned()));
            }
            if steps.last().is_some_and(|(prev, _)| from <= *prev) {
                return Err(CapacityError::TimesNotIncreasing(owned()));
            }
            steps.push((from, calls));
        }
        Ok(Self { steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_schedule_and_computes_the_ideal() {
        let c: Capacity = "4,16@10s,4@20s".parse().unwrap();
        assert_eq!(c.to_string(), "4,16@10s,4@20s");
        assert_eq!(
            [0, 9, 10, 19, 25].map(|s| c.at(Duration::from_secs(s))),
            [4, 4, 16, 16, 4]
        );
        assert_eq!(c.first(), 4);
        // 2,000 calls of 50 ms: 800 in the first 10 s, the other 1,200 at 16 in 3.75 s.
        let ideal = c.ideal(2_000, Duration::from_millis(50));
        assert!((ideal.as_secs_f64() - 13.75).abs() < 1e-9, "{ideal:?}");
        let flat: Capacity = "4".parse().unwrap();
        assert_eq!(
            flat.ideal(2_000, Duration::from_millis(50)),
            Duration::from_secs(25)
        );
        for (bad, says) in [
            ("0", r#""0": capacity must be at least 1"#),
            (
                "4@1s",
                r#""4@1s": the first capacity applies from the start (no @)"#,
            ),
            (
                "4,8",
                r#""8": every capacity after the first needs @<time>"#,
            ),
            ("4,8@2s,2@1s", r#""2@1s": times must increase"#),
            ("x", r#""x": capacity must be a whole number of calls"#),
            (
                "4,8@soon",
                r#""8@soon": 'soon' is not a duration (e.g. 250ms, 30s, 1m30s)"#,
            ),
        ] {
            let e = bad.parse::<Capacity>().unwrap_err();
            assert_eq!(e.to_string(), says, "{bad}");
        }
    }
}
