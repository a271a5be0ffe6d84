//! Three discretisations of the 1-D Gaussian on the integer lattice.
//!
//! All three are normalised to unit sum over the whole lattice (not over the
//! window a kernel is cut to), so the amplitude of the smoothing part means the
//! same whichever is used; this matters for `delta - alpha * Lap5 T`, where
//! `alpha` weighs a smoothed kernel against an unsmoothed delta.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bessel::discrete_gaussian;

/// How the continuous Gaussian `g(x; sigma)` is turned into lattice values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discretisation {
    /// Lindeberg's discrete analogue `T(n; s) = exp(-s) I_|n|(s)`, `s = sigma^2`:
    /// the kernel of the semi-discrete diffusion equation, with variance exactly `s`.
    Discrete,
    /// `g(n; sigma)` sampled at the integers, divided by its sum over the lattice.
    Sampled,
    /// `g` integrated over each pixel `[n - 1/2, n + 1/2]` (differences of `erf`).
    Integrated,
}

impl Discretisation {
    pub const ALL: [Discretisation; 3] =
        [Discretisation::Discrete, Discretisation::Sampled, Discretisation::Integrated];

    pub fn name(self) -> &'static str {
        match self {
            Discretisation::Discrete => "discrete",
            Discretisation::Sampled => "sampled",
            Discretisation::Integrated => "integrated",
        }
    }
}

impl fmt::Display for Discretisation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Discretisation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Discretisation::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown discretisation `{s}`; expected one of discrete, sampled, integrated"))
    }
}

/// Beyond this many sigmas the sampled Gaussian is below `exp(-72)` of its peak:
/// the lattice sum that normalises it may stop there.
const SAMPLED_TAIL_SIGMAS: f64 = 12.0;

/// The Gaussian at `n = -radius..=radius` (index `radius` is `n = 0`).
/// `sigma` must be positive and finite.
pub fn gaussian_1d(discretisation: Discretisation, sigma: f64, radius: usize) -> Vec<f64> {
    let half = match discretisation {
        Discretisation::Discrete => discrete_gaussian(sigma * sigma, radius),
        Discretisation::Sampled => sampled_half(sigma, radius),
        Discretisation::Integrated => integrated_half(sigma, radius),
    };
    half.iter().rev().chain(&half[1..]).copied().collect()
}

fn sampled_half(sigma: f64, radius: usize) -> Vec<f64> {
    let reach = radius.max((SAMPLED_TAIL_SIGMAS * sigma).ceil() as usize);
    let values: Vec<f64> = (0..=reach).map(|n| (-0.5 * (n as f64 / sigma).powi(2)).exp()).collect();
    let total = values[0] + 2.0 * values[1..].iter().sum::<f64>();
    values[..=radius].iter().map(|v| v / total).collect()
}

/// Pixel integrals by `erf` (centre pixel) and `erfc` differences (the rest):
/// `erfc` keeps relative accuracy in the tails, where `erf(b) - erf(a)` would
/// cancel to zero.
fn integrated_half(sigma: f64, radius: usize) -> Vec<f64> {
    let scale = 1.0 / (sigma * std::f64::consts::SQRT_2);
    (0..=radius)
        .map(|n| {
            if n == 0 {
                libm::erf(0.5 * scale)
            } else {
                let n = n as f64;
                0.5 * (libm::erfc((n - 0.5) * scale) - libm::erfc((n + 0.5) * scale))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_difference(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn every_discretisation_is_symmetric_finite_and_sums_to_one() {
        for d in Discretisation::ALL {
            for sigma in [0.1f64, 0.6, 1.0, 3.0, 10.0] {
                // Wide enough that the mass outside is below 1e-13 (the discrete
                // analogue's tails are the heavier ones at small sigma).
                let radius = (12.0 * sigma).ceil().max(10.0) as usize;
                let g = gaussian_1d(d, sigma, radius);
                assert_eq!(g.len(), 2 * radius + 1);
                assert!(g.iter().all(|v| v.is_finite() && *v >= 0.0), "{d} sigma {sigma}");
                assert!(g.iter().zip(g.iter().rev()).all(|(a, b)| a == b), "{d} sigma {sigma} is not symmetric");
                let total: f64 = g.iter().sum();
                assert!((total - 1.0).abs() < 1e-12, "{d} sigma {sigma}: sum {total}");
            }
        }
    }

    #[test]
    fn discretisations_converge_at_large_scale_and_differ_at_sigma_0_6() {
        // Largest tap difference relative to the peak.
        let relative_gap = |a, b, sigma: f64| {
            let (ga, gb) = (gaussian_1d(a, sigma, 40), gaussian_1d(b, sigma, 40));
            max_abs_difference(&ga, &gb) / ga[40]
        };
        for (a, b) in [
            (Discretisation::Discrete, Discretisation::Sampled),
            (Discretisation::Sampled, Discretisation::Integrated),
            (Discretisation::Discrete, Discretisation::Integrated),
        ] {
            let gaps = [0.6, 1.0, 3.0, 10.0].map(|sigma| relative_gap(a, b, sigma));
            // Visibly different at sigma 0.6 (centre taps 0.720 discrete,
            // 0.664 sampled, 0.595 integrated) ...
            assert!(gaps[0] > 0.05, "{a} vs {b} at sigma 0.6: {gaps:?}");
            // ... converging as sigma grows (the gaps shrink like 1/sigma^2
            // once sigma is past a pixel).
            assert!(gaps[3] < gaps[2] && gaps[2] < gaps[1].min(gaps[0]), "{a} vs {b}: {gaps:?}");
            assert!(gaps[3] < 2e-3, "{a} vs {b} at sigma 10: {gaps:?}");
        }
    }

    #[test]
    fn integrated_centre_tap_is_the_erf_of_half_a_pixel() {
        // Pixel integral of the centre for sigma = 1: erf(0.5 / sqrt 2).
        let g = gaussian_1d(Discretisation::Integrated, 1.0, 0);
        assert!((g[0] - 0.38292492254802624).abs() < 1e-15, "{}", g[0]);
    }
}
