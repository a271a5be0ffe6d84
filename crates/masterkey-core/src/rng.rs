//! A small seeded generator (SplitMix64) owned by the caller.
//!
//! burn's backends keep one global RNG; weights, shuffles and augmentations
//! are drawn from this one instead so that a run is a function of its seed
//! alone, whatever else runs in the process (tests run in parallel) and
//! whatever order burn initialises lazily.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// A generator for one item of a stream, e.g. `(seed, epoch, sample)`:
    /// independent of the order in which items are processed.
    pub fn for_item(seed: u64, stream: u64, item: u64) -> Self {
        let mut g = SplitMix(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        g.0 ^= g.next_u64().wrapping_add(item.wrapping_mul(0xD1B5_4A32_D192_ED03));
        g
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Normal with standard deviation `std`, redrawn outside `[-2, 2]`:
    /// timm's `trunc_normal_(std=std)` as ConvNeXt calls it, whose bounds
    /// `a=-2, b=2` are absolute values, not multiples of `std` (at std 0.02
    /// nothing is ever redrawn).
    pub fn trunc_normal(&mut self, std: f32) -> f32 {
        loop {
            let v = self.normal() * std;
            if v.abs() <= 2.0 {
                return v;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_items_are_independent_of_order() {
        let a: Vec<u64> = (0..5).map(|i| SplitMix::for_item(3, 1, i).next_u64()).collect();
        let b: Vec<u64> = (0..5).rev().map(|i| SplitMix::for_item(3, 1, i).next_u64()).collect();
        assert_eq!(a, b.into_iter().rev().collect::<Vec<_>>());
        assert_ne!(SplitMix::for_item(3, 1, 0).next_u64(), SplitMix::for_item(3, 2, 0).next_u64());
        let mut g = SplitMix::new(1);
        let mut v: Vec<usize> = (0..100).collect();
        g.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn normal_has_unit_variance_and_below_stays_in_range() {
        let mut g = SplitMix::new(9);
        let xs: Vec<f32> = (0..20000).map(|_| g.normal()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        assert!((0..1000).all(|_| g.below(7) < 7));
        // Bounds at ±2 absolute: std 0.02 keeps the normal's spread, std 1.5 is cut.
        let narrow: Vec<f32> = (0..20000).map(|_| g.trunc_normal(0.02)).collect();
        let std = (narrow.iter().map(|x| x * x).sum::<f32>() / narrow.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.001, "std {std}");
        assert!((0..1000).all(|_| g.trunc_normal(1.5).abs() <= 2.0));
    }
}
