//! Replacing depthwise filters by their fit to a bank: each filter `y`
//! becomes `a * key + b` with its best key (largest `|cos|`), `a = <y, key>`
//! and `b = mean(y)`, the bank resized to the layer's kernel by
//! [`masterkey_core::RESIZE_RULE`]. A dead filter (centred norm below the
//! tolerance) becomes its mean, which it already nearly is.

use std::collections::BTreeMap;
use std::path::Path;

use masterkey_core::fit::fit_filters;
use masterkey_core::kernel::{is_dead, mean_and_centered_norm};
use masterkey_core::{Bank, DwLayer, KernelSize, Result, RESIZE_RULE};
use serde::Serialize;

use crate::state_dict::StateDict;

/// The `|cos|` at which the per-layer coverage is reported.
pub const COVERAGE_THRESHOLD: f32 = 0.8;

/// How well one layer's filters fit the bank.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerFit {
    pub layer: String,
    /// `HxW`.
    pub kernel: String,
    pub channels: usize,
    pub dead: usize,
    /// Mean best `|cos|` of the non-dead filters.
    pub mean_abs_cos: f64,
    /// Share of non-dead filters whose best `|cos|` reaches [`COVERAGE_THRESHOLD`].
    pub coverage: f64,
}

/// Mean `|cos|` and coverage over every non-dead filter of the layers.
pub fn overall(fits: &[LayerFit]) -> (f64, f64) {
    let live = |f: &LayerFit| (f.channels - f.dead) as f64;
    let total = fits.iter().map(live).sum::<f64>().max(1.0);
    let mean_abs_cos = fits.iter().map(|f| f.mean_abs_cos * live(f)).sum::<f64>() / total;
    let coverage = fits.iter().map(|f| f.coverage * live(f)).sum::<f64>() / total;
    (mean_abs_cos, coverage)
}

/// The layer with every filter replaced by its fit, and the fit quality.
pub fn replace_layer(layer: &DwLayer, bank: &Bank, dead_tolerance: f32) -> (DwLayer, LayerFit) {
    let taps = layer.kernel.taps();
    let (keys, _) = bank.resized(layer.kernel);
    let dead: Vec<bool> =
        (0..layer.channels).map(|c| is_dead(mean_and_centered_norm(layer.filter(c)).1, dead_tolerance)).collect();
    let fits = if keys.is_empty() {
        // Every key is constant at this size: nothing to fit, each filter keeps only its mean.
        Vec::new()
    } else {
        fit_filters(&layer.weights, taps, &keys, &dead)
    };
    let mut weights = Vec::with_capacity(layer.weights.len());
    let (mut sum_abs_cos, mut covered) = (0.0f64, 0usize);
    for c in 0..layer.channels {
        match fits.get(c).and_then(|f| f.key.map(|k| (f, k as usize))) {
            Some((fit, key)) => {
                weights.extend(keys[key * taps..(key + 1) * taps].iter().map(|&x| fit.a * x + fit.b));
                sum_abs_cos += fit.abs_cos as f64;
                covered += usize::from(fit.abs_cos >= COVERAGE_THRESHOLD);
            }
            None => {
                let (mean, _) = mean_and_centered_norm(layer.filter(c));
                weights.extend(std::iter::repeat_n(mean, taps));
            }
        }
    }
    let dead_count = dead.iter().filter(|&&d| d).count();
    let live = (layer.channels - dead_count).max(1) as f64;
    let fit = LayerFit {
        layer: layer.name.clone(),
        kernel: layer.kernel.to_string(),
        channels: layer.channels,
        dead: dead_count,
        mean_abs_cos: sum_abs_cos / live,
        coverage: covered as f64 / live,
    };
    let replaced = DwLayer { name: layer.name.clone(), kernel: layer.kernel, channels: layer.channels, weights };
    (replaced, fit)
}

/// The bank a layer is fitted to: the one of the layer's own kernel size,
/// else the first (resized). Several banks serve a network whose layers have
/// several kernel sizes, each with keys found at its own size.
pub fn bank_for(banks: &[Bank], kernel: KernelSize) -> &Bank {
    banks.iter().find(|b| b.kernel == kernel).unwrap_or(&banks[0])
}

/// Replaces every depthwise layer of the state dict, each fitted to
/// [`bank_for`] its kernel size.
pub fn replace_all(weights: &mut StateDict, banks: &[Bank], dead_tolerance: f32) -> Result<Vec<LayerFit>> {
    if banks.is_empty() {
        return Err(masterkey_core::Error::Other("replacing filters needs at least one bank".into()));
    }
    let mut fits = Vec::new();
    for layer in weights.depthwise_layers()? {
        let (replaced, fit) = replace_layer(&layer, bank_for(banks, layer.kernel), dead_tolerance);
        weights.set_layer(&replaced)?;
        fits.push(fit);
    }
    Ok(fits)
}

/// Reads a model's state dict, replaces its depthwise filters and writes
/// every float tensor as f32 safetensors under the original names and
/// shapes; the header records the bank, its source and licence, and the
/// resize rule.
pub fn replace_model(model: &Path, bank: &Bank, dead_tolerance: f32, output: &Path) -> Result<Vec<LayerFit>> {
    let mut weights = StateDict::read(model)?;
    let fits = replace_all(&mut weights, std::slice::from_ref(bank), dead_tolerance)?;
    if fits.is_empty() {
        return Err(masterkey_core::Error::invalid(
            model,
            "expected depthwise weights ([C, 1, kh, kw] with a kernel larger than 1x1), found none",
        ));
    }
    let metadata = BTreeMap::from([
        ("masterkey".to_string(), "depthwise filters replaced by a*key+b".to_string()),
        ("source_model".to_string(), model.display().to_string()),
        ("bank".to_string(), bank.name.clone()),
        ("bank_source".to_string(), bank.source.clone()),
        ("bank_licence".to_string(), bank.licence.clone()),
        ("resize_rule".to_string(), RESIZE_RULE.to_string()),
    ]);
    weights.save_safetensors(output, metadata)?;
    Ok(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_that_is_a_shifted_key_is_replaced_by_itself() {
        let bank = Bank::published8();
        let (keys3, _) = bank.resized(KernelSize::square(3));
        // Channel 0: 2.5 * key 4 + 0.1; channel 1: noise-free -1.5 * key 8 - 0.2; channel 2: constant (dead).
        let mut weights: Vec<f32> = keys3[3 * 9..4 * 9].iter().map(|k| 2.5 * k + 0.1).collect();
        weights.extend(keys3[7 * 9..8 * 9].iter().map(|k| -1.5 * k - 0.2));
        weights.extend([0.3f32; 9]);
        let layer = DwLayer::new("dw", KernelSize::square(3), 3, weights.clone()).unwrap();
        let (replaced, fit) = replace_layer(&layer, &bank, 1e-6);
        for (got, want) in replaced.weights.iter().zip(&weights) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert_eq!((fit.channels, fit.dead, fit.kernel.as_str()), (3, 1, "3x3"));
        assert!((fit.mean_abs_cos - 1.0).abs() < 1e-5 && fit.coverage == 1.0, "{fit:?}");
    }

    #[test]
    fn each_layer_takes_the_bank_of_its_kernel_size_else_the_first() {
        let banks = [Bank::random(2, KernelSize::square(5), 1), Bank::random(3, KernelSize::square(3), 1)];
        assert_eq!(bank_for(&banks, KernelSize::square(3)).len(), 3);
        assert_eq!(bank_for(&banks, KernelSize::square(5)).len(), 2);
        assert_eq!(bank_for(&banks, KernelSize::square(7)).len(), 2);
    }

    #[test]
    fn overall_weights_layers_by_their_live_filters() {
        let fit = |channels, dead, mean_abs_cos, coverage| LayerFit {
            layer: "l".into(),
            kernel: "3x3".into(),
            channels,
            dead,
            mean_abs_cos,
            coverage,
        };
        let (cos, coverage) = overall(&[fit(4, 1, 0.9, 1.0), fit(2, 1, 0.5, 0.0)]);
        assert!((cos - (3.0 * 0.9 + 0.5) / 4.0).abs() < 1e-12 && (coverage - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_filter_far_from_every_key_keeps_mean_and_loses_shape() {
        // A single key: a vertical edge. The filter is a horizontal edge plus an offset.
        let key = vec![-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0];
        let bank = Bank::new("edge", KernelSize::square(3), key, vec!["v".into()], "", "").unwrap();
        let y = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0].iter().map(|v| v + 0.5).collect();
        let layer = DwLayer::new("dw", KernelSize::square(3), 1, y).unwrap();
        let (replaced, fit) = replace_layer(&layer, &bank, 1e-6);
        assert!(fit.mean_abs_cos < 1e-6 && fit.coverage == 0.0);
        assert!(replaced.weights.iter().all(|w| (w - 0.5).abs() < 1e-6), "{:?}", replaced.weights);
    }
}
