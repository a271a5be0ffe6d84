//! Sign-invariant spherical k-means: `x` and `-x` are one key.
//!
//! - assignment: each filter goes to the centroid with the largest `|cos|`;
//! - update: a centroid becomes the sum of its members, each flipped to agree
//!   in sign with it, re-normalised (zero mean, unit norm);
//! - objective: the sum of `|cos|` of every filter to its centroid (maximised);
//! - seeding: k-means++ with the distance `1 - |cos|`, which for unit vectors
//!   is half the squared Euclidean distance to the nearer of `c` and `-c`, so
//!   sampling in proportion to it is k-means++'s `D^2` rule;
//! - an empty (or cancelled-out) cluster is re-seeded with the filter that
//!   fits its centroid worst (lowest index on ties);
//! - `restarts` independent runs, the best objective kept;
//! - Lloyd iterations skip filters that provably keep their centroid and sign
//!   (Elkan's per-centroid bounds on angles, see [`lloyd`]): the same result
//!   as recomputing every `|cos|`, at a fraction of the memory traffic once
//!   clusters settle.
//!
//! Determinism: one seeded ChaCha stream per restart, drawn from on the
//! calling thread only; parallel work is split in fixed-size chunks whose
//! partial sums are combined in chunk order, so a seed gives the same keys bit
//! for bit whatever the number of threads.

use masterkey_core::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod lloyd;

use crate::filters::NormalisedFilters;
use crate::tap_major::{dot, run_simd, Simd, SimdJob};
use lloyd::lloyd;

/// Filters per parallel work item; fixed, so reductions do not depend on the thread count.
const CHUNK: usize = 8192;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansOptions {
    /// Independent k-means++ seedings; the run with the best objective is kept.
    pub restarts: usize,
    pub max_iter: usize,
    /// Stop when the objective changes by at most `tol` times itself (or no
    /// filter changes cluster).
    pub tol: f64,
    pub seed: u64,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions { restarts: 3, max_iter: 100, tol: 1e-5, seed: 1 }
    }
}

impl KMeansOptions {
    pub fn describe(&self) -> String {
        format!(
            "kmeans (sign-invariant spherical k-means, k-means++ seeding on 1-|cos|, restarts {}, max_iter {}, tol {:e}, seed {})",
            self.restarts, self.max_iter, self.tol, self.seed
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// `k * taps` normalised centroids.
    pub keys: Vec<f32>,
    /// Sum over filters of `|cos|` to their centroid.
    pub objective: f64,
    /// Lloyd iterations of the kept run.
    pub iterations: usize,
    /// Index of the kept restart.
    pub restart: usize,
}

/// Runs sign-invariant spherical k-means with `k` clusters.
pub fn kmeans(filters: &NormalisedFilters, k: usize, options: &KMeansOptions) -> Result<KMeansResult> {
    if k == 0 || k > u16::MAX as usize {
        return Err(Error::Other(format!("k-means needs 1 to {} clusters, asked for {k}", u16::MAX)));
    }
    if filters.len() < k {
        return Err(Error::Other(format!(
            "k-means with {k} clusters needs at least {k} live filters, found {}",
            filters.len()
        )));
    }
    let mut best: Option<KMeansResult> = None;
    for restart in 0..options.restarts.max(1) {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        rng.set_stream(restart as u64);
        let run = lloyd(filters, seed_plus_plus(filters, k, &mut rng), options, restart);
        if best.as_ref().is_none_or(|b| run.objective > b.objective) {
            best = Some(run);
        }
    }
    Ok(best.expect("at least one restart"))
}

/// The k-means++ seeds of restart 0 for `seed`, so that another
/// implementation (a benchmark's reference) can start from the same centroids.
pub fn plus_plus_seeds(filters: &NormalisedFilters, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0);
    seed_plus_plus(filters, k, &mut rng)
}

/// One run of the iterations from given centroids (`k * taps` values).
pub fn kmeans_from(filters: &NormalisedFilters, centroids: Vec<f32>, options: &KMeansOptions) -> KMeansResult {
    lloyd(filters, centroids, options, 0)
}

/// k-means++ seeding with the distance `1 - |cos|` to the nearest chosen seed.
fn seed_plus_plus(filters: &NormalisedFilters, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let taps = filters.taps();
    let n = filters.len();
    let mut seeds = Vec::with_capacity(k * taps);
    let mut pick = rng.random_range(0..n);
    let mut distance = vec![f32::INFINITY; n];
    for _ in 0..k {
        seeds.extend_from_slice(filters.filter(pick));
        let newest = &seeds[seeds.len() - taps..];
        distance
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, distance)| run_simd(NearerSeed { filters, seed: newest, first: c * CHUNK, distance }));
        if seeds.len() == k * taps {
            break;
        }
        pick = sample_by_weight(&distance, rng).unwrap_or_else(|| rng.random_range(0..n));
    }
    seeds
}

/// Lowers each filter's distance to its nearest seed to its distance to a new seed.
struct NearerSeed<'a> {
    filters: &'a NormalisedFilters,
    seed: &'a [f32],
    first: usize,
    distance: &'a mut [f32],
}

impl SimdJob for NearerSeed<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self, m: impl Simd) {
        for (j, d) in self.distance.iter_mut().enumerate() {
            let cos = dot(self.filters.filter(self.first + j), self.seed, m);
            *d = d.min((1.0 - cos.abs()).max(0.0));
        }
    }
}

/// An index drawn with probability proportional to `weights`; `None` when they are all zero.
fn sample_by_weight(weights: &[f32], rng: &mut ChaCha8Rng) -> Option<usize> {
    let chunk_totals: Vec<f64> = weights.par_chunks(CHUNK).map(|c| c.iter().map(|&w| w as f64).sum()).collect();
    let total: f64 = chunk_totals.iter().sum();
    if !(total > 0.0) {
        return None;
    }
    let mut target = rng.random::<f64>() * total;
    let mut last_positive = None;
    for (c, &chunk_total) in chunk_totals.iter().enumerate() {
        if chunk_total <= 0.0 {
            continue;
        }
        for (j, &w) in weights[c * CHUNK..].iter().take(CHUNK).enumerate() {
            if w > 0.0 {
                last_positive = Some(c * CHUNK + j);
                target -= w as f64;
                if target < 0.0 {
                    return last_positive;
                }
            }
        }
    }
    // Rounding left `target` just above zero: the last positive weight takes it.
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::compare;
    use crate::synthetic::{bank_of, shifted_copies};
    use masterkey_core::Bank;

    #[test]
    fn recovers_published8_from_shifted_noisy_copies() {
        let bank = Bank::published8();
        let filters = shifted_copies(&bank, 150, 0.07, 11);
        let found = kmeans(&filters, 8, &KMeansOptions::default()).unwrap();
        let cmp = compare(&bank, &bank_of(&found.keys, bank.kernel, "kmeans"), false);
        assert_eq!(cmp.pairs.len(), 8);
        for p in &cmp.pairs {
            assert!(p.abs_cos >= 0.98, "key {} matched {} at |cos| {}", p.a, p.b, p.abs_cos);
        }
    }

    #[test]
    fn same_seed_gives_the_same_keys_bit_for_bit_on_any_thread_count() {
        let bank = Bank::published8();
        // More than one chunk, so the parallel reductions really are split.
        let filters = shifted_copies(&bank, 2600, 0.3, 5);
        assert!(filters.len() > 2 * CHUNK);
        let options = KMeansOptions { restarts: 2, max_iter: 20, ..KMeansOptions::default() };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| kmeans(&filters, 6, &options).unwrap())
        };
        let bits = |r: &KMeansResult| r.keys.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let one = run(1);
        for threads in [2, 3, 5] {
            let other = run(threads);
            assert_eq!(bits(&one), bits(&other), "{threads} threads");
            assert_eq!(one.objective.to_bits(), other.objective.to_bits());
        }
    }

    #[test]
    fn duplicate_seeds_leave_an_empty_cluster_yet_the_keys_are_normalised() {
        // Three identical filters and one other: k-means++ has to seed a third
        // cluster on a duplicate, which stays empty; the run still ends with
        // finite, normalised keys.
        let bank = Bank::published8();
        let mut data = [bank.key(0), bank.key(0), bank.key(0)].concat();
        data.extend_from_slice(bank.key(1));
        let filters = NormalisedFilters { kernel: bank.kernel, data, group_index: (0..4).collect(), dead: 0 };
        let found = kmeans(&filters, 3, &KMeansOptions::default()).unwrap();
        for key in found.keys.chunks_exact(49) {
            let norm: f32 = key.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
    }

    #[test]
    fn rejects_more_clusters_than_filters() {
        let filters = shifted_copies(&Bank::published8(), 1, 0.0, 1);
        assert!(kmeans(&filters, 9, &KMeansOptions::default()).unwrap_err().to_string().contains("at least 9"));
    }
}
