//! The randomness of a load: how long the built-in function takes (a latency distribution) and
//! which function each call goes to (a Zipf-like key skew). Both sample from a caller's seeded
//! `fastrand::Rng`, so a run is repeatable.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use flotilla_queue::{DurationError, parse_duration};

/// How long the built-in function takes to answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyDist {
    Fixed(Duration),
    /// Every value in `[min, max]` equally likely.
    Uniform {
        min: Duration,
        max: Duration,
    },
    /// Exponential with this mean: mostly short, a long tail, like real functions.
    Exponential {
        mean: Duration,
    },
}

impl LatencyDist {
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform { min, max } => min + (max - min).mul_f64(rng.f64()),
            Self::Exponential { mean } => {
                // 1 - u is in (0, 1], so ln is finite and the sample non-negative.
                mean.mul_f64(-(1.0 - rng.f64()).ln())
            }
        }
    }

    /// The mean, to size things (e.g. how long a drain may take).
    pub fn mean(&self) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform { min, max } => (min + max) / 2,
            Self::Exponential { mean } => mean,
        }
    }
}

/// Why a text is not a latency distribution (`--function-latency`, `--latency`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LatencyDistError {
    /// A duration in it does not parse; the duration's own message says why.
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("'{0}': uniform needs MIN..MAX, e.g. uniform:1ms..20ms")]
    UniformWithoutRange(String),
    #[error("'{0}': MIN exceeds MAX")]
    MinAboveMax(String),
    #[error("'{0}': expected fixed:D, uniform:MIN..MAX or exp:MEAN (e.g. exp:10ms)")]
    UnknownShape(String),
}

impl FromStr for LatencyDist {
    type Err = LatencyDistError;

    /// `5ms`, `fixed:5ms`, `uniform:1ms..20ms`, `exp:10ms`.
    fn from_str(s: &str) -> Result<Self, LatencyDistError> {
        let (kind, arg) = s.split_once(':').unwrap_or(("fixed", s));
        match kind {
            "fixed" => Ok(Self::Fixed(parse_duration(arg)?)),
            "uniform" => {
                let (a, b) = arg
                    .split_once("..")
                    .ok_or_else(|| LatencyDistError::UniformWithoutRange(s.to_owned()))?;
                let (min, max) = (parse_duration(a)?, parse_duration(b)?);
                if min > max {
                    return Err(LatencyDistError::MinAboveMax(s.to_owned()));
                }
                Ok(Self::Uniform { min, max })
            }
            "exp" | "exponential" => Ok(Self::Exponential {
                mean: parse_duration(arg)?,
            }),
            _ => Err(LatencyDistError::UnknownShape(s.to_owned())),
        }
    }
}

impl fmt::Display for LatencyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(d) => write!(f, "fixed:{d:?}"),
            Self::Uniform { min, max } => write!(f, "uniform:{min:?}..{max:?}"),
            Self::Exponential { mean } => write!(f, "exp:{mean:?}"),
        }
    }
}

/// Picks one of `n` keys with probability proportional to `1 / (k + 1)^exponent`: key 0 is the
/// hottest. Exponent 0 is uniform.
#[derive(Debug, Clone)]
pub struct KeySkew {
    /// Cumulative probabilities, the last one exactly 1.
    cdf: Vec<f64>,
}

impl KeySkew {
    /// `n` must be at least 1.
    pub fn new(n: usize, exponent: f64) -> Self {
        assert!(n >= 1, "at least one key");
        let weights: Vec<f64> = (0..n).map(|k| (k as f64 + 1.0).powf(-exponent)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Self { cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The share of calls key `k` receives.
    pub fn probability(&self, k: usize) -> f64 {
        self.cdf[k] - if k == 0 { 0.0 } else { self.cdf[k - 1] }
    }

    pub fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_shape() {
        assert_eq!(
            "5ms".parse::<LatencyDist>().unwrap(),
            LatencyDist::Fixed(Duration::from_millis(5))
        );
        assert_eq!(
            "uniform:1ms..3ms".parse::<LatencyDist>().unwrap(),
            LatencyDist::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(3)
            }
        );
        assert_eq!(
            "exp:10ms".parse::<LatencyDist>().unwrap(),
            LatencyDist::Exponential {
                mean: Duration::from_millis(10)
            }
        );
        for (bad, says) in [
            ("uniform:5ms..1ms", "'uniform:5ms..1ms': MIN exceeds MAX"),
            (
                "normal:5ms",
                "'normal:5ms': expected fixed:D, uniform:MIN..MAX or exp:MEAN (e.g. exp:10ms)",
            ),
            (
                "uniform:5ms",
                "'uniform:5ms': uniform needs MIN..MAX, e.g. uniform:1ms..20ms",
            ),
            (
                "exp:soon",
                "'soon' is not a duration (e.g. 250ms, 30s, 1m30s)",
            ),
        ] {
            let e = bad.parse::<LatencyDist>().unwrap_err();
            assert_eq!(e.to_string(), says);
        }
    }

    #[test]
    fn fixed_is_fixed() {
        let mut rng = fastrand::Rng::with_seed(7);
        let d = LatencyDist::Fixed(Duration::from_millis(3));
        assert!((0..100).all(|_| d.sample(&mut rng) == Duration::from_millis(3)));
    }

    #[test]
    fn uniform_stays_in_range_and_centres() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(30));
        let d = LatencyDist::Uniform { min, max };
        let samples: Vec<Duration> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        assert!(samples.iter().all(|s| (min..=max).contains(s)));
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(
            (mean.as_secs_f64() - 0.020).abs() < 0.0005,
            "mean {mean:?} should be near 20ms"
        );
    }

    #[test]
    fn exponential_has_its_mean_and_a_tail() {
        let mut rng = fastrand::Rng::with_seed(7);
        let d = LatencyDist::Exponential {
            mean: Duration::from_millis(10),
        };
        let mut samples: Vec<f64> = (0..50_000)
            .map(|_| d.sample(&mut rng).as_secs_f64())
            .collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 0.010).abs() < 0.0005, "mean {mean}");
        samples.sort_by(f64::total_cmp);
        // Median of an exponential is mean * ln 2; p99 is mean * ln 100.
        let median = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        assert!(
            (median - 0.010 * 2f64.ln()).abs() < 0.0005,
            "median {median}"
        );
        assert!((p99 - 0.010 * 100f64.ln()).abs() < 0.003, "p99 {p99}");
    }

    #[test]
    fn zipf_zero_is_uniform() {
        let skew = KeySkew::new(4, 0.0);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[skew.sample(&mut rng)] += 1;
        }
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn zipf_makes_the_first_keys_hot() {
        let skew = KeySkew::new(10, 1.2);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = [0u32; 10];
        let n = 100_000;
        for _ in 0..n {
            counts[skew.sample(&mut rng)] += 1;
        }
        // Frequencies fall with rank, and match the exact probabilities.
        assert!(counts.windows(2).all(|w| w[0] > w[1]), "{counts:?}");
        for (k, &c) in counts.iter().enumerate() {
            let expected = skew.probability(k) * f64::from(n);
            assert!(
                (f64::from(c) - expected).abs() < expected * 0.1 + 50.0,
                "key {k}: {c} vs {expected}"
            );
        }
        // 1/1^1.2 against 1/10^1.2: the hottest is about 16 times the coldest.
        let ratio = skew.probability(0) / skew.probability(9);
        assert!((ratio - 10f64.powf(1.2)).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn one_key_always_wins() {
        let skew = KeySkew::new(1, 2.0);
        let mut rng = fastrand::Rng::with_seed(1);
        assert!((0..100).all(|_| skew.sample(&mut rng) == 0));
    }
}
