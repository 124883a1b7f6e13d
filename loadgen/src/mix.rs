//! `--priority-mix`: the share of calls sent with each `X-Priority` (`high=1,normal=90,low=9`,
//! weights in any unit), and which priority the n-th call gets; `--fairness-keys N --key-skew S`:
//! which of `N` keys (`key-0` ... `key-{N-1}`, key `k` drawn with weight `1/(k+1)^S`) the n-th
//! call carries in `X-Fairness-Key`. Both spread by a hash of the call's number and the run's
//! seed, so a run repeats from its seed.

use std::str::FromStr;

use flotilla_queue::Priority;

use crate::dist::KeySkew;

/// SplitMix64's finaliser of `seed` and `n`: consecutive numbers land far apart.
fn spread(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `--fairness-keys` and `--key-skew`: the key each call carries.
#[derive(Debug, Clone)]
pub struct KeyMix {
    skew: KeySkew,
}

impl KeyMix {
    /// `keys` must be at least 1; `exponent` 0 spreads calls evenly.
    pub fn new(keys: u32, exponent: f64) -> Self {
        Self {
            skew: KeySkew::new(keys.max(1) as usize, exponent),
        }
    }

    /// The key of the `n`-th call of a run seeded with `seed`, drawn apart from its priority.
    pub fn pick(&self, seed: u64, n: u64) -> u32 {
        let mut rng = fastrand::Rng::with_seed(spread(seed.rotate_left(29) ^ 0x6b65_7973, n));
        u32::try_from(self.skew.sample(&mut rng)).unwrap_or(u32::MAX)
    }

    /// The `X-Fairness-Key` of key `k`.
    pub fn name(k: u32) -> String {
        format!("key-{k}")
    }
}

/// Weights of `high`, `normal` and `low`, in `Priority::ALL` order; at least one is above 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityMix {
    weights: [u64; 3],
}

/// Why a `--priority-mix` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MixError {
    #[error("{0:?} is not <priority>=<weight> (high=1,normal=90,low=9)")]
    Shape(String),
    #[error("{0:?}: the priority must be high, normal or low")]
    Priority(String),
    #[error("{0:?}: the weight must be a whole number")]
    Weight(String),
    #[error("{0} is given twice")]
    Twice(Priority),
    #[error("every weight is 0")]
    Empty,
}

impl FromStr for PriorityMix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, MixError> {
        let mut weights = [0u64; 3];
        let mut given = [false; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| MixError::Shape(part.to_owned()))?;
            let p =
                Priority::parse(name.trim()).map_err(|_| MixError::Priority(part.to_owned()))?;
            let w = weight
                .trim()
                .parse()
                .map_err(|_| MixError::Weight(part.to_owned()))?;
            if std::mem::replace(&mut given[p.index()], true) {
                return Err(MixError::Twice(p));
            }
            weights[p.index()] = w;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err(MixError::Empty);
        }
        Ok(Self { weights })
    }
}

impl std::fmt::Display for PriorityMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = Priority::ALL
            .iter()
            .filter(|p| self.weights[p.index()] > 0)
            .map(|p| format!("{p}={}", self.weights[p.index()]))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl PriorityMix {
    /// The priority of the `n`-th call of a run seeded with `seed`.
    pub fn pick(&self, seed: u64, n: u64) -> Priority {
        let total: u64 = self.weights.iter().sum();
        let mut r = spread(seed, n) % total;
        for p in Priority::ALL {
            let w = self.weights[p.index()];
            if r < w {
                return p;
            }
            r -= w;
        }
        Priority::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_refuses_the_rest_with_a_reason() {
        let m: PriorityMix = "high=1, normal=90,low=9".parse().unwrap();
        assert_eq!(m.to_string(), "high=1,normal=90,low=9");
        assert_eq!("low=3".parse::<PriorityMix>().unwrap().to_string(), "low=3");
        assert_eq!(
            "high".parse::<PriorityMix>(),
            Err(MixError::Shape("high".into()))
        );
        assert_eq!(
            "urgent=1".parse::<PriorityMix>(),
            Err(MixError::Priority("urgent=1".into()))
        );
        assert_eq!(
            "high=x".parse::<PriorityMix>(),
            Err(MixError::Weight("high=x".into()))
        );
        assert_eq!(
            "high=1,high=2".parse::<PriorityMix>(),
            Err(MixError::Twice(Priority::High))
        );
        assert_eq!("normal=0".parse::<PriorityMix>(), Err(MixError::Empty));
    }

    #[test]
    fn picks_in_proportion_and_repeats_from_the_seed() {
        let m: PriorityMix = "high=1,normal=90,low=9".parse().unwrap();
        let mut counts = [0u32; 3];
        for n in 0..100_000 {
            counts[m.pick(7, n).index()] += 1;
        }
        assert!((800..1_200).contains(&counts[0]), "{counts:?}");
        assert!((88_000..92_000).contains(&counts[1]), "{counts:?}");
        assert!((8_400..9_600).contains(&counts[2]), "{counts:?}");
        assert_eq!(m.pick(7, 12), m.pick(7, 12));
        let only_low: PriorityMix = "low=1".parse().unwrap();
        assert!((0..100).all(|n| only_low.pick(1, n) == Priority::Low));
    }

    #[test]
    fn keys_follow_their_skew_and_repeat_from_the_seed() {
        let even = KeyMix::new(10, 0.0);
        let mut counts = [0u32; 10];
        for n in 0..10_000 {
            counts[even.pick(7, n) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        let skewed = KeyMix::new(1000, 1.0);
        let hot = (0..10_000).filter(|n| skewed.pick(7, *n) == 0).count();
        assert!((1000..1800).contains(&hot), "key 0 drew {hot} of 10,000");
        assert_eq!(skewed.pick(7, 42), skewed.pick(7, 42));
        assert_eq!(KeyMix::name(3), "key-3");
    }
}
