//! How well a set of keys explains the filters: the score that greedy
//! backward elimination maximises. Pluggable, so that a later scorer can
//! measure, say, the agreement of a real network whose filters were replaced.

use masterkey_core::fit::fit_filters;
use serde::{Deserialize, Serialize};

use crate::filters::NormalisedFilters;

pub trait Scorer: Sync {
    /// Higher is better. `bank` holds normalised keys of `taps` taps each.
    fn score(&self, bank: &[f32], taps: usize) -> f64;

    /// A short description for the provenance of banks it helped choose.
    fn describe(&self) -> String {
        "custom scorer".into()
    }
}

/// What [`FitScorer`] measures over the best fits of the filters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum FitObjective {
    /// Mean `|cos|` of every filter to its best key.
    MeanAbsCos,
    /// Share of filters whose best key reaches `|cos| >= t`.
    Coverage(f32),
}

/// The default scorer: fits the filters to the keys with
/// [`masterkey_core::fit::fit_filters`]. Elimination calls it thousands of
/// times, so it holds at most `max_filters` filters, evenly spaced through the
/// set (all of them when the set is smaller).
pub struct FitScorer {
    objective: FitObjective,
    sample: Vec<f32>,
    dead: Vec<bool>,
    of: usize,
}

impl FitScorer {
    pub fn new(filters: &NormalisedFilters, objective: FitObjective, max_filters: usize) -> Self {
        let n = filters.len();
        let m = n.min(max_filters.max(1));
        let sample: Vec<f32> = (0..m).flat_map(|i| filters.filter(i * n / m).iter().copied()).collect();
        FitScorer { objective, sample, dead: vec![false; m], of: n }
    }
}

impl Scorer for FitScorer {
    fn score(&self, bank: &[f32], taps: usize) -> f64 {
        let fits = fit_filters(&self.sample, taps, bank, &self.dead);
        let n = fits.len().max(1) as f64;
        match self.objective {
            FitObjective::MeanAbsCos => fits.iter().map(|f| f.abs_cos as f64).sum::<f64>() / n,
            FitObjective::Coverage(t) => fits.iter().filter(|f| f.abs_cos >= t).count() as f64 / n,
        }
    }

    fn describe(&self) -> String {
        let what = match self.objective {
            FitObjective::MeanAbsCos => "mean |cos| of the best fits".to_string(),
            FitObjective::Coverage(t) => format!("coverage at |cos| >= {t}"),
        };
        format!("{what} over {} of {} filters", self.dead.len(), self.of)
    }
}
