//! One search: run a method for K = 1..=max_k, measure the coverage-versus-K
//! curve, pick K (fixed or at the elbow) and wrap that bank.

use masterkey_core::{Bank, Error, Result};
use serde::{Deserialize, Serialize};

use crate::autoencoder::{self, AutoencoderOptions};
use crate::curve::{elbow, evaluate, CoverageCurve, Evaluation, ELBOW_RULE};
use crate::filters::NormalisedFilters;
use crate::kmeans::{kmeans, KMeansOptions};
use crate::pca::eigenfilters;
use crate::scorer::{FitScorer, Scorer};
use crate::Progress;

pub const LICENCE: &str = "derived from the input models";

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    KMeans(KMeansOptions),
    Pca,
    Autoencoder(AutoencoderOptions),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::KMeans(_) => "kmeans",
            Method::Pca => "pca",
            Method::Autoencoder(_) => "autoencoder",
        }
    }
    fn seed(&self) -> Option<u64> {
        match self {
            Method::KMeans(o) => Some(o.seed),
            Method::Pca => None,
            Method::Autoencoder(o) => Some(o.seed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KChoice {
    Fixed(usize),
    /// The elbow of the curve, by [`ELBOW_RULE`].
    Elbow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    pub method: Method,
    pub k: KChoice,
    /// The curve covers K = 1..=max_k (and the fixed K, if larger).
    pub max_k: usize,
    /// `|cos|` thresholds at which coverage is measured.
    pub thresholds: Vec<f32>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            method: Method::KMeans(KMeansOptions::default()),
            k: KChoice::Elbow,
            max_k: 16,
            thresholds: vec![0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        }
    }
}

/// How much one key of the found bank is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub label: String,
    /// Filters whose best key it is.
    pub filters: usize,
    pub share: f64,
    /// Mean `|cos|` of those filters to it.
    pub mean_abs_cos: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    pub bank: Bank,
    pub usage: Vec<KeyUsage>,
    pub curve: CoverageCurve,
    /// `fixed` or `elbow`.
    pub k_rule: &'static str,
}

/// What a search found, without the files it may be saved to: the JSON
/// `masterkey search --json` prints and the Python package returns.
#[derive(Debug, Serialize)]
pub struct SearchSummary<'a> {
    pub inputs: Vec<String>,
    pub method: &'static str,
    pub kernel: String,
    pub k: usize,
    pub k_rule: &'static str,
    pub bank: BankSummary<'a>,
    pub usage: &'a [KeyUsage],
    pub curve: &'a CoverageCurve,
}

/// A bank's description, without its keys.
#[derive(Debug, Serialize)]
pub struct BankSummary<'a> {
    pub name: &'a str,
    pub kernel: String,
    pub labels: &'a [String],
    pub source: &'a str,
    pub licence: &'a str,
}

impl<'a> SearchSummary<'a> {
    /// The summary of `outcome`, found in `filters` of `inputs` by `method`.
    pub fn new(inputs: Vec<String>, method: &Method, filters: &NormalisedFilters, outcome: &'a SearchOutcome) -> Self {
        let bank = &outcome.bank;
        SearchSummary {
            inputs,
            method: method.name(),
            kernel: filters.kernel.to_string(),
            k: bank.len(),
            k_rule: outcome.k_rule,
            bank: BankSummary {
                name: &bank.name,
                kernel: bank.kernel.to_string(),
                labels: &bank.labels,
                source: &bank.source,
                licence: &bank.licence,
            },
            usage: &outcome.usage,
            curve: &outcome.curve,
        }
    }
}

/// Runs `options.method` on `filters` (described by `set_label` in the bank's
/// provenance). `scorer` replaces the autoencoder's default [`FitScorer`].
pub fn search(
    filters: &NormalisedFilters,
    set_label: &str,
    options: &SearchOptions,
    scorer: Option<&dyn Scorer>,
    progress: &Progress<'_>,
) -> Result<SearchOutcome> {
    let fixed = match options.k {
        KChoice::Fixed(0) => return Err(Error::Other("K must be at least 1".into())),
        KChoice::Fixed(k) => Some(k),
        KChoice::Elbow => None,
    };
    let k_max = options.max_k.max(fixed.unwrap_or(1)).max(1);
    if filters.len() < k_max {
        return Err(Error::Other(format!(
            "{} live filters are too few for banks of up to {k_max} keys",
            filters.len()
        )));
    }
    let (banks, method) = banks_for_each_k(filters, &options.method, k_max, scorer, progress)?;
    let evaluations: Vec<Evaluation> = banks
        .iter()
        .enumerate()
        .map(|(i, keys)| {
            progress("measuring coverage", i, banks.len());
            evaluate(filters, keys, &options.thresholds)
        })
        .collect();
    let elbow_k = elbow(&evaluations.iter().map(|e| (e.point.k, e.point.mean_abs_cos)).collect::<Vec<_>>());
    let k = fixed.unwrap_or(elbow_k);
    let chosen = &evaluations[k - 1];

    let name = match options.method.seed() {
        Some(seed) => format!("{}-k{k}-seed{seed}", options.method.name()),
        None => format!("{}-k{k}", options.method.name()),
    };
    let labels: Vec<String> = (1..=k).map(|i| format!("key{i}")).collect();
    let source = format!(
        "{method} on {} normalised {} filters ({} dead left out) of {set_label}",
        filters.len(),
        filters.kernel,
        filters.dead
    );
    let mut keys = banks[k - 1].clone();
    canonical_signs(&mut keys, filters.taps());
    let bank = Bank::new(&name, filters.kernel, keys, labels.clone(), &source, LICENCE).map_err(Error::Other)?;
    let usage = labels
        .into_iter()
        .enumerate()
        .map(|(i, label)| KeyUsage {
            label,
            filters: chosen.usage[i],
            share: chosen.usage[i] as f64 / filters.len() as f64,
            mean_abs_cos: chosen.mean_abs_cos_per_key[i],
        })
        .collect();
    let curve = CoverageCurve {
        method,
        kernel: filters.kernel.to_string(),
        filters: filters.len(),
        dead: filters.dead,
        thresholds: options.thresholds.clone(),
        points: evaluations.into_iter().map(|e| e.point).collect(),
        elbow_rule: ELBOW_RULE.to_string(),
        elbow_k,
    };
    Ok(SearchOutcome { bank, usage, curve, k_rule: if fixed.is_some() { "fixed" } else { "elbow" } })
}

/// The method's bank for every K in 1..=k_max, and its description.
fn banks_for_each_k(
    filters: &NormalisedFilters,
    method: &Method,
    k_max: usize,
    scorer: Option<&dyn Scorer>,
    progress: &Progress<'_>,
) -> Result<(Vec<Vec<f32>>, String)> {
    match method {
        Method::KMeans(o) => {
            let banks = (1..=k_max)
                .map(|k| {
                    progress("k-means", k - 1, k_max);
                    kmeans(filters, k, o).map(|r| r.keys)
                })
                .collect::<Result<_>>()?;
            Ok((banks, o.describe()))
        }
        Method::Pca => {
            let eig = eigenfilters(filters)?;
            if k_max > eig.max_keys() {
                return Err(Error::Other(format!(
                    "pca gives at most {} keys of {}, asked for {k_max}",
                    eig.max_keys(),
                    filters.kernel
                )));
            }
            let banks = (1..=k_max).map(|k| eig.leading(k).to_vec()).collect();
            Ok((banks, "pca (eigenfilters: leading eigenvectors of the second-moment matrix)".into()))
        }
        Method::Autoencoder(o) => {
            let default_scorer;
            let scorer = match scorer {
                Some(s) => s,
                None => {
                    default_scorer = FitScorer::new(filters, o.objective, o.score_sample);
                    &default_scorer
                }
            };
            let run = autoencoder::run(filters, o, k_max, scorer, progress)?;
            let banks = (1..=k_max).map(|k| run.keys(k)).collect();
            Ok((banks, format!("{}; final training loss {:.4}", o.describe(&scorer.describe()), run.final_loss)))
        }
    }
}

/// Flips each key so its largest-magnitude tap (the first on ties) is
/// positive: the sign is free, and this makes it reproducible across methods.
fn canonical_signs(keys: &mut [f32], taps: usize) {
    for key in keys.chunks_exact_mut(taps) {
        let peak = key.iter().fold(0.0f32, |best, &v| if v.abs() > best.abs() { v } else { best });
        if peak < 0.0 {
            key.iter_mut().for_each(|v| *v = -*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::compare;
    use crate::synthetic::shifted_copies;

    #[test]
    fn kmeans_curve_has_its_elbow_at_the_number_of_true_keys() {
        let bank = Bank::published8();
        let filters = shifted_copies(&bank, 60, 0.07, 2);
        let options = SearchOptions { max_k: 12, ..SearchOptions::default() };
        let out = search(&filters, "synthetic", &options, None, &|_, _, _| {}).unwrap();
        assert_eq!(out.curve.elbow_k, 8);
        assert_eq!(out.k_rule, "elbow");
        assert_eq!(out.bank.name, "kmeans-k8-seed1");
        assert_eq!(out.bank.licence, LICENCE);
        assert!(out.bank.source.contains("kmeans") && out.bank.source.contains("synthetic"));
        assert_eq!(out.curve.points.len(), 12);
        assert_eq!(out.usage.iter().map(|u| u.filters).sum::<usize>(), filters.len());
        assert!(out.usage.iter().all(|u| u.filters == 60 && u.mean_abs_cos > 0.99));
        assert!(out.curve.points[7].coverage["0.95"] > 0.99);
        assert!(compare(&bank, &out.bank, false).mean_abs_cos > 0.99);
        for key in out.bank.keys.chunks_exact(49) {
            let peak = key.iter().fold(0.0f32, |b, &v| if v.abs() > b.abs() { v } else { b });
            assert!(peak > 0.0);
        }
    }

    #[test]
    fn pca_bank_at_a_fixed_k_and_its_limits() {
        let bank = Bank::published8();
        let filters = shifted_copies(&bank, 20, 0.07, 4);
        let options = SearchOptions { method: Method::Pca, k: KChoice::Fixed(3), max_k: 5, ..SearchOptions::default() };
        let out = search(&filters, "synthetic", &options, None, &|_, _, _| {}).unwrap();
        assert_eq!((out.bank.name.as_str(), out.bank.len(), out.k_rule), ("pca-k3", 3, "fixed"));
        // More keys never explain the filters worse: the eigenfilters are nested.
        let means: Vec<f64> = out.curve.points.iter().map(|p| p.mean_abs_cos).collect();
        assert!(means.windows(2).all(|w| w[1] >= w[0] - 1e-9), "{means:?}");
        let too_many = SearchOptions { max_k: 49, ..options };
        assert!(search(&filters, "s", &too_many, None, &|_, _, _| {}).unwrap_err().to_string().contains("at most 48"));
    }
}
