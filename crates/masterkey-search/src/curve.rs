//! Coverage versus the number of keys, and the elbow rule that picks K.

use std::collections::BTreeMap;

use masterkey_core::fit::fit_filters;
use serde::{Deserialize, Serialize};

use crate::filters::NormalisedFilters;

/// How `-k auto` picks K: the "kneedle" rule on the unexplained part on a
/// log scale. Mean `|cos|` saturates towards 1, so its gains shrink
/// geometrically even while every new key still captures real structure;
/// `-ln(1 - mean |cos|)` straightens that decay, and it goes flat where the
/// keys stop explaining anything but noise. The elbow is where it bends.
pub const ELBOW_RULE: &str = "kneedle on the log residual: with r(K) = -ln(max(1 - mean |cos|, 1e-6)), \
scale K and r to [0, 1] over the curve; the elbow is the K whose point lies farthest above the chord \
from the first point to the last (the smallest such K on ties, the first K of a flat curve)";

/// Floor of the residual `1 - mean |cos|`, near f32's resolution of `|cos|`.
const RESIDUAL_FLOOR: f64 = 1e-6;

/// How well one bank explains the filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub k: usize,
    pub mean_abs_cos: f64,
    /// Share of filters whose best key reaches `|cos| >= t`, keyed by `t`.
    pub coverage: BTreeMap<String, f64>,
}

/// Coverage and mean `|cos|` of the banks a method found for K = 1, 2, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageCurve {
    /// The method and its settings.
    pub method: String,
    pub kernel: String,
    /// Live (normalised) filters the curve is measured on.
    pub filters: usize,
    /// Dead filters left out.
    pub dead: usize,
    pub thresholds: Vec<f32>,
    pub points: Vec<CurvePoint>,
    pub elbow_rule: String,
    /// K at the elbow of this curve.
    pub elbow_k: usize,
}

/// Best fits of every filter to `keys`, with the point of the curve they make.
pub struct Evaluation {
    pub point: CurvePoint,
    /// Filters whose best key is each key.
    pub usage: Vec<usize>,
    /// Mean `|cos|` of the filters whose best key is each key (0 when unused).
    pub mean_abs_cos_per_key: Vec<f64>,
}

pub fn evaluate(filters: &NormalisedFilters, keys: &[f32], thresholds: &[f32]) -> Evaluation {
    let taps = filters.taps();
    let k = keys.len() / taps;
    let fits = fit_filters(&filters.data, taps, keys, &vec![false; filters.len()]);
    let mut usage = vec![0usize; k];
    let mut sums = vec![0.0f64; k];
    let mut covered = vec![0usize; thresholds.len()];
    for f in &fits {
        let key = f.key.expect("live filters all get a key") as usize;
        usage[key] += 1;
        sums[key] += f.abs_cos as f64;
        for (c, &t) in covered.iter_mut().zip(thresholds) {
            *c += usize::from(f.abs_cos >= t);
        }
    }
    let n = fits.len().max(1) as f64;
    Evaluation {
        point: CurvePoint {
            k,
            mean_abs_cos: sums.iter().sum::<f64>() / n,
            coverage: thresholds.iter().zip(&covered).map(|(t, &c)| (t.to_string(), c as f64 / n)).collect(),
        },
        mean_abs_cos_per_key: sums.iter().zip(&usage).map(|(s, &u)| if u == 0 { 0.0 } else { s / u as f64 }).collect(),
        usage,
    }
}

/// The elbow of a curve of `(K, mean |cos|)` points, K ascending, by [`ELBOW_RULE`].
pub fn elbow(points: &[(usize, f64)]) -> usize {
    assert!(!points.is_empty(), "the elbow of an empty curve");
    let r: Vec<f64> = points.iter().map(|p| -(1.0 - p.1).max(RESIDUAL_FLOOR).ln()).collect();
    let (k_min, k_max) = (points[0].0 as f64, points[points.len() - 1].0 as f64);
    let r_min = r.iter().copied().fold(f64::INFINITY, f64::min);
    let r_max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !(r_max > r_min) || k_max <= k_min {
        return points[0].0;
    }
    let above_chord = |i: usize| (r[i] - r_min) / (r_max - r_min) - (points[i].0 as f64 - k_min) / (k_max - k_min);
    let best = (1..points.len()).fold(0, |best, i| if above_chord(i) > above_chord(best) { i } else { best });
    points[best].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elbow_of_a_curve_that_saturates_at_five() {
        // Rises steeply to K = 5, then creeps up.
        let curve: Vec<(usize, f64)> =
            (1..=16).map(|k| (k, if k <= 5 { 0.5 + 0.09 * k as f64 } else { 0.95 + 0.002 * (k - 5) as f64 })).collect();
        assert_eq!(elbow(&curve), 5);
    }

    #[test]
    fn elbow_is_where_an_exponential_decay_meets_its_noise_floor() {
        // Residual max(exp(-K / s), 0.01): the floor is reached between
        // K = s ln 100 and the next K; the elbow moves out with s.
        let curve = |s: f64| (1..=16).map(|k| (k, 1.0 - (-(k as f64) / s).exp().max(0.01))).collect::<Vec<_>>();
        assert_eq!(elbow(&curve(1.5)), 7); // 1.5 ln 100 = 6.9
        assert_eq!(elbow(&curve(3.0)), 13); // 3 ln 100 = 13.8
    }

    #[test]
    fn elbow_of_a_power_law_curve_is_early() {
        // 1 - mean |cos| = 0.5 / K has no floor; by hand the rule picks 5.
        let curve: Vec<(usize, f64)> = (1..=16).map(|k| (k, 1.0 - 0.5 / k as f64)).collect();
        assert_eq!(elbow(&curve), 5);
    }

    #[test]
    fn elbow_of_a_flat_or_single_point_curve_is_its_first_k() {
        assert_eq!(elbow(&[(3, 0.9)]), 3);
        assert_eq!(elbow(&[(1, 0.9), (2, 0.9), (3, 0.9)]), 1);
    }
}
