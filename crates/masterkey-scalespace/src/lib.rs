//! Idealised discrete scale-space models of the master-key filters, after
//! Lindeberg, Babaiee & Kiasari, "Modelling and analysis of the 8 filters from
//! the master key filters hypothesis" (arXiv 2509.12746): difference operators
//! applied to a separable Gaussian, and fits of any bank's keys to them.
//!
//! Conventions: kernels are square with an odd size 3..=31, row-major, row 0
//! at the top and column 0 at the left; x is the column index, growing to the
//! right, and y is the row index, growing DOWNWARDS (so `dy` and `offset-down`
//! point to lower rows). The origin is the centre tap. Kernels are applied by
//! cross-correlation, as PyTorch's `conv2d` does (see [`family`] for what the
//! kernel of each operator means).

pub mod bessel;
pub mod error;
pub mod family;
pub mod fit;
pub mod gauss1d;
pub mod ideal;
pub mod model;
mod nelder_mead;

pub use error::{InvalidInput, Result};
pub use family::Family;
pub use fit::{fit_bank, fit_key, BankFit, Criterion, FitOptions, KeyFit, ModelFit};
pub use gauss1d::{gaussian_1d, Discretisation};
pub use ideal::{family_from_centroids, ideal8, ideal_bank_from_fit, PUBLISHED8_MODELS};
pub use model::{Kernel, Model, Params};
