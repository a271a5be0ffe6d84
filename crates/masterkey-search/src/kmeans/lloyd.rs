//! Lloyd iterations with Hamerly's bounds, adapted to `|cos|`.
//!
//! For a unit filter `x` and a centroid moving from `c` to `c'`,
//! `| |<x, c'>| - |<x, c>| | <= ||c' - c||`. So each filter keeps a lower
//! bound on `|cos|` to its own centroid and an upper bound on `|cos|` to every
//! other one; after a move of the centroids the lower bound drops by its own
//! centroid's shift and the upper bound rises by the largest other shift. While
//! the lower bound stays above the upper bound, the filter keeps its centroid
//! and, since its `|cos|` never crossed zero, its sign: it is not read at all.
//! The others are recomputed in full, which also tightens their bounds.
//!
//! The sign-aligned member sums are kept up to date by the filters that move
//! (or flip), and the objective is read off them: `sum_j <S_j, c_j>` equals the
//! sum of `|cos|` of every filter to its centroid.

use rayon::prelude::*;

use super::{KMeansOptions, KMeansResult, CHUNK};
use crate::filters::NormalisedFilters;
use crate::tap_major::{dot, run_simd, MulAdd, SimdJob, TapMajorKeys, BLOCK};

/// Widens every shift, so that f32 rounding in the dot products can never
/// make a bound claim more than the arithmetic supports.
const SHIFT_MARGIN: f32 = 1e-5;

/// No centroid yet (before the first pass).
const UNASSIGNED: u16 = u16::MAX;

/// Per-filter state carried between passes.
struct Bounds {
    labels: Vec<u16>,
    /// Whether the filter's dot product with its centroid is negative.
    negative: Vec<bool>,
    /// Lower bound on `|cos|` to the own centroid.
    lower: Vec<f32>,
    /// Upper bound on `|cos|` to every other centroid.
    upper: Vec<f32>,
}

/// How far each centroid moved, with the two largest moves.
struct Shifts {
    by_centroid: Vec<f32>,
    largest: (usize, f32),
    second: f32,
}

impl Shifts {
    fn between(old: &[f32], new: &[f32], taps: usize) -> Self {
        let by_centroid: Vec<f32> = old
            .chunks_exact(taps)
            .zip(new.chunks_exact(taps))
            .map(|(a, b)| {
                a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt() as f32 + SHIFT_MARGIN
            })
            .collect();
        let mut largest = (0, 0.0f32);
        let mut second = 0.0f32;
        for (j, &s) in by_centroid.iter().enumerate() {
            if s > largest.1 {
                second = largest.1;
                largest = (j, s);
            } else {
                second = second.max(s);
            }
        }
        Shifts { by_centroid, largest, second }
    }

    /// The largest shift of a centroid other than `own`.
    fn of_others(&self, own: usize) -> f32 {
        if own == self.largest.0 {
            self.second
        } else {
            self.largest.1
        }
    }
}

/// Changes to the sign-aligned sums made by the filters that moved.
struct Moves {
    sums: Vec<f64>,
    counts: Vec<i64>,
    changed: usize,
}

impl Moves {
    fn new(k: usize, taps: usize) -> Self {
        Moves { sums: vec![0.0; k * taps], counts: vec![0; k], changed: 0 }
    }

    fn add(&mut self, key: usize, negative: bool, x: &[f32], taps: usize, leaving: bool) {
        let sign = if negative != leaving { -1.0 } else { 1.0 };
        for (s, &v) in self.sums[key * taps..(key + 1) * taps].iter_mut().zip(x) {
            *s += sign * v as f64;
        }
        self.counts[key] += if leaving { -1 } else { 1 };
    }

    fn merge(&mut self, other: &Moves) {
        self.changed += other.changed;
        self.sums.iter_mut().zip(&other.sums).for_each(|(a, b)| *a += b);
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
    }
}

/// One assignment pass over the filters `first..first + labels.len()`:
/// every filter when `shifts` is `None`, else those whose bounds fail.
struct Reassign<'a> {
    filters: &'a NormalisedFilters,
    keys: &'a TapMajorKeys,
    k: usize,
    shifts: Option<&'a Shifts>,
    first: usize,
    labels: &'a mut [u16],
    negative: &'a mut [bool],
    lower: &'a mut [f32],
    upper: &'a mut [f32],
}

impl SimdJob for Reassign<'_> {
    type Output = Moves;

    #[inline(always)]
    fn run(self, m: impl MulAdd) -> Moves {
        let taps = self.filters.taps();
        let mut moves = Moves::new(self.k, taps);
        // Filters whose bounds no longer settle their centroid.
        let open: Vec<usize> = match self.shifts {
            None => (0..self.labels.len()).collect(),
            Some(shifts) => (0..self.labels.len())
                .filter(|&j| {
                    let own = self.labels[j] as usize;
                    self.lower[j] -= shifts.by_centroid[own];
                    self.upper[j] += shifts.of_others(own);
                    self.lower[j] <= self.upper[j]
                })
                .collect(),
        };
        for block in open.chunks(BLOCK) {
            // A short block repeats its last filter; the repeats are ignored.
            let index = |f: usize| block[f.min(block.len() - 1)];
            let best = self.keys.best_of_block(std::array::from_fn(|f| self.filters.filter(self.first + index(f))), m);
            for (&j, b) in block.iter().zip(&best) {
                let x = self.filters.filter(self.first + j);
                let negative = b.dot < 0.0;
                if self.labels[j] != b.key as u16 || self.negative[j] != negative {
                    if self.labels[j] != UNASSIGNED {
                        moves.add(self.labels[j] as usize, self.negative[j], x, taps, true);
                    }
                    moves.add(b.key, negative, x, taps, false);
                    moves.changed += 1;
                    (self.labels[j], self.negative[j]) = (b.key as u16, negative);
                }
                (self.lower[j], self.upper[j]) = (b.dot.abs(), b.second_abs);
            }
        }
        moves
    }
}

fn reassign(filters: &NormalisedFilters, centroids: &[f32], bounds: &mut Bounds, shifts: Option<&Shifts>) -> Moves {
    let taps = filters.taps();
    let keys = TapMajorKeys::new(centroids, taps);
    let k = centroids.len() / taps;
    let partials: Vec<Moves> = bounds
        .labels
        .par_chunks_mut(CHUNK)
        .zip(bounds.negative.par_chunks_mut(CHUNK))
        .zip(bounds.lower.par_chunks_mut(CHUNK))
        .zip(bounds.upper.par_chunks_mut(CHUNK))
        .enumerate()
        .map(|(c, (((labels, negative), lower), upper))| {
            run_simd(Reassign { filters, keys: &keys, k, shifts, first: c * CHUNK, labels, negative, lower, upper })
        })
        .collect();
    let mut total = Moves::new(k, taps);
    partials.iter().for_each(|p| total.merge(p));
    total
}

/// `|cos|` of every filter to its own centroid.
struct OwnFit<'a> {
    filters: &'a NormalisedFilters,
    centroids: &'a [f32],
    first: usize,
    labels: &'a [u16],
    fit: &'a mut [f32],
}

impl SimdJob for OwnFit<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self, m: impl MulAdd) {
        let taps = self.filters.taps();
        for (j, (fit, &label)) in self.fit.iter_mut().zip(self.labels).enumerate() {
            let c = label as usize;
            *fit = dot(self.filters.filter(self.first + j), &self.centroids[c * taps..(c + 1) * taps], m).abs();
        }
    }
}

fn own_fits(filters: &NormalisedFilters, centroids: &[f32], labels: &[u16]) -> Vec<f32> {
    let mut fit = vec![0.0f32; labels.len()];
    fit.par_chunks_mut(CHUNK)
        .zip(labels.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (fit, labels))| run_simd(OwnFit { filters, centroids, first: c * CHUNK, labels, fit }));
    fit
}

pub(super) fn lloyd(
    filters: &NormalisedFilters,
    mut centroids: Vec<f32>,
    options: &KMeansOptions,
    restart: usize,
) -> KMeansResult {
    let taps = filters.taps();
    let k = centroids.len() / taps;
    let n = filters.len();
    let mut bounds =
        Bounds { labels: vec![UNASSIGNED; n], negative: vec![false; n], lower: vec![0.0; n], upper: vec![0.0; n] };
    let mut state = Moves::new(k, taps);
    let mut shifts = None;
    let mut previous: Option<f64> = None;
    let mut iterations = 0;
    loop {
        let moves = reassign(filters, &centroids, &mut bounds, shifts.as_ref());
        state.merge(&moves);
        iterations += 1;
        let objective: f64 = state
            .sums
            .chunks_exact(taps)
            .zip(centroids.chunks_exact(taps))
            .map(|(s, c)| s.iter().zip(c).map(|(s, &c)| s * c as f64).sum::<f64>())
            .sum();
        let converged =
            moves.changed == 0 || previous.is_some_and(|p| (objective - p).abs() <= options.tol * objective.abs());
        if converged || iterations >= options.max_iter {
            return KMeansResult { keys: centroids, objective, iterations, restart };
        }
        previous = Some(objective);
        let old = centroids.clone();
        let mut empty = Vec::new();
        for (c, centroid) in centroids.chunks_exact_mut(taps).enumerate() {
            let sum = &state.sums[c * taps..(c + 1) * taps];
            if state.counts[c] == 0 || !normalise_f64_into(sum, centroid) {
                empty.push(c);
            }
        }
        if !empty.is_empty() {
            let fits = own_fits(filters, &old, &bounds.labels);
            for (c, i) in empty.iter().zip(worst_fitting(&fits, empty.len())) {
                centroids[c * taps..(c + 1) * taps].copy_from_slice(filters.filter(i));
            }
        }
        shifts = Some(Shifts::between(&old, &centroids, taps));
    }
}

/// Writes `sum` centred and scaled to unit norm into `out`; `false` if it is
/// (numerically) constant.
fn normalise_f64_into(sum: &[f64], out: &mut [f32]) -> bool {
    let mean = sum.iter().sum::<f64>() / sum.len() as f64;
    let norm = sum.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>().sqrt();
    if !(norm > 1e-12) {
        return false;
    }
    for (o, v) in out.iter_mut().zip(sum) {
        *o = ((v - mean) / norm) as f32;
    }
    true
}

/// Indices of the `m` lowest values of `fit`, lowest first (lower index on ties).
fn worst_fitting(fit: &[f32], m: usize) -> Vec<usize> {
    let mut worst: Vec<(f32, usize)> = Vec::with_capacity(m + 1);
    for (i, &f) in fit.iter().enumerate() {
        if worst.len() < m || worst.last().is_some_and(|&(w, _)| f < w) {
            let at = worst.partition_point(|&(w, _)| w <= f);
            worst.insert(at, (f, i));
            worst.truncate(m);
        }
    }
    worst.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::shifted_copies;
    use masterkey_core::fit::fit_filters;
    use masterkey_core::Bank;

    #[test]
    fn worst_fitting_takes_the_lowest_first_and_the_lower_index_on_ties() {
        assert_eq!(worst_fitting(&[0.9, 0.2, 0.5, 0.2, 0.1], 3), vec![4, 1, 3]);
    }

    #[test]
    fn bounded_passes_end_where_a_full_recomputation_does() {
        // Heavy noise: clusters overlap, so many filters sit near a boundary.
        let filters = shifted_copies(&Bank::published8(), 300, 0.8, 9);
        let options = KMeansOptions { restarts: 1, max_iter: 200, tol: 0.0, seed: 3 };
        let seeds: Vec<f32> = (0..5).flat_map(|i| filters.filter(i * 97).to_vec()).collect();
        let run = lloyd(&filters, seeds, &options, 0);
        assert!(run.iterations > 3 && run.iterations < 200, "{} iterations", run.iterations);
        // Converged (no filter moved): every filter's best key under the final
        // centroids is the one the bounds kept, so the objective is the sum of
        // the best |cos| recomputed from scratch.
        let fits = fit_filters(&filters.data, 49, &run.keys, &vec![false; filters.len()]);
        let recomputed: f64 = fits.iter().map(|f| f.abs_cos as f64).sum();
        assert!((run.objective - recomputed).abs() < 1e-4 * recomputed, "{} vs {recomputed}", run.objective);
    }
}
