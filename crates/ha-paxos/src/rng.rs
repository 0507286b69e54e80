//! The pinned pseudo-random generator behind election jitter.
//!
//! A run must reproduce from its seed on every platform and every build,
//! so the generator is spelled out here rather than taken from a crate
//! whose algorithm may change between versions. The algorithm is
//! SplitMix64 (Steele, Lea and Flood, 2014): 8 bytes of state, passes
//! BigCrush, and plenty for randomized timeouts.

/// A SplitMix64 generator: the same seed gives the same sequence
/// everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Golden-ratio increment of the SplitMix64 state.
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut x = self.state;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// A value in `lo..hi`; `lo` when the range is empty. Multiply-shift
    /// reduction: the bias is below 2^-32 for spans under 2^32.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = u128::from(hi - lo);
        lo + ((u128::from(self.next_u64()) * span) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // First outputs of the SplitMix64 reference implementation for
        // seed 1234567.
        let mut g = SplitMix64::new(1234567);
        assert_eq!(g.next_u64(), 6457827717110365317);
        assert_eq!(g.next_u64(), 3203168211198807973);
    }

    #[test]
    fn range_is_half_open_and_handles_empty() {
        let mut g = SplitMix64::new(11);
        for _ in 0..5_000 {
            assert!((10..20).contains(&g.range(10, 20)));
        }
        assert_eq!(g.range(9, 9), 9);
        assert_eq!(g.range(9, 3), 9);
    }
}
