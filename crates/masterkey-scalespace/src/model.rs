//! A model (family, discretisation, parameters) and the kernel it generates.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidInput, Result};
use crate::family::Family;
use crate::gauss1d::{gaussian_1d, Discretisation};

/// Scales (standard deviations, in pixels) a model may have.
pub const SIGMA_RANGE: RangeInclusive<f64> = 0.1..=10.0;
/// Weights of the Laplacian in `sharpen`: from a bare delta (0) to a kernel
/// dominated by the Laplacian of Gaussian (5: at sigma 0.5 the surround is
/// then about 20 times the delta).
pub const ALPHA_RANGE: RangeInclusive<f64> = 0.0..=5.0;
/// Odd kernel sizes models are generated at.
pub const SIZE_RANGE: RangeInclusive<usize> = 3..=31;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Scale along x (columns, rightwards), in pixels.
    pub sigma_x: f64,
    /// Scale along y (rows, downwards), in pixels.
    pub sigma_y: f64,
    /// Weight of the Laplacian, for `sharpen` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub family: Family,
    pub discretisation: Discretisation,
    pub params: Params,
}

/// A square kernel, row-major: row 0 at the top (y grows downwards), column 0
/// at the left (x grows rightwards), the centre tap at `(size / 2, size / 2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub size: usize,
    pub taps: Vec<f64>,
}

/// Kernels whose centred L2 norm is below this share of their largest tap
/// are treated as constant: normalising them would only amplify rounding.
const CONSTANT_KERNEL_TOLERANCE: f64 = 1e-12;

impl Kernel {
    /// The kernel with zero mean and unit L2 norm, or `None` if it is constant.
    pub fn normalised(&self) -> Option<Vec<f64>> {
        normalised(&self.taps)
    }
}

/// `taps` shifted to zero mean and scaled to unit L2 norm, or `None` if they
/// are constant (or not finite).
pub fn normalised(taps: &[f64]) -> Option<Vec<f64>> {
    let mean = taps.iter().sum::<f64>() / taps.len() as f64;
    let norm = taps.iter().map(|v| (v - mean).powi(2)).sum::<f64>().sqrt();
    let largest = taps.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if !norm.is_finite() || norm <= CONSTANT_KERNEL_TOLERANCE * largest {
        return None;
    }
    Some(taps.iter().map(|v| (v - mean) / norm).collect())
}

/// Checks that `size` is an odd kernel size in [`SIZE_RANGE`].
pub fn check_size(size: usize) -> Result<()> {
    if size % 2 != 1 || !SIZE_RANGE.contains(&size) {
        return Err(InvalidInput(format!(
            "kernel size must be odd and in {}..={}, found {size}",
            SIZE_RANGE.start(),
            SIZE_RANGE.end()
        )));
    }
    Ok(())
}

impl Model {
    pub fn new(family: Family, discretisation: Discretisation, params: Params) -> Result<Self> {
        let model = Model { family, discretisation, params };
        model.check()?;
        Ok(model)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        for (name, sigma) in [("sigma_x", p.sigma_x), ("sigma_y", p.sigma_y)] {
            if !SIGMA_RANGE.contains(&sigma) {
                return Err(InvalidInput(format!(
                    "{name} must be in [{}, {}] pixels, found {sigma}",
                    SIGMA_RANGE.start(),
                    SIGMA_RANGE.end()
                )));
            }
        }
        match (self.family.has_alpha(), p.alpha) {
            (true, Some(alpha)) if ALPHA_RANGE.contains(&alpha) => Ok(()),
            (true, Some(alpha)) => Err(InvalidInput(format!(
                "alpha must be in [{}, {}], found {alpha}",
                ALPHA_RANGE.start(),
                ALPHA_RANGE.end()
            ))),
            (true, None) => Err(InvalidInput(format!("family `{}` needs alpha, found none", self.family))),
            (false, Some(_)) => Err(InvalidInput(format!("family `{}` has no alpha, but one was given", self.family))),
            (false, None) => Ok(()),
        }
    }

    /// The model's kernel at an odd size in [`SIZE_RANGE`].
    pub fn kernel(&self, size: usize) -> Result<Kernel> {
        check_size(size)?;
        self.check()?;
        Ok(self.kernel_unchecked(size))
    }

    /// The kernel for parameters and a size already checked: the family's
    /// operator applied to `T` on the infinite lattice, then cut to the window
    /// (so every tap is exact, none is distorted by the window's edge).
    pub(crate) fn kernel_unchecked(&self, size: usize) -> Kernel {
        let p = &self.params;
        // One extra tap on each side: the 3x3 operators reach one beyond the window.
        let padded_radius = size / 2 + 1;
        let gx = gaussian_1d(self.discretisation, p.sigma_x, padded_radius);
        let gy = gaussian_1d(self.discretisation, p.sigma_y, padded_radius);
        let stencil = self.family.stencil();
        let mut taps = vec![0.0f64; size * size];
        for row in 0..size {
            for col in 0..size {
                // K(q) = sum_d a(d) T(q - d); q sits at padded (row + 1, col + 1)
                // and d = (i - 1, j - 1), so q - d sits at (row + 2 - i, col + 2 - j).
                let mut value = 0.0;
                for (i, stencil_row) in stencil.iter().enumerate() {
                    for (j, &a) in stencil_row.iter().enumerate() {
                        if a != 0.0 {
                            value += a * gy[row + 2 - i] * gx[col + 2 - j];
                        }
                    }
                }
                taps[row * size + col] = value;
            }
        }
        if let (Family::Sharpen, Some(alpha)) = (self.family, p.alpha) {
            taps.iter_mut().for_each(|v| *v *= -alpha);
            taps[size / 2 * size + size / 2] += 1.0;
        }
        Kernel { size, taps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(family: Family, discretisation: Discretisation, sigma_x: f64, sigma_y: f64) -> Model {
        let alpha = family.has_alpha().then_some(0.5);
        Model::new(family, discretisation, Params { sigma_x, sigma_y, alpha }).unwrap()
    }

    fn argmax(taps: &[f64]) -> usize {
        (0..taps.len()).max_by(|&a, &b| taps[a].total_cmp(&taps[b])).unwrap()
    }

    #[test]
    fn every_family_is_finite_and_normalisable_at_every_odd_size() {
        for family in Family::ALL {
            for d in Discretisation::ALL {
                for size in (3..=31).step_by(2) {
                    for (sx, sy) in [(0.1, 0.1), (0.1, 10.0), (10.0, 0.1), (1.0, 1.0), (10.0, 10.0)] {
                        let alphas: &[Option<f64>] = if family.has_alpha() { &[Some(0.0), Some(5.0)] } else { &[None] };
                        for &alpha in alphas {
                            let m = Model::new(family, d, Params { sigma_x: sx, sigma_y: sy, alpha }).unwrap();
                            let k = m.kernel(size).unwrap();
                            assert!(k.taps.iter().all(|v| v.is_finite()), "{family} {d} {size} {sx} {sy}");
                            let n = k.normalised().unwrap_or_else(|| {
                                panic!("{family} {d} size {size} sigma {sx},{sy} alpha {alpha:?} is constant")
                            });
                            let norm: f64 = n.iter().map(|v| v * v).sum();
                            assert!((norm - 1.0).abs() < 1e-12);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn orientation_is_x_right_and_y_down() {
        let d = Discretisation::Discrete;
        // 5x5: the centre is tap 12, right of it 13, below it 17, left 11, above 7.
        assert_eq!(argmax(&model(Family::Dx, d, 0.5, 0.5).kernel(5).unwrap().taps), 13);
        assert_eq!(argmax(&model(Family::Dy, d, 0.5, 0.5).kernel(5).unwrap().taps), 17);
        assert_eq!(argmax(&model(Family::OffsetRight, d, 0.3, 0.3).kernel(5).unwrap().taps), 13);
        assert_eq!(argmax(&model(Family::OffsetDown, d, 0.3, 0.3).kernel(5).unwrap().taps), 17);
        assert_eq!(argmax(&model(Family::OffsetLeft, d, 0.3, 0.3).kernel(5).unwrap().taps), 11);
        assert_eq!(argmax(&model(Family::OffsetUp, d, 0.3, 0.3).kernel(5).unwrap().taps), 7);
        // Wider along x than y: the Gaussian's right neighbour outweighs the one below.
        let g = model(Family::Gauss, d, 1.5, 0.5).kernel(5).unwrap().taps;
        assert!(g[13] > g[17]);
        // dxy is positive where x and y have the same sign (down-right).
        let dxy = model(Family::Dxy, d, 0.7, 0.7).kernel(5).unwrap().taps;
        assert!(dxy[18] > 0.0 && dxy[16] < 0.0, "{dxy:?}");
    }

    #[test]
    fn discrete_kernels_match_their_closed_forms() {
        let d = Discretisation::Discrete;
        let t = |n: usize| crate::bessel::discrete_gaussian(0.49, 2)[n];
        // Gauss: T(x) T(y); the centre is T(0)^2.
        let g = model(Family::Gauss, d, 0.7, 0.7).kernel(3).unwrap().taps;
        assert!((g[4] - t(0) * t(0)).abs() < 1e-15);
        // Lap5 T at the centre: 4 neighbours minus 4 centres (T separable).
        let log = model(Family::Log, d, 0.7, 0.7).kernel(3).unwrap().taps;
        assert!((log[4] - (4.0 * t(1) * t(0) - 4.0 * t(0) * t(0))).abs() < 1e-15);
        // sharpen = delta - alpha * log.
        let sharpen = model(Family::Sharpen, d, 0.7, 0.7).kernel(3).unwrap().taps;
        for i in 0..9 {
            let delta = if i == 4 { 1.0 } else { 0.0 };
            assert!((sharpen[i] - (delta - 0.5 * log[i])).abs() < 1e-15);
        }
        // A kernel is exact in its window: the 3x3 kernel is the centre of the 7x7 one.
        let small = model(Family::Dxy, d, 0.8, 1.1).kernel(3).unwrap().taps;
        let large = model(Family::Dxy, d, 0.8, 1.1).kernel(7).unwrap().taps;
        for r in 0..3 {
            for c in 0..3 {
                assert_eq!(small[r * 3 + c], large[(r + 2) * 7 + c + 2]);
            }
        }
    }

    #[test]
    fn bad_sizes_and_parameters_are_refused_with_the_reason() {
        let m = model(Family::Gauss, Discretisation::Discrete, 1.0, 1.0);
        assert!(m.kernel(4).unwrap_err().0.contains("odd"));
        assert!(m.kernel(33).unwrap_err().0.contains("3..=31"));
        let bad = |family, sigma_x, alpha| {
            Model::new(family, Discretisation::Sampled, Params { sigma_x, sigma_y: 1.0, alpha })
        };
        assert!(bad(Family::Gauss, 0.05, None).unwrap_err().0.contains("sigma_x"));
        assert!(bad(Family::Sharpen, 1.0, None).unwrap_err().0.contains("needs alpha"));
        assert!(bad(Family::Sharpen, 1.0, Some(9.0)).unwrap_err().0.contains("alpha must be"));
        assert!(bad(Family::Dx, 1.0, Some(0.5)).unwrap_err().0.contains("has no alpha"));
    }
}
