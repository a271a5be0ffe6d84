//! Lloyd iterations with Elkan's per-centroid bounds, adapted to `|cos|` and
//! kept lazily.
//!
//! A unit filter at angle `a` from the line of a centroid that then turns by
//! `t` ends between `a - t` and `a + t` from it. So the angles of a filter to
//! every centroid, computed at some pass `p`, bound its angles now: the own
//! one from above, every other one from below, given how far each centroid's
//! line has turned since pass `p` (see `Simd::settled`). While the own bound
//! stays below every other, the filter keeps its centroid and, since its
//! angle never reached a right angle, its sign: it is not read at all. The
//! others are recomputed in full, which refreshes their angles and pass.
//!
//! Per-centroid bounds matter because clusters settle at different speeds:
//! one centroid still drifting must not reopen the filters that never came
//! near it (as Hamerly's single bound on all others does). Measuring each turn
//! from the centroids of pass `p` straight to the current ones, rather than
//! adding up every step, keeps the bounds as tight as the triangle inequality
//! allows and leaves the bounds of settled filters unwritten; angles rather
//! than Euclidean shifts tighten them by the sine of the filter's angle, and
//! kept as 16-bit steps they make the check a few integer instructions.
//!
//! The pass is bound by memory: the filters to recompute are prefetched a
//! couple of blocks ahead, since after the first passes they are scattered.
//!
//! The sign-aligned member sums are kept up to date by the filters that move
//! (or flip), and the objective is read off them: `sum_j <S_j, c_j>` equals the
//! sum of `|cos|` of every filter to its centroid.

use rayon::prelude::*;

use super::{KMeansOptions, KMeansResult, CHUNK};
use crate::filters::{normalise_f64_into, NormalisedFilters};
use crate::tap_major::{dot, prefetch, run_simd, turn_steps, Simd, SimdJob, TapMajorKeys, BLOCK, LANES};

/// No centroid yet (before the first pass).
const UNASSIGNED: u16 = u16::MAX;

/// Blocks of filters to recompute that are prefetched ahead of the one in work.
const AHEAD: usize = 2;

/// Per-filter state carried between passes.
struct Bounds {
    labels: Vec<u16>,
    /// Whether the filter's dot product with its centroid is negative.
    negative: Vec<bool>,
    /// The pass that last computed the filter's angles.
    pass: Vec<u32>,
    /// Its angle to every (padded) centroid's line at that pass, `padded` per
    /// filter (see `Simd::best_abs`).
    angles: Vec<u16>,
}

/// The centroids of every pass so far.
struct History {
    taps: usize,
    padded: usize,
    passes: Vec<Vec<f32>>,
}

impl History {
    /// How far the line of each centroid has turned from pass `p` to the
    /// newest one, for every pass `p`: `padded` angles per pass (see
    /// `tap_major::turn_steps`; padding: no turn).
    fn turns(&self) -> Vec<u16> {
        let newest = self.passes.last().expect("a pass");
        let mut turns = vec![0u16; self.passes.len() * self.padded];
        for (old, row) in self.passes.iter().zip(turns.chunks_exact_mut(self.padded)) {
            for (j, (a, b)) in old.chunks_exact(self.taps).zip(newest.chunks_exact(self.taps)).enumerate() {
                let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
                row[j] = turn_steps(dot(a, b).abs() / (dot(a, a) * dot(b, b)).sqrt());
            }
        }
        turns
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

/// One assignment pass over the filters `first..first + labels.len()`: every
/// filter on the first pass (`turns` empty), else those whose bounds fail.
struct Reassign<'a> {
    filters: &'a NormalisedFilters,
    keys: &'a TapMajorKeys,
    k: usize,
    pass: u32,
    turns: &'a [u16],
    first: usize,
    labels: &'a mut [u16],
    negative: &'a mut [bool],
    passes: &'a mut [u32],
    angles: &'a mut [u16],
}

impl Reassign<'_> {
    /// Filters whose bounds no longer settle their centroid.
    #[inline(always)]
    fn open(&self, m: impl Simd) -> Vec<usize> {
        if self.turns.is_empty() {
            return (0..self.labels.len()).collect();
        }
        let padded = self.keys.padded();
        // Written without a branch: which filters open is close to random.
        let mut open = vec![0; self.labels.len()];
        let mut count = 0;
        for (j, (angles, (&pass, &own))) in
            self.angles.chunks_exact(padded).zip(self.passes.iter().zip(self.labels.iter())).enumerate()
        {
            open[count] = j;
            count += !m.settled(angles, &self.turns[pass as usize * padded..][..padded], own as usize) as usize;
        }
        open.truncate(count);
        open
    }
}

impl SimdJob for Reassign<'_> {
    type Output = Moves;

    #[inline(always)]
    fn run(self, m: impl Simd) -> Moves {
        let taps = self.filters.taps();
        let padded = self.keys.padded();
        let mut moves = Moves::new(self.k, taps);
        let mut dots = vec![0.0f32; BLOCK * padded];
        let open = self.open(m);
        for (b, block) in open.chunks(BLOCK).enumerate() {
            for &j in open.iter().skip((b + AHEAD) * BLOCK).take(BLOCK) {
                prefetch(self.filters.filter(self.first + j));
            }
            // A short block repeats its last filter; the repeats are ignored.
            let index = |f: usize| block[f.min(block.len() - 1)];
            let xs = std::array::from_fn(|f| self.filters.filter(self.first + index(f)));
            self.keys.dots_of_block(xs, &mut dots, m);
            for (&j, dots) in block.iter().zip(dots.chunks_exact(padded)) {
                let x = self.filters.filter(self.first + j);
                let best = m.best_abs(dots, &mut self.angles[j * padded..][..padded]);
                let negative = dots[best] < 0.0;
                if self.labels[j] != best as u16 || self.negative[j] != negative {
                    if self.labels[j] != UNASSIGNED {
                        moves.add(self.labels[j] as usize, self.negative[j], x, taps, true);
                    }
                    moves.add(best, negative, x, taps, false);
                    moves.changed += 1;
                    (self.labels[j], self.negative[j]) = (best as u16, negative);
                }
                self.passes[j] = self.pass;
            }
        }
        moves
    }
}

fn reassign(filters: &NormalisedFilters, history: &History, bounds: &mut Bounds) -> Moves {
    let taps = filters.taps();
    let centroids = history.passes.last().expect("a pass");
    let keys = TapMajorKeys::new(centroids, taps);
    let k = centroids.len() / taps;
    let pass = (history.passes.len() - 1) as u32;
    let turns = if pass == 0 { Vec::new() } else { history.turns() };
    let padded = keys.padded();
    let partials: Vec<Moves> = bounds
        .labels
        .par_chunks_mut(CHUNK)
        .zip(bounds.negative.par_chunks_mut(CHUNK))
        .zip(bounds.pass.par_chunks_mut(CHUNK))
        .zip(bounds.angles.par_chunks_mut(CHUNK * padded))
        .enumerate()
        .map(|(c, (((labels, negative), passes), angles))| {
            let first = c * CHUNK;
            run_simd(Reassign { filters, keys: &keys, k, pass, turns: &turns, first, labels, negative, passes, angles })
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
    fn run(self, m: impl Simd) {
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
    centroids: Vec<f32>,
    options: &KMeansOptions,
    restart: usize,
) -> KMeansResult {
    let taps = filters.taps();
    let k = centroids.len() / taps;
    let n = filters.len();
    let padded = k.div_ceil(LANES) * LANES;
    let mut bounds =
        Bounds { labels: vec![UNASSIGNED; n], negative: vec![false; n], pass: vec![0; n], angles: vec![0; n * padded] };
    let mut history = History { taps, padded, passes: vec![centroids] };
    let mut state = Moves::new(k, taps);
    let mut previous: Option<f64> = None;
    loop {
        let moves = reassign(filters, &history, &mut bounds);
        state.merge(&moves);
        let iterations = history.passes.len();
        let centroids = history.passes.last().expect("a pass");
        let objective: f64 = state
            .sums
            .chunks_exact(taps)
            .zip(centroids.chunks_exact(taps))
            .map(|(s, c)| s.iter().zip(c).map(|(s, &c)| s * c as f64).sum::<f64>())
            .sum();
        let converged =
            moves.changed == 0 || previous.is_some_and(|p| (objective - p).abs() <= options.tol * objective.abs());
        if converged || iterations >= options.max_iter {
            let keys = history.passes.pop().expect("a pass");
            return KMeansResult { keys, objective, iterations, restart };
        }
        previous = Some(objective);
        let next = updated(filters, centroids, &state, &bounds.labels);
        history.passes.push(next);
    }
}

/// The centroids after an update step: each the normalised sign-aligned sum
/// of its members; an empty (or cancelled-out) one re-seeded with the filter
/// that fits its old centroid worst.
fn updated(filters: &NormalisedFilters, old: &[f32], state: &Moves, labels: &[u16]) -> Vec<f32> {
    let taps = filters.taps();
    let mut centroids = old.to_vec();
    let mut empty = Vec::new();
    for (c, centroid) in centroids.chunks_exact_mut(taps).enumerate() {
        let sum = &state.sums[c * taps..(c + 1) * taps];
        if state.counts[c] == 0 || !normalise_f64_into(sum, centroid, 1e-12) {
            empty.push(c);
        }
    }
    if !empty.is_empty() {
        let fits = own_fits(filters, old, labels);
        for (c, i) in empty.iter().zip(worst_fitting(&fits, empty.len())) {
            centroids[c * taps..(c + 1) * taps].copy_from_slice(filters.filter(i));
        }
    }
    centroids
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
