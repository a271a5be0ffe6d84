//! Agreement versus the number of keys K, the analogue of the paper's table
//! of accuracy versus number of candidate filters: for each K, banks found by
//! k-means in the network's own depthwise filters (one bank per kernel size,
//! K keys each) against random banks of K keys.

use burn::tensor::backend::Backend;
use masterkey_core::{Bank, Error, FilterSet, KernelSize, ModelFilters, Result};
use masterkey_search::kmeans::kmeans;
use masterkey_search::{KMeansOptions, NormalisedFilters};
use serde::Serialize;

use crate::probe::{Agreement, Probe, DEAD_TOLERANCE};
use crate::replace::overall;
use crate::state_dict::StateDict;

#[derive(Debug, Clone, PartialEq)]
pub struct SweepOptions {
    /// K runs over 1..=max_k.
    pub max_k: usize,
    pub kmeans: KMeansOptions,
    /// Seeds of the random banks probed at each K.
    pub random_seeds: Vec<u64>,
    /// Kernel size of the random banks (resized per layer like any bank).
    pub random_kernel: KernelSize,
}

/// One bank's result at one K.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BankResult {
    pub bank: String,
    pub mean_abs_cos: f64,
    #[serde(flatten)]
    pub agreement: Agreement,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    pub k: usize,
    /// The k-means banks (one per kernel size), as one replacement.
    pub found: BankResult,
    /// One per random seed.
    pub random: Vec<BankResult>,
}

impl SweepPoint {
    /// Mean top-1 agreement over the random seeds.
    pub fn random_top1(&self) -> f64 {
        self.random.iter().map(|r| r.agreement.top1).sum::<f64>() / self.random.len().max(1) as f64
    }
}

/// K-means banks of `k` keys, one per kernel size of the network's
/// depthwise filters, each found in the (normalised, non-dead) filters of
/// that size.
pub fn found_banks(weights: &StateDict, k: usize, options: &KMeansOptions) -> Result<Vec<Bank>> {
    let model = ModelFilters {
        source: weights.source.clone(),
        format: "state dict".into(),
        layers: weights.depthwise_layers()?,
    };
    let mut set = FilterSet::new(DEAD_TOLERANCE);
    set.add_model(&model);
    set.groups
        .values()
        .map(|group| {
            let filters = NormalisedFilters::from_group(group);
            let keys = kmeans(&filters, k, options)?.keys;
            let labels = (1..=k).map(|i| format!("key{i}")).collect();
            let source = format!(
                "{} on the {} live {} depthwise filters of {}",
                options.describe(),
                filters.len(),
                group.kernel,
                weights.source.display()
            );
            Bank::new(
                &format!("kmeans-k{k}-{}", group.kernel),
                group.kernel,
                keys,
                labels,
                &source,
                "derived from the model",
            )
            .map_err(Error::Other)
        })
        .collect()
}

/// Runs the sweep; `on_k` sees each K's result as it comes (for progress).
pub fn sweep<B: Backend>(
    probe: &Probe<B>,
    options: &SweepOptions,
    mut on_k: impl FnMut(&SweepPoint),
) -> Result<Vec<SweepPoint>> {
    let mut points = Vec::with_capacity(options.max_k);
    for k in 1..=options.max_k {
        let banks = found_banks(probe.original(), k, &options.kmeans)?;
        let (agreement, fits) = probe.banks(&banks)?;
        let names: Vec<&str> = banks.iter().map(|b| b.name.as_str()).collect();
        let found = BankResult { bank: names.join(" + "), mean_abs_cos: overall(&fits).0, agreement };
        let random = options
            .random_seeds
            .iter()
            .map(|&seed| {
                let bank = Bank::random(k, options.random_kernel, seed);
                let (agreement, fits) = probe.bank(&bank)?;
                Ok(BankResult { bank: bank.name, mean_abs_cos: overall(&fits).0, agreement })
            })
            .collect::<Result<Vec<_>>>()?;
        let point = SweepPoint { k, found, random };
        on_k(&point);
        points.push(point);
    }
    Ok(points)
}
