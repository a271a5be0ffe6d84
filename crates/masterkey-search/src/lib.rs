//! Finding banks of master keys in a filter set, and comparing banks.
//!
//! Every method works on the normalised (zero-mean, unit-norm) non-dead
//! filters of one kernel size and treats `x` and `-x` as the same key, since
//! the linear-shift fit `a*key + b` leaves the sign of `a` free:
//! - [`kmeans`]: sign-invariant spherical k-means (assignment by largest `|cos|`);
//! - [`pca`]: eigenfilters, the classical baseline;
//! - [`autoencoder`]: the paper's route — a 1-D latent autoencoder, candidates
//!   decoded along the latent, then greedy backward elimination under a
//!   pluggable [`Scorer`].
//!
//! [`search`] runs a method for every K of a coverage-versus-K curve and picks
//! the bank (fixed K or the curve's elbow); [`compare`] matches two banks key
//! to key.

pub mod autoencoder;
pub mod compare;
pub mod curve;
pub mod eliminate;
pub mod filters;
pub mod kmeans;
pub mod pca;
pub mod scorer;
pub mod search;
mod tap_major;

pub mod synthetic;

pub use autoencoder::AutoencoderOptions;
pub use compare::{compare, Comparison, KeyMatch, Symmetry};
pub use curve::{elbow, CoverageCurve, CurvePoint, ELBOW_RULE};
pub use filters::NormalisedFilters;
pub use kmeans::KMeansOptions;
pub use scorer::{FitObjective, FitScorer, Scorer};
pub use search::{search, BankSummary, KChoice, KeyUsage, Method, SearchOptions, SearchOutcome, SearchSummary};

/// Progress reports: what is being done, steps done, steps in all. Called from
/// the calling thread or from rayon workers, hence `Sync`.
pub type Progress<'a> = dyn Fn(&str, usize, usize) + Sync + 'a;
