use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Height and width of a filter, in taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelSize {
    pub h: usize,
    pub w: usize,
}

impl KernelSize {
    pub const fn new(h: usize, w: usize) -> Self {
        KernelSize { h, w }
    }
    pub const fn square(k: usize) -> Self {
        KernelSize { h: k, w: k }
    }
    pub const fn taps(self) -> usize {
        self.h * self.w
    }
}

/// Written as `HxW`, e.g. `7x7`: the key used in JSON, CSV and tensor names.
impl fmt::Display for KernelSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.h, self.w)
    }
}

impl FromStr for KernelSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (h, w) = s.split_once('x').ok_or_else(|| format!("kernel size `{s}` is not of the form HxW"))?;
        let parse = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v > 0);
        match (parse(h), parse(w)) {
            (Some(h), Some(w)) => Ok(KernelSize { h, w }),
            _ => Err(format!("kernel size `{s}` is not of the form HxW with positive integers")),
        }
    }
}

/// Default tolerance on the centred L2 norm below which a filter is dead.
pub const DEFAULT_DEAD_TOLERANCE: f32 = 1e-6;

/// Mean and centred L2 norm of a filter, accumulated in f64 so that the
/// statistics of a filter do not depend on its length or tap order noise.
/// Four partial sums (taps `i mod 4`), added in a fixed order at the end:
/// the compiler vectorises them, where one running sum is a chain of
/// dependent additions (it was most of the time of fitting a NumPy array).
#[inline(always)]
pub fn mean_and_centered_norm(taps: &[f32]) -> (f32, f32) {
    let n = taps.len() as f64;
    let mean = lanes_f64(taps, |v| v) / n;
    let ss = lanes_f64(taps, |v| (v - mean) * (v - mean));
    (mean as f32, ss.sqrt() as f32)
}

/// Sum of `f(v)` over `taps` (in f64) in four partial sums.
#[inline(always)]
fn lanes_f64(taps: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = taps.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for c in chunks {
        for l in 0..4 {
            acc[l] += f(c[l] as f64);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// A filter is dead when its centred L2 norm is below the tolerance (or zero, or NaN).
pub fn is_dead(centered_norm: f32, tolerance: f32) -> bool {
    !(centered_norm >= tolerance) || centered_norm == 0.0
}

/// Normalises in place (zero mean, unit L2 norm). Returns `false`, leaving the
/// taps untouched, for a dead filter.
pub fn normalise(taps: &mut [f32], dead_tolerance: f32) -> bool {
    let (mean, norm) = mean_and_centered_norm(taps);
    if is_dead(norm, dead_tolerance) {
        return false;
    }
    for v in taps.iter_mut() {
        *v = (*v - mean) / norm;
    }
    true
}
