//! The model families: difference operators applied to a separable Gaussian.
//!
//! Each family is an image-side operator `D` on a 3x3 neighbourhood, with
//! coefficients `a(dy, dx)`: applied to an image `f` it gives
//! `(D f)(p) = sum a(d) f(p + d)`. The family's kernel is the one that, applied
//! by cross-correlation (as PyTorch's `conv2d` does), computes `D` of the
//! Gaussian-smoothed image: `K(q) = sum_d a(d) T(q - d)`. So the `dx` kernel
//! has its positive lobe on the right, and `offset-down` has its positive peak
//! one pixel below the centre (for small sigma: `+1` below, `-1` at the
//! centre). Fits treat the sign as free, so this fixes meaning, not fit quality.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Coefficients `a[1 + dy][1 + dx]`, `dy` growing downwards, `dx` rightwards.
pub type Stencil = [[f64; 3]; 3];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// `T`: the Gaussian itself (a blob).
    Gauss,
    /// Centred first difference `[-1/2, 0, 1/2]` along x of `T`.
    Dx,
    /// Centred first difference along y (downwards) of `T`.
    Dy,
    /// Non-centred difference `[-1, 1]`: the neighbour above minus the centre, of `T`.
    OffsetUp,
    /// The neighbour below minus the centre.
    OffsetDown,
    /// The neighbour on the left minus the centre.
    OffsetLeft,
    /// The neighbour on the right minus the centre.
    OffsetRight,
    /// Second difference `[1, -2, 1]` along x of `T`.
    Dxx,
    /// Second difference along y of `T`.
    Dyy,
    /// Mixed difference: centred x difference of the centred y difference of `T`.
    Dxy,
    /// The 5-point Laplacian of `T` (a discrete Laplacian of Gaussian).
    Log,
    /// `delta - alpha * Lap5 T`: centre-surround, a DoG-like sharpening kernel.
    Sharpen,
}

impl Family {
    pub const ALL: [Family; 12] = [
        Family::Gauss,
        Family::Dx,
        Family::Dy,
        Family::OffsetUp,
        Family::OffsetDown,
        Family::OffsetLeft,
        Family::OffsetRight,
        Family::Dxx,
        Family::Dyy,
        Family::Dxy,
        Family::Log,
        Family::Sharpen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Gauss => "gauss",
            Family::Dx => "dx",
            Family::Dy => "dy",
            Family::OffsetUp => "offset-up",
            Family::OffsetDown => "offset-down",
            Family::OffsetLeft => "offset-left",
            Family::OffsetRight => "offset-right",
            Family::Dxx => "dxx",
            Family::Dyy => "dyy",
            Family::Dxy => "dxy",
            Family::Log => "log",
            Family::Sharpen => "sharpen",
        }
    }

    /// Whether the family has the weight `alpha` besides the two scales.
    pub fn has_alpha(self) -> bool {
        self == Family::Sharpen
    }

    /// The difference operator applied to `T`. For `sharpen` it is the 5-point
    /// Laplacian, which the kernel then weighs by `-alpha` and adds to a delta.
    pub fn stencil(self) -> Stencil {
        const Z: f64 = 0.0;
        const H: f64 = 0.5;
        const Q: f64 = 0.25;
        const LAPLACIAN: Stencil = [[Z, 1.0, Z], [1.0, -4.0, 1.0], [Z, 1.0, Z]];
        match self {
            Family::Gauss => [[Z, Z, Z], [Z, 1.0, Z], [Z, Z, Z]],
            Family::Dx => [[Z, Z, Z], [-H, Z, H], [Z, Z, Z]],
            Family::Dy => [[Z, -H, Z], [Z, Z, Z], [Z, H, Z]],
            Family::OffsetUp => [[Z, 1.0, Z], [Z, -1.0, Z], [Z, Z, Z]],
            Family::OffsetDown => [[Z, Z, Z], [Z, -1.0, Z], [Z, 1.0, Z]],
            Family::OffsetLeft => [[Z, Z, Z], [1.0, -1.0, Z], [Z, Z, Z]],
            Family::OffsetRight => [[Z, Z, Z], [Z, -1.0, 1.0], [Z, Z, Z]],
            Family::Dxx => [[Z, Z, Z], [1.0, -2.0, 1.0], [Z, Z, Z]],
            Family::Dyy => [[Z, 1.0, Z], [Z, -2.0, Z], [Z, 1.0, Z]],
            Family::Dxy => [[Q, Z, -Q], [Z, Z, Z], [-Q, Z, Q]],
            Family::Log | Family::Sharpen => LAPLACIAN,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
            format!("unknown family `{s}`; expected one of {}", names.join(", "))
        })
    }
}
