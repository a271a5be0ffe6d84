//! Seeded randomness for crops and control banks: SplitMix64, so every
//! probe and every random bank is a function of its seed on any platform.

use masterkey_core::{Bank, KernelSize};

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform_in(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1]: the log is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A control bank: `keys` filters of `kernel` with independent standard
/// normal taps, normalised (zero mean, unit L2) like every bank.
pub fn random_bank(keys: usize, kernel: KernelSize, seed: u64) -> Bank {
    let mut rng = SplitMix64::new(seed);
    let taps = (0..keys * kernel.taps()).map(|_| rng.normal() as f32).collect();
    let labels = (1..=keys).map(|i| format!("random{i}")).collect();
    Bank::new(
        &format!("random{keys}-seed{seed}"),
        kernel,
        taps,
        labels,
        &format!("independent standard normal taps, SplitMix64 seed {seed}, normalised"),
        "none (generated)",
    )
    .expect("normal taps are finite and almost surely not constant")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bank_other_seed_other_bank() {
        let k7 = KernelSize::square(7);
        assert_eq!(random_bank(4, k7, 1), random_bank(4, k7, 1));
        assert_ne!(random_bank(4, k7, 1).keys, random_bank(4, k7, 2).keys);
        let bank = random_bank(16, k7, 3);
        assert_eq!((bank.len(), bank.kernel), (16, k7));
        for i in 0..16 {
            let key = bank.key(i);
            let mean = key.iter().sum::<f32>() / 49.0;
            let norm = key.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(mean.abs() < 1e-5 && (norm - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut rng = SplitMix64::new(9);
        let draws: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }
}
