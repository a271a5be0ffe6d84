//! The linear-shift fit of filters to a bank: for a trained filter `y` and a
//! normalised key `x`, `a = <y, x>`, `b = mean(y)` (least squares, as `x` is
//! zero-mean) and the fit quality is `|cos|` between the centred `y` and `x`.
//! The best key is the one with the largest `|cos|`; the sign of `a` is free.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bank::{Bank, RESIZE_RULE};
use crate::kernel::{is_dead, mean_and_centered_norm, KernelSize};
use crate::set::FilterSet;

/// The fit of one filter. `key` is `None` for dead filters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FilterFit {
    pub key: Option<u16>,
    pub a: f32,
    pub b: f32,
    pub abs_cos: f32,
}

/// Keys laid out in blocks of `LANES` keys, tap-major within a block
/// (`[block][tap][lane]`, the last block zero-padded), so the inner loop is a
/// fixed-width multiply-add over a register-held accumulator that the
/// compiler vectorises; measured faster than one dot product per key.
struct TapMajorKeys {
    taps: usize,
    keys: usize,
    blocks: usize,
    data: Vec<f32>,
}

const LANES: usize = 8;

impl TapMajorKeys {
    fn new(keys: &[f32], taps: usize) -> Self {
        assert!(!keys.is_empty() && keys.len().is_multiple_of(taps), "keys must be a whole number of filters");
        assert!(keys.len() / taps <= u16::MAX as usize, "at most 65535 keys");
        let n = keys.len() / taps;
        let blocks = n.div_ceil(LANES);
        let mut data = vec![0.0; blocks * taps * LANES];
        for k in 0..n {
            for t in 0..taps {
                data[((k / LANES) * taps + t) * LANES + k % LANES] = keys[k * taps + t];
            }
        }
        TapMajorKeys { taps, keys: n, blocks, data }
    }

    /// Mean and centred sum of squares of `y`, in f32.
    #[inline(always)]
    fn stats(&self, y: &[f32]) -> (f32, f32) {
        let mean = lane_sum(y, |v| v) / self.taps as f32;
        (mean, lane_sum(y, |v| (v - mean) * (v - mean)))
    }

    /// Whether `y` is dead by [`is_dead`]'s exact (f64) test. The f32
    /// statistics decide where they can: rounding moves the f32 mean by at
    /// most `u * sum|v|` (`u = 2^-24`), so the f32 centred norm of a filter
    /// whose exact norm is below `tolerance` stays below about
    /// `tolerance + sqrt(n) u sum|v|`, and `sum|v| <= sqrt(n) |v|` with
    /// `|v|^2 = ss + n mean^2`. Above twice that bound (with `2u`, doubled
    /// again) the filter is alive for certain; below it the exact test runs.
    #[inline(always)]
    fn is_dead_below(&self, y: &[f32], (mean, ss): (f32, f32), tolerance: f32) -> bool {
        let n = self.taps as f32;
        let margin = 2.0 * (tolerance + 2.0 * n * f32::EPSILON * (ss + n * mean * mean).sqrt());
        ss.sqrt() < margin && is_dead(mean_and_centered_norm(y).1, tolerance)
    }

    #[inline(always)]
    fn fit(&self, y: &[f32], (mean, ss): (f32, f32), dot: &mut [f32]) -> FilterFit {
        for (block, out) in dot.chunks_exact_mut(LANES).enumerate() {
            let keys = &self.data[block * self.taps * LANES..(block + 1) * self.taps * LANES];
            let mut acc = [0.0f32; LANES];
            for (&v, key) in y.iter().zip(keys.chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] += v * key[l];
                }
            }
            out.copy_from_slice(&acc);
        }
        let (mut best, mut best_abs) = (0usize, -1.0f32);
        for (k, &d) in dot[..self.keys].iter().enumerate() {
            if d.abs() > best_abs {
                best = k;
                best_abs = d.abs();
            }
        }
        let norm = ss.sqrt();
        FilterFit { key: Some(best as u16), a: dot[best], b: mean, abs_cos: (best_abs / norm).min(1.0) }
    }

    /// Fits a chunk of filters; with [`Dead::Flags`], `dead` holds the
    /// chunk's own flags. The dead check of [`Dead::Below`] runs here, so it
    /// is compiled (and vectorised) with the fit.
    #[inline(always)]
    fn fit_chunk(&self, weights: &[f32], dead: Dead, fits: &mut [FilterFit]) {
        let mut dot = vec![0.0f32; self.blocks * LANES];
        for (i, (fit, y)) in fits.iter_mut().zip(weights.chunks_exact(self.taps)).enumerate() {
            let stats = self.stats(y);
            let dead = match dead {
                Dead::Flags(flags) => flags[i],
                Dead::Below(tolerance) => self.is_dead_below(y, stats, tolerance),
            };
            *fit = if dead {
                FilterFit { key: None, a: 0.0, b: stats.0, abs_cos: 0.0 }
            } else {
                self.fit(y, stats, &mut dot)
            };
        }
    }

    /// The same code compiled for AVX2 (8-wide) where the CPU has it; the
    /// default x86-64 target only has 4-wide SSE2. Results are identical: no
    /// operation is reordered or fused.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fit_chunk_avx2(&self, weights: &[f32], dead: Dead, fits: &mut [FilterFit]) {
        self.fit_chunk(weights, dead, fits)
    }

    fn fit_chunk_best(&self, weights: &[f32], dead: Dead, fits: &mut [FilterFit]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { self.fit_chunk_avx2(weights, dead, fits) };
        }
        self.fit_chunk(weights, dead, fits)
    }
}

/// The instruction set `fit_filters` runs on this CPU, for benchmark reports.
pub fn simd_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return "AVX2";
    }
    "portable (compiler's baseline SIMD)"
}

/// Sum of `f(v)` over `values`, accumulated in `LANES` independent partial
/// sums so the loop vectorises (a single running f32 sum cannot be reordered).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Which filters are dead (get no key): given, or those whose centred L2
/// norm is below a tolerance.
#[derive(Debug, Clone, Copy)]
enum Dead<'a> {
    Flags(&'a [bool]),
    Below(f32),
}

/// Filters per parallel task of a fit.
const FIT_CHUNK: usize = 4096;

/// Fits every filter of `weights` (`n x taps`, raw) to `keys` (normalised,
/// same size). `dead[i]` marks filters that get no key.
pub fn fit_filters(weights: &[f32], taps: usize, keys: &[f32], dead: &[bool]) -> Vec<FilterFit> {
    assert_eq!(weights.len(), dead.len() * taps, "one dead flag per filter");
    let tm = TapMajorKeys::new(keys, taps);
    let mut out = vec![FilterFit { key: None, a: 0.0, b: 0.0, abs_cos: 0.0 }; dead.len()];
    out.par_chunks_mut(FIT_CHUNK)
        .zip(weights.par_chunks(FIT_CHUNK * taps))
        .zip(dead.par_chunks(FIT_CHUNK))
        .for_each(|((fits, weights), dead)| tm.fit_chunk_best(weights, Dead::Flags(dead), fits));
    out
}

#[derive(Debug, Clone)]
pub struct FitOptions {
    /// `|cos|` thresholds at which coverage is reported.
    pub thresholds: Vec<f32>,
    /// Number of equal-width bands of normalised depth.
    pub depth_bands: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { thresholds: vec![0.5, 0.6, 0.7, 0.8, 0.9, 0.95], depth_bands: 4 }
    }
}

/// Coverage, mean `|cos|` and key usage of a group of filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitStats {
    pub filters: usize,
    pub dead: usize,
    /// Share of non-dead filters whose best key reaches `|cos| >= t`, keyed by `t`.
    pub coverage: BTreeMap<String, f64>,
    pub mean_abs_cos: f64,
    /// Non-dead filters whose best key is each bank key, in bank order.
    pub usage: Vec<usize>,
}

/// `|cos|` in units of `2^-48`: every f32 `|cos|` from `2^-25` up is a whole
/// number of them, so sums are exact and do not depend on the order of the
/// filters (a tally can be split across threads and merged).
const ABS_COS_UNIT: f64 = (1u64 << 48) as f64;

#[derive(Debug, Clone)]
struct Tally {
    filters: usize,
    dead: usize,
    covered: Vec<usize>,
    sum_abs_cos: u128,
    usage: Vec<usize>,
}

impl Tally {
    fn new(thresholds: usize, keys: usize) -> Self {
        Tally { filters: 0, dead: 0, covered: vec![0; thresholds], sum_abs_cos: 0, usage: vec![0; keys] }
    }
    fn merged(mut self, other: Tally) -> Tally {
        self.filters += other.filters;
        self.dead += other.dead;
        self.sum_abs_cos += other.sum_abs_cos;
        self.covered.iter_mut().zip(other.covered).for_each(|(a, b)| *a += b);
        self.usage.iter_mut().zip(other.usage).for_each(|(a, b)| *a += b);
        self
    }
    #[inline]
    fn add(&mut self, fit: &FilterFit, thresholds: &[f32]) {
        self.filters += 1;
        match fit.key {
            None => self.dead += 1,
            Some(k) => {
                // Exact for |cos| >= 2^-25 (below, truncated); through i64,
                // which converts in one instruction where u128 needs a call.
                self.sum_abs_cos += (fit.abs_cos as f64 * ABS_COS_UNIT) as i64 as u128;
                self.usage[k as usize] += 1;
                for (c, &t) in self.covered.iter_mut().zip(thresholds) {
                    *c += usize::from(fit.abs_cos >= t);
                }
            }
        }
    }
    fn stats(&self, thresholds: &[f32]) -> FitStats {
        let live = (self.filters - self.dead).max(1) as f64;
        FitStats {
            filters: self.filters,
            dead: self.dead,
            coverage: thresholds.iter().zip(&self.covered).map(|(t, &c)| (t.to_string(), c as f64 / live)).collect(),
            mean_abs_cos: self.sum_abs_cos as f64 / ABS_COS_UNIT / live,
            usage: self.usage.clone(),
        }
    }
}

/// Summary of fitting a set to a bank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub bank: String,
    pub bank_kernel: String,
    pub labels: Vec<String>,
    pub resize_rule: String,
    pub thresholds: Vec<f32>,
    #[serde(flatten)]
    pub overall: FitStats,
    pub per_kernel: BTreeMap<String, FitStats>,
    /// Keyed by source file.
    pub per_model: BTreeMap<String, FitStats>,
    /// Keyed by the band's depth range, e.g. `0.00-0.25`.
    pub per_depth_band: BTreeMap<String, FitStats>,
    /// Per kernel size, labels of keys that are constant once resized (never chosen).
    pub unusable_keys: BTreeMap<String, Vec<String>>,
}

/// The same filters fitted to random keys of the bank's number and size: the
/// coverage that chance alone gives, against which a bank's is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomControl {
    pub bank: String,
    pub seed: u64,
    pub overall: FitStats,
    pub per_kernel: BTreeMap<String, FitStats>,
}

impl RandomControl {
    pub fn compute(set: &FilterSet, bank: &Bank, options: &FitOptions, seed: u64) -> Self {
        let random = Bank::random(bank.len(), bank.kernel, seed);
        let (_, report) = fit_set(set, &random, options);
        RandomControl { bank: random.name, seed, overall: report.overall, per_kernel: report.per_kernel }
    }

    /// The control of filters held in one array (see [`fit_array`]).
    pub fn for_array(
        weights: &[f32],
        kernel: KernelSize,
        dead_tolerance: f32,
        bank: &Bank,
        thresholds: &[f32],
        seed: u64,
    ) -> Self {
        let random = Bank::random(bank.len(), bank.kernel, seed);
        let (_, report) = fit_array(weights, kernel, dead_tolerance, &random, thresholds, "array");
        RandomControl { bank: random.name, seed, overall: report.overall, per_kernel: report.per_kernel }
    }
}

/// Writes `fits.csv` (every filter's fit with its provenance) and `fit.json`
/// (`record`) into `dir`, each atomically: what `masterkey fit -o` writes.
pub fn save_fit_outputs(
    set: &FilterSet,
    fits: &GroupFits,
    bank: &Bank,
    record: &FitRecord,
    dir: &std::path::Path,
) -> crate::Result<()> {
    save_fits_csv(set, fits, bank, &dir.join("fits.csv"))?;
    let text = serde_json::to_vec_pretty(record).map_err(|e| crate::Error::Other(e.to_string()))?;
    crate::atomic::write_file(&dir.join("fit.json"), &text)
}

/// A fit report with what it was computed from: the form saved as `fit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitRecord {
    /// Model files or saved sets the filters came from.
    pub inputs: Vec<String>,
    pub dead_tolerance: f32,
    #[serde(flatten)]
    pub report: FitReport,
    pub random_control: Option<RandomControl>,
}

/// Fits of one kernel size, in the set's order, with key indices into the bank.
pub type GroupFits = BTreeMap<KernelSize, Vec<FilterFit>>;

/// Fits every filter of `set` to `bank` (resized per kernel size by
/// [`RESIZE_RULE`]) and summarises the result.
pub fn fit_set(set: &FilterSet, bank: &Bank, options: &FitOptions) -> (GroupFits, FitReport) {
    let th = &options.thresholds;
    let bands = options.depth_bands.max(1);
    let band_name = |b: usize| format!("{:.2}-{:.2}", b as f64 / bands as f64, (b + 1) as f64 / bands as f64);
    let mut overall = Tally::new(th.len(), bank.len());
    let mut per_kernel = BTreeMap::new();
    let mut per_model: BTreeMap<String, Tally> = BTreeMap::new();
    let mut per_band: Vec<Tally> = vec![Tally::new(th.len(), bank.len()); bands];
    let mut unusable = BTreeMap::new();
    let mut fits = GroupFits::new();

    for (kernel, group) in &set.groups {
        let dead: Vec<bool> = group.provenance.iter().map(|p| p.dead).collect();
        let (group_fits, dropped) = fit_group(&group.weights, *kernel, &dead, bank);
        if !dropped.is_empty() {
            unusable.insert(kernel.to_string(), dropped);
        }
        let mut tally = Tally::new(th.len(), bank.len());
        for (fit, prov) in group_fits.iter().zip(&group.provenance) {
            tally.add(fit, th);
            overall.add(fit, th);
            per_model.entry(prov.source_file.clone()).or_insert_with(|| Tally::new(th.len(), bank.len())).add(fit, th);
            let band = ((prov.depth * bands as f64) as usize).min(bands - 1);
            per_band[band].add(fit, th);
        }
        per_kernel.insert(kernel.to_string(), tally.stats(th));
        fits.insert(*kernel, group_fits);
    }

    let report = FitReport {
        bank: bank.name.clone(),
        bank_kernel: bank.kernel.to_string(),
        labels: bank.labels.clone(),
        resize_rule: RESIZE_RULE.to_string(),
        thresholds: th.clone(),
        overall: overall.stats(th),
        per_kernel,
        per_model: per_model.into_iter().map(|(k, t)| (k, t.stats(th))).collect(),
        per_depth_band: per_band.iter().enumerate().map(|(b, t)| (band_name(b), t.stats(th))).collect(),
        unusable_keys: unusable,
    };
    (fits, report)
}

/// The bank's keys resized to `kernel`, the indices of those kept, and the
/// labels of those the resize leaves constant (never chosen).
fn keys_at(bank: &Bank, kernel: KernelSize) -> (Vec<f32>, Vec<usize>, Vec<String>) {
    let (keys, kept) = bank.resized(kernel);
    let dropped = (0..bank.len()).filter(|i| !kept.contains(i)).map(|i| bank.labels[i].clone()).collect();
    (keys, kept, dropped)
}

/// Fits of one kernel size's filters to `bank` resized to `kernel`, with key
/// indices into the whole bank, and the labels of the keys the resize leaves
/// constant (never chosen).
fn fit_group(weights: &[f32], kernel: KernelSize, dead: &[bool], bank: &Bank) -> (Vec<FilterFit>, Vec<String>) {
    let (keys, kept, dropped) = keys_at(bank, kernel);
    if kept.is_empty() {
        return (vec![FilterFit { key: None, a: 0.0, b: 0.0, abs_cos: 0.0 }; dead.len()], dropped);
    }
    let mut fits = fit_filters(weights, kernel.taps(), &keys, dead);
    fits.par_iter_mut().for_each(|fit| fit.key = fit.key.map(|k| kept[k as usize] as u16));
    (fits, dropped)
}

/// Per-filter fits as columns, the layout NumPy and data frames take
/// without a copy: `key_index` is the key's index in the bank, -1 for a dead
/// filter.
#[derive(Debug, Clone, PartialEq)]
pub struct FitColumns {
    pub key_index: Vec<i32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub abs_cos: Vec<f32>,
}

/// Fits filters held in one array (`n x kernel.taps()`, raw, row-major) to
/// `bank`, without the per-filter provenance of a [`FilterSet`] and without
/// copying the weights: the report has one kernel and one model, `source`,
/// and no depth bands. Filters whose centred L2 norm is below
/// `dead_tolerance` are dead. Each parallel task fits its filters, checks
/// which are dead, writes its part of the columns and counts its tally while
/// they are in cache (one pass over memory: a NumPy array of a million
/// filters is fitted about as fast as the CLI's core loop).
pub fn fit_array(
    weights: &[f32],
    kernel: KernelSize,
    dead_tolerance: f32,
    bank: &Bank,
    thresholds: &[f32],
    source: &str,
) -> (FitColumns, FitReport) {
    let taps = kernel.taps();
    assert_eq!(weights.len() % taps, 0, "a whole number of {kernel} filters");
    let n = weights.len() / taps;
    let (keys, kept, dropped) = keys_at(bank, kernel);
    // Zeroed columns come from the allocator as untouched pages; every entry is written below.
    let mut columns = FitColumns { key_index: vec![0; n], a: vec![0.0; n], b: vec![0.0; n], abs_cos: vec![0.0; n] };
    let tally = if kept.is_empty() {
        columns.key_index.fill(-1);
        let mut tally = Tally::new(thresholds.len(), bank.len());
        (tally.filters, tally.dead) = (n, n);
        tally
    } else {
        let tm = TapMajorKeys::new(&keys, taps);
        let FitColumns { key_index, a, b, abs_cos } = &mut columns;
        key_index
            .par_chunks_mut(FIT_CHUNK)
            .zip(a.par_chunks_mut(FIT_CHUNK))
            .zip(b.par_chunks_mut(FIT_CHUNK))
            .zip(abs_cos.par_chunks_mut(FIT_CHUNK))
            .zip(weights.par_chunks(FIT_CHUNK * taps))
            .map(|((((key_index, a), b), abs_cos), weights)| {
                let mut fits = vec![FilterFit { key: None, a: 0.0, b: 0.0, abs_cos: 0.0 }; key_index.len()];
                tm.fit_chunk_best(weights, Dead::Below(dead_tolerance), &mut fits);
                let mut tally = Tally::new(thresholds.len(), bank.len());
                for (i, fit) in fits.iter_mut().enumerate() {
                    fit.key = fit.key.map(|k| kept[k as usize] as u16);
                    tally.add(fit, thresholds);
                    (key_index[i], a[i], b[i], abs_cos[i]) = (fit.key.map_or(-1, i32::from), fit.a, fit.b, fit.abs_cos);
                }
                tally
            })
            .reduce(|| Tally::new(thresholds.len(), bank.len()), Tally::merged)
    };
    let stats = tally.stats(thresholds);
    let report = FitReport {
        bank: bank.name.clone(),
        bank_kernel: bank.kernel.to_string(),
        labels: bank.labels.clone(),
        resize_rule: RESIZE_RULE.to_string(),
        thresholds: thresholds.to_vec(),
        overall: stats.clone(),
        per_kernel: BTreeMap::from([(kernel.to_string(), stats.clone())]),
        per_model: BTreeMap::from([(source.to_string(), stats)]),
        per_depth_band: BTreeMap::new(),
        unusable_keys: if dropped.is_empty() {
            BTreeMap::new()
        } else {
            BTreeMap::from([(kernel.to_string(), dropped)])
        },
    };
    (columns, report)
}

/// One row of `fits.csv`.
#[derive(Serialize)]
struct FitRow<'a> {
    kernel: String,
    index: usize,
    source_file: &'a str,
    layer_name: &'a str,
    layer_index: usize,
    depth: f64,
    channel: usize,
    dead: bool,
    key: &'a str,
    key_index: Option<u16>,
    a: f32,
    b: f32,
    abs_cos: f32,
}

/// Writes every filter's fit, with its provenance, as CSV (atomically).
pub fn save_fits_csv(set: &FilterSet, fits: &GroupFits, bank: &Bank, path: &std::path::Path) -> crate::Result<()> {
    crate::atomic::write_file_with(path, |file| {
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
        for (kernel, group) in &set.groups {
            for (index, (p, f)) in group.provenance.iter().zip(&fits[kernel]).enumerate() {
                w.serialize(FitRow {
                    kernel: kernel.to_string(),
                    index,
                    source_file: &p.source_file,
                    layer_name: &p.layer_name,
                    layer_index: p.layer_index,
                    depth: p.depth,
                    channel: p.channel,
                    dead: p.dead,
                    key: f.key.map_or("", |k| bank.labels[k as usize].as_str()),
                    key_index: f.key,
                    a: f.a,
                    b: f.b,
                    abs_cos: f.abs_cos,
                })
                .map_err(std::io::Error::other)?;
            }
        }
        w.flush()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{DwLayer, ModelFilters};

    /// Naive reference: centre, dot with every key, pick the largest |cos|.
    fn naive(y: &[f32], keys: &[f32]) -> FilterFit {
        let t = y.len();
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / t as f64;
        let yc: Vec<f64> = y.iter().map(|&v| v as f64 - mean).collect();
        let norm = yc.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut best = (0, 0.0f64);
        for (k, key) in keys.chunks_exact(t).enumerate() {
            let d: f64 = yc.iter().zip(key).map(|(a, &b)| a * b as f64).sum();
            if d.abs() > best.1.abs() {
                best = (k, d);
            }
        }
        FilterFit { key: Some(best.0 as u16), a: best.1 as f32, b: mean as f32, abs_cos: (best.1.abs() / norm) as f32 }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matches_naive_reference_for_any_key_count() {
        let bank = Bank::published8();
        let mut seed = 7;
        let n = 300;
        let y: Vec<f32> = (0..n * 49).map(|_| lcg(&mut seed) * 0.3 + 0.05).collect();
        for nkeys in [1, 3, 8] {
            let keys = &bank.keys[..nkeys * 49];
            let fits = fit_filters(&y, 49, keys, &vec![false; n]);
            for i in 0..n {
                let r = naive(&y[i * 49..(i + 1) * 49], keys);
                let f = fits[i];
                assert_eq!(f.key, r.key, "filter {i}");
                assert!((f.a - r.a).abs() < 1e-5 && (f.b - r.b).abs() < 1e-6 && (f.abs_cos - r.abs_cos).abs() < 1e-5);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_path_gives_the_same_bits_as_the_portable_path() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return println!("skipped: no AVX2 on this CPU");
        }
        let bank = Bank::published8();
        let mut seed = 3;
        let n = 100;
        let y: Vec<f32> = (0..n * 49).map(|_| lcg(&mut seed)).collect();
        let keys: Vec<f32> = bank.keys.iter().chain(&bank.keys[..49]).copied().collect(); // 9 keys: two blocks
        let tm = TapMajorKeys::new(&keys, 49);
        let blank = FilterFit { key: None, a: 0.0, b: 0.0, abs_cos: 0.0 };
        let (mut portable, mut avx2) = (vec![blank; n], vec![blank; n]);
        tm.fit_chunk(&y, Dead::Flags(&vec![false; n]), &mut portable);
        unsafe { tm.fit_chunk_avx2(&y, Dead::Flags(&vec![false; n]), &mut avx2) };
        let bits = |f: &[FilterFit]| {
            f.iter().map(|f| (f.key, f.a.to_bits(), f.b.to_bits(), f.abs_cos.to_bits())).collect::<Vec<_>>()
        };
        assert_eq!(bits(&portable), bits(&avx2));
    }

    #[test]
    fn exact_shifts_are_recovered_with_their_a_and_b() {
        let bank = Bank::published8();
        let (a, b) = (-2.5f32, 0.75f32);
        let y: Vec<f32> = bank.key(6).iter().map(|&x| a * x + b).collect();
        let fit = fit_filters(&y, 49, &bank.keys, &[false])[0];
        assert_eq!(fit.key, Some(6));
        assert!((fit.a - a).abs() < 1e-4 && (fit.b - b).abs() < 1e-5 && fit.abs_cos > 0.9999);
    }

    #[test]
    fn report_counts_coverage_usage_models_bands_and_dead() {
        let bank = Bank::published8();
        let mut w = Vec::new();
        w.extend(bank.key(0).iter().map(|v| v * 3.0)); // perfect key 1
        w.extend(bank.key(7).iter().map(|v| -v + 1.0)); // perfect key 8, negative a
        w.extend(std::iter::repeat(0.5).take(49)); // dead
        let l0 = DwLayer::new("l0", KernelSize::square(7), 3, w).unwrap();
        let l1 = DwLayer::new("l1", KernelSize::square(7), 1, bank.key(4).to_vec()).unwrap();
        let mut set = FilterSet::default();
        set.add_model(&ModelFilters { source: "m1".into(), format: "t".into(), layers: vec![l0, l1] });
        let (fits, report) = fit_set(&set, &bank, &FitOptions::default());
        let f = &fits[&KernelSize::square(7)];
        assert_eq!(f.iter().map(|f| f.key).collect::<Vec<_>>(), vec![Some(0), Some(7), None, Some(4)]);
        assert!(f[1].a < 0.0);
        assert_eq!(report.overall.filters, 4);
        assert_eq!(report.overall.dead, 1);
        assert_eq!(report.overall.coverage["0.95"], 1.0);
        assert_eq!(report.overall.usage, vec![1, 0, 0, 0, 1, 0, 0, 1]);
        assert_eq!(report.per_depth_band["0.00-0.25"].filters, 3);
        assert_eq!(report.per_depth_band["0.75-1.00"].usage[4], 1);
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["coverage"]["0.8"].as_f64().unwrap() == 1.0 && json["mean_abs_cos"].is_number());
    }

    #[test]
    fn random_control_covers_bank_made_filters_worse_than_the_bank() {
        let bank = Bank::published8();
        let w: Vec<f32> = (0..64).flat_map(|c| bank.key(c % 8).iter().map(move |v| v * (1.0 + c as f32))).collect();
        let layer = DwLayer::new("l", KernelSize::square(7), 64, w).unwrap();
        let mut set = FilterSet::default();
        set.add_model(&ModelFilters { source: "m".into(), format: "t".into(), layers: vec![layer] });
        let control = RandomControl::compute(&set, &bank, &FitOptions::default(), 1);
        assert_eq!(control, RandomControl::compute(&set, &bank, &FitOptions::default(), 1));
        assert_eq!(control.overall.filters, 64);
        assert!(control.overall.mean_abs_cos < 0.9, "{}", control.overall.mean_abs_cos);
        assert_eq!(control.bank, "random8-seed1");
    }

    #[test]
    fn smaller_filters_use_the_centre_cropped_keys() {
        let bank = Bank::published8();
        let (keys3, kept) = bank.resized(KernelSize::square(3));
        let y: Vec<f32> = keys3[2 * 9..3 * 9].iter().map(|v| 0.1 * v - 0.2).collect();
        let layer = DwLayer::new("l", KernelSize::square(3), 1, y).unwrap();
        let mut set = FilterSet::default();
        set.add_model(&ModelFilters { source: "m".into(), format: "t".into(), layers: vec![layer] });
        let (fits, report) = fit_set(&set, &bank, &FitOptions::default());
        assert_eq!(fits[&KernelSize::square(3)][0].key, Some(kept[2] as u16));
        assert!(report.resize_rule.starts_with("centre-crop"));
    }

    /// The array path gives the same fits and summary as a set of one layer
    /// of the same filters (dead ones and a resized bank included).
    #[test]
    fn an_array_fits_as_a_set_of_the_same_filters() {
        let bank = Bank::published8();
        let kernel = KernelSize::square(5);
        let (keys5, _) = bank.resized(kernel);
        let mut w: Vec<f32> = (0..40)
            .flat_map(|c| {
                keys5[(c % 8) * 25..(c % 8 + 1) * 25].iter().map(move |v| v * (0.5 + c as f32) + 0.1 * c as f32)
            })
            .collect();
        w.extend(vec![0.3f32; 25]);
        let layer = DwLayer::new("array", kernel, 41, w.clone()).unwrap();
        let mut set = FilterSet::default();
        set.add_model(&ModelFilters { source: "numpy".into(), format: "t".into(), layers: vec![layer] });
        let options = FitOptions::default();
        let (set_fits, set_report) = fit_set(&set, &bank, &options);
        let (columns, report) = fit_array(&w, kernel, set.dead_tolerance, &bank, &options.thresholds, "numpy");
        let fits = &set_fits[&kernel];
        assert_eq!(columns.key_index, fits.iter().map(|f| f.key.map_or(-1, i32::from)).collect::<Vec<_>>());
        assert_eq!(columns.a, fits.iter().map(|f| f.a).collect::<Vec<_>>());
        assert_eq!(columns.b, fits.iter().map(|f| f.b).collect::<Vec<_>>());
        assert_eq!(columns.abs_cos, fits.iter().map(|f| f.abs_cos).collect::<Vec<_>>());
        assert_eq!(report.overall, set_report.overall);
        assert_eq!((report.per_kernel, report.per_model), (set_report.per_kernel, set_report.per_model));
        assert_eq!(report.overall.dead, 1);
        assert_eq!(report.unusable_keys, set_report.unusable_keys);
    }

    /// The dead check inside the fit decides as the exact f64 test does, for
    /// filters at the tolerance, constant ones with large means and tiny
    /// wiggles on large means (where f32 statistics alone would err).
    #[test]
    fn the_dead_check_in_the_fit_is_the_exact_one() {
        let bank = Bank::published8();
        let taps = bank.kernel.taps();
        let tolerance = 1e-6f32;
        let mut filters = Vec::new();
        for mean in [0.0f32, 0.1, 1.0, 3.7, 100.0, -2500.0, 1e6] {
            for norm in [0.0f32, 1e-8, 5e-7, 9.9e-7, 1e-6, 1.01e-6, 2e-6, 1e-5, 1.0] {
                filters.extend(bank.key(filters.len() / taps % 8).iter().map(|k| mean + norm * k));
            }
        }
        let n = filters.len() / taps;
        let exact: Vec<bool> =
            filters.chunks_exact(taps).map(|f| is_dead(mean_and_centered_norm(f).1, tolerance)).collect();
        assert!(exact.iter().any(|&d| d) && exact.iter().any(|&d| !d));
        let (columns, _) = fit_array(&filters, bank.kernel, tolerance, &bank, &[0.5], "adversarial");
        let marked: Vec<bool> = columns.key_index.iter().map(|&k| k < 0).collect();
        assert_eq!(marked, exact, "{n} filters");
        let fits = fit_filters(&filters, taps, &bank.keys, &exact);
        assert_eq!(columns.abs_cos, fits.iter().map(|f| f.abs_cos).collect::<Vec<_>>());
    }
}
