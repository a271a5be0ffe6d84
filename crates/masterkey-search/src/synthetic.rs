//! Synthetic filters made as `a*key + b + noise` from a known bank: test data
//! whose right answer is known, and benchmark data shaped like trained filters.

use masterkey_core::{Bank, DwLayer, FilterSet, KernelSize, ModelFilters};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::filters::NormalisedFilters;

/// A standard normal draw (Box-Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

/// `per_key` copies of every key of `bank`, each `a*key + b + noise` with
/// `|a|` in [0.2, 2] of either sign, `b` in [-0.5, 0.5] and Gaussian noise of
/// L2 norm `noise * |a|`, shuffled into one layer of a set.
pub fn shifted_set(bank: &Bank, per_key: usize, noise: f32, seed: u64) -> FilterSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let taps = bank.kernel.taps();
    let mut order: Vec<usize> = (0..bank.len() * per_key).map(|i| i % bank.len()).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let mut weights = Vec::with_capacity(order.len() * taps);
    for &k in &order {
        let a = rng.random_range(0.2f32..2.0) * if rng.random::<bool>() { 1.0 } else { -1.0 };
        let b = rng.random_range(-0.5f32..0.5);
        let e: Vec<f32> = (0..taps).map(|_| gaussian(&mut rng)).collect();
        let e_norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        weights.extend(bank.key(k).iter().zip(&e).map(|(&x, &e)| a * x + b + noise * a.abs() * e / e_norm));
    }
    let layer = DwLayer::new("synthetic", bank.kernel, order.len(), weights).expect("valid layer");
    let mut set = FilterSet::default();
    set.add_model(&ModelFilters { source: "synthetic".into(), format: "test".into(), layers: vec![layer] });
    set
}

/// The normalised filters of [`shifted_set`].
pub fn shifted_copies(bank: &Bank, per_key: usize, noise: f32, seed: u64) -> NormalisedFilters {
    NormalisedFilters::from_group(&shifted_set(bank, per_key, noise, seed).groups[&bank.kernel])
}

/// Wraps found keys in a bank for [`crate::compare`].
pub fn bank_of(keys: &[f32], kernel: KernelSize, name: &str) -> Bank {
    let labels = (1..=keys.len() / kernel.taps()).map(|i| format!("key{i}")).collect();
    Bank::new(name, kernel, keys.to_vec(), labels, "test", "test").expect("valid keys")
}
