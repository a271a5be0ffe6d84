//! What one set of DW filters says about the master keys: how well published8
//! covers it, against its own K-key bank and random keys of the same K, and
//! which published keys its own bank rediscovers.

use masterkey_core::{fit_set, Bank, Error, FilterSet, FitOptions, KernelSize, Result};
use masterkey_scalespace::ideal8;
use masterkey_search::{
    compare, search, AutoencoderOptions, KChoice, KMeansOptions, Method, NormalisedFilters, SearchOptions,
};
use serde::{Deserialize, Serialize};

/// Coverage is reported as the share of live filters whose best key reaches
/// this `|cos|` (the threshold the project's tables use).
pub const COVERAGE_THRESHOLD: f32 = 0.8;
/// A published key counts as rediscovered when a found key matches it this well.
pub const REDISCOVERED: f64 = 0.9;
/// Random banks averaged for the chance level.
pub const RANDOM_SEEDS: [u64; 3] = [1, 2, 3];

/// Mean best `|cos|` and coverage of a set by a bank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub mean_abs_cos: f64,
    /// Share at `|cos| >= COVERAGE_THRESHOLD`.
    pub coverage: f64,
}

/// A bank found in the filters, matched one-to-one to published8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundBank {
    pub method: String,
    pub coverage: Coverage,
    /// Matched `|cos|` of each published8 key (published order; sign and the
    /// square's 8 symmetries allowed; 0 where unmatched).
    pub matched: Vec<f64>,
    /// The same with each key as it is (sign allowed, no symmetries): a
    /// network may learn a published key turned or mirrored.
    #[serde(default)]
    pub matched_oriented: Vec<f64>,
    pub mean_matched: f64,
    /// Labels of the published keys matched at `|cos| >= REDISCOVERED`.
    pub rediscovered: Vec<String>,
    /// The keys, `[K, k*k]` row-major, in the order of the published keys
    /// they match (unmatched ones last), for pictures.
    pub keys: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetStats {
    /// Live filters of the analysed kernel size.
    pub filters: usize,
    pub published8: Coverage,
    /// Mean over random banks of K keys (seeds `RANDOM_SEEDS`).
    pub random: Coverage,
    /// Coverage by the idealised scale-space bank (`ideal8`: each published
    /// key's Gaussian-derivative model), a fourth reference.
    #[serde(default)]
    pub scalespace: Option<Coverage>,
    pub kmeans: FoundBank,
    /// The paper's route; only where asked (it costs more).
    pub autoencoder: Option<FoundBank>,
}

fn coverage(set: &FilterSet, bank: &Bank) -> Result<Coverage> {
    let options = FitOptions { thresholds: vec![COVERAGE_THRESHOLD], ..FitOptions::default() };
    let (_, report) = fit_set(set, bank, &options);
    // One threshold asked, so one coverage value.
    let coverage = report
        .overall
        .coverage
        .values()
        .next()
        .copied()
        .ok_or_else(|| Error::Other("the fit reported no coverage".into()))?;
    Ok(Coverage { mean_abs_cos: report.overall.mean_abs_cos, coverage })
}

/// How snapshots are analysed.
#[derive(Debug, Clone)]
pub struct AnalysisOptions {
    /// Keys per found bank (and per random bank).
    pub k: usize,
    /// The autoencoder route's settings (its seed is the run's).
    pub autoencoder: AutoencoderOptions,
}

/// Analyses the `kernel` filters of `set` with banks of `options.k` keys;
/// the autoencoder route runs only `with_autoencoder`.
pub fn analyse(
    set: &FilterSet,
    kernel: KernelSize,
    options: &AnalysisOptions,
    with_autoencoder: bool,
    seed: u64,
) -> Result<SetStats> {
    let k = options.k;
    let group =
        set.groups.get(&kernel).ok_or_else(|| Error::Other(format!("the filter set has no {kernel} filters")))?;
    let only = FilterSet { dead_tolerance: set.dead_tolerance, groups: [(kernel, group.clone())].into() };
    let filters = NormalisedFilters::from_group(group);
    let published = Bank::published8();
    let published8 = coverage(&only, &published)?;
    let mut random = Coverage { mean_abs_cos: 0.0, coverage: 0.0 };
    for s in RANDOM_SEEDS {
        let c = coverage(&only, &Bank::random(k, kernel, s))?;
        random.mean_abs_cos += c.mean_abs_cos / RANDOM_SEEDS.len() as f64;
        random.coverage += c.coverage / RANDOM_SEEDS.len() as f64;
    }
    let found = |method: Method| -> Result<FoundBank> {
        let options = SearchOptions { method, k: KChoice::Fixed(k), max_k: k, ..SearchOptions::default() };
        let outcome = search(&filters, "a trained network's DW filters", &options, None, &|_, _, _| {})?;
        let own = coverage(&only, &outcome.bank)?;
        let comparison = compare(&outcome.bank, &published, true);
        let per_key = |pairs: &[masterkey_search::KeyMatch]| {
            let mut matched = vec![0.0; published.len()];
            pairs.iter().for_each(|pair| matched[pair.b] = pair.abs_cos);
            matched
        };
        let matched = per_key(&comparison.pairs);
        let matched_oriented = per_key(&compare(&outcome.bank, &published, false).pairs);
        let rediscovered =
            (0..published.len()).filter(|&i| matched[i] >= REDISCOVERED).map(|i| published.labels[i].clone()).collect();
        // Found keys in the order of the published keys they match, then the unmatched ones.
        let mut order: Vec<usize> =
            (0..published.len()).filter_map(|i| comparison.pairs.iter().find(|p| p.b == i).map(|p| p.a)).collect();
        let unmatched: Vec<usize> = (0..outcome.bank.len()).filter(|a| !order.contains(a)).collect();
        order.extend(unmatched);
        Ok(FoundBank {
            method: options.method.name().to_string(),
            coverage: own,
            mean_matched: matched.iter().sum::<f64>() / matched.len() as f64,
            matched,
            matched_oriented,
            rediscovered,
            keys: order.iter().flat_map(|&a| outcome.bank.key(a).to_vec()).collect(),
        })
    };
    let kmeans = found(Method::KMeans(KMeansOptions { seed, ..KMeansOptions::default() }))?;
    let autoencoder = if with_autoencoder {
        Some(found(Method::Autoencoder(AutoencoderOptions { seed, ..options.autoencoder.clone() }))?)
    } else {
        None
    };
    let scalespace = match kernel.h == kernel.w {
        true => Some(coverage(&only, &ideal8(kernel.h).map_err(|e| Error::Other(e.to_string()))?)?),
        false => None,
    };
    Ok(SetStats { filters: filters.len(), published8, random, scalespace, kmeans, autoencoder })
}

/// Mean `|cos|` between each live filter and the same filter in `before`
/// (zero-mean filters): how far training moved them (1: not at all).
pub fn similarity_to(before: &FilterSet, after: &FilterSet, kernel: KernelSize) -> Result<f64> {
    let (Some(a), Some(b)) = (before.groups.get(&kernel), after.groups.get(&kernel)) else {
        return Err(Error::Other(format!("both sets need {kernel} filters")));
    };
    if a.len() != b.len() {
        return Err(Error::Other(format!("{} filters before, {} after: not the same network", a.len(), b.len())));
    }
    let centred = |f: &[f32]| {
        let mean = f.iter().sum::<f32>() / f.len() as f32;
        f.iter().map(|v| (v - mean) as f64).collect::<Vec<f64>>()
    };
    let (mut sum, mut n) = (0.0, 0usize);
    for i in 0..a.len() {
        if a.provenance[i].dead || b.provenance[i].dead {
            continue;
        }
        let (x, y) = (centred(a.filter(i)), centred(b.filter(i)));
        let dot: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
        let norm = (x.iter().map(|v| v * v).sum::<f64>() * y.iter().map(|v| v * v).sum::<f64>()).sqrt();
        sum += (dot / norm).abs();
        n += 1;
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use masterkey_core::{DwLayer, ModelFilters};

    fn set_of(weights: Vec<f32>, kernel: KernelSize) -> FilterSet {
        let channels = weights.len() / kernel.taps();
        let layer = DwLayer::new("dw0", kernel, channels, weights).unwrap();
        let mut set = FilterSet::default();
        set.add_model(&ModelFilters { source: "test".into(), format: "test".into(), layers: vec![layer] });
        set
    }

    #[test]
    fn filters_made_from_published8_rediscover_it_and_random_filters_do_not() {
        let bank = Bank::published8();
        let taps = bank.kernel.taps();
        // 60 shifted, scaled, slightly noisy copies of each key.
        let mut rng = 1u64;
        let mut noise = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut weights = Vec::new();
        for copy in 0..60 {
            for key in 0..bank.len() {
                let (a, b) = (if copy % 2 == 0 { 0.5 } else { -1.5 }, 0.1 * noise());
                weights.extend(bank.key(key).iter().map(|v| a * v + b + 0.02 * noise()));
            }
        }
        let options = AnalysisOptions { k: 8, autoencoder: AutoencoderOptions::default() };
        let stats = analyse(&set_of(weights, bank.kernel), bank.kernel, &options, false, 1).unwrap();
        assert_eq!(stats.filters, 480);
        assert!(stats.published8.mean_abs_cos > 0.95 && stats.published8.coverage > 0.95, "{stats:?}");
        assert!(stats.random.mean_abs_cos < 0.6, "{:?}", stats.random);
        assert_eq!(stats.kmeans.rediscovered.len(), 8, "{:?}", stats.kmeans.matched);
        assert_eq!(stats.kmeans.keys.len(), 8 * taps);
        // The copies keep the keys' orientation, and the idealised keys model them.
        assert!(stats.kmeans.matched_oriented.iter().all(|&m| m > 0.9), "{:?}", stats.kmeans.matched_oriented);
        let ideal = stats.scalespace.expect("7x7 is square");
        assert!(ideal.mean_abs_cos > 0.8 && ideal.mean_abs_cos > stats.random.mean_abs_cos + 0.2, "{ideal:?}");

        let random: Vec<f32> = (0..480 * taps).map(|_| noise()).collect();
        let stats = analyse(&set_of(random.clone(), bank.kernel), bank.kernel, &options, false, 1).unwrap();
        assert!(stats.kmeans.rediscovered.is_empty(), "{:?}", stats.kmeans.matched);
        assert!(stats.published8.coverage < 0.05, "{:?}", stats.published8);

        let set = set_of(random, bank.kernel);
        assert!((similarity_to(&set, &set, bank.kernel).unwrap() - 1.0).abs() < 1e-9);
    }
}
