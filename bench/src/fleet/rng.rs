//! A small seeded pseudo-random generator (SplitMix64) for the simulated
//! hosts: repeatable runs, and no dependency for it.

use std::ops::{Bound, RangeBounds};

/// A seeded generator.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

macro_rules! in_range {
    ($($name:ident: $t:ty),*) => {$(
        /// Uniform in `range` (which must not be empty).
        pub(crate) fn $name(&mut self, range: impl RangeBounds<$t>) -> $t {
            let lo = match range.start_bound() {
                Bound::Included(x) => *x as i128,
                Bound::Excluded(x) => *x as i128 + 1,
                Bound::Unbounded => <$t>::MIN as i128,
            };
            let hi = match range.end_bound() {
                Bound::Included(x) => *x as i128 + 1,
                Bound::Excluded(x) => *x as i128,
                Bound::Unbounded => <$t>::MAX as i128 + 1,
            };
            assert!(lo < hi, "empty range");
            (lo + (self.next() as u128 % (hi - lo) as u128) as i128) as $t
        }
    )*};
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn with_seed(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// A fair coin.
    pub(crate) fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }

    in_range!(u32: u32, u64: u64, usize: usize, i64: i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold() {
        let mut r = Rng::with_seed(1);
        for _ in 0..10_000 {
            assert!((3..7).contains(&r.u32(3..7)));
            assert!((-2..=2).contains(&r.i64(-2..=2)));
            assert!(r.usize(..4) < 4);
            let f = r.f32();
            assert!((0.0..1.0).contains(&f));
        }
        assert_eq!(Rng::with_seed(5).u64(..), Rng::with_seed(5).u64(..));
    }
}
