//! The shard map: which shard stream holds a function's calls. Gateway and workers both call
//! `ShardMap::shard_of`; the shard count itself is agreed through `topology`.
//!
//! Invariant: the hash is spelled out here (FNV-1a 64 then jump consistent hash), not taken from
//! `std`, whose hasher may change between Rust releases and would silently move functions.

/// Maps function names onto `count` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    count: u32,
}

impl ShardMap {
    /// `count` must be at least 1; the configuration layer refuses 0 before this is built.
    pub fn new(count: u32) -> Self {
        assert!(count >= 1, "shard count must be at least 1");
        Self { count }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shard of `name`, in `0..count`. Jump hashing moves only 1/n of the functions when a
    /// shard is added, should an operator ever re-shard by draining.
    pub fn shard_of(&self, name: &str) -> u32 {
        jump_hash(fnv1a64(name.as_bytes()), self.count)
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// A short stable fingerprint of a name, used to keep derived identifiers unique.
pub fn fingerprint(name: &str) -> u32 {
    let h = fnv1a64(name.as_bytes());
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_releases() {
        // Pinned values: changing them moves every function to another shard.
        let m = ShardMap::new(4);
        let got: Vec<u32> = ["echo", "resize", "fn-17", "a.b"]
            .iter()
            .map(|n| m.shard_of(n))
            .collect();
        assert_eq!(got, vec![PINNED[0], PINNED[1], PINNED[2], PINNED[3]]);
        assert_eq!(ShardMap::new(1).shard_of("anything"), 0);
    }

    const PINNED: [u32; 4] = [2, 2, 2, 3];

    #[test]
    fn spreads_evenly() {
        let m = ShardMap::new(4);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[m.shard_of(&format!("fn-{i}")) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn growing_moves_few() {
        let (a, b) = (ShardMap::new(4), ShardMap::new(5));
        let moved = (0..5000)
            .filter(|i| {
                let n = format!("fn-{i}");
                a.shard_of(&n) != b.shard_of(&n)
            })
            .count();
        assert!(moved < 1300, "{moved} of 5000 moved");
    }
}
