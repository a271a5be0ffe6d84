//! Idealised banks: every key replaced by a scale-space model, at any odd size.
//!
//! [`ideal8`] models the published 8 keys. Which family models which key is
//! derived from the keys' numbers by [`family_from_centroids`], not from the
//! authors' labels (their scripts disagree about the names of keys 2 and 4,
//! and store key 1 with either sign). The parameters are this crate's own L2 fit of
//! `published8` at 7x7, each key within its derived family and with the
//! discrete analogue of the Gaussian (Lindeberg's choice), rounded to 3
//! decimals ([`PUBLISHED8_MODELS`]; a test refits and compares).

use masterkey_core::bank::{PUBLISHED8_LICENCE, PUBLISHED8_SOURCE};
use masterkey_core::{Bank, KernelSize};

use crate::error::{InvalidInput, Result};
use crate::family::Family;
use crate::fit::BankFit;
use crate::gauss1d::Discretisation;
use crate::model::{check_size, normalised, Model, Params};

/// Positive and negative centroids closer than this (pixels) mark a
/// centre-surround key; antisymmetric keys have them a pixel or more apart
/// (published8: 0.12 and 0.19 for keys 8 and 7, 0.72 to 3.5 for the others).
const CENTRE_SURROUND_SEPARATION: f64 = 0.5;

/// The midpoint of the two centroids sits on the centre for a centred
/// difference and half a pixel off it for a non-centred one; this is halfway
/// (published8: 0.06 and 0.09 for keys 5 and 6, 0.56 to 0.69 for keys 1-4).
const OFFSET_MIDPOINT: f64 = 0.25;

/// Which of the eight families a `size x size` key resembles, read from the
/// centres of mass of its positive and negative taps (rows down, columns
/// right, relative to the centre):
/// - centroids (nearly) coincide: centre-surround. `gauss` if the centre's
///   four neighbours share the centre's sign, `sharpen` if they oppose it;
/// - otherwise the axis joining them gives the direction, and their midpoint
///   tells a centred difference (`dx`, `dy`: midpoint on the centre) from a
///   non-centred one (`offset-*`: midpoint moved towards the neighbour).
pub fn family_from_centroids(key: &[f32], size: usize) -> Family {
    let centre = (size / 2) as f64;
    // [row sum, column sum, mass] of the positive and of the negative taps.
    let mut acc = [[0.0f64; 3]; 2];
    for (t, &v) in key.iter().enumerate() {
        let side = usize::from(v < 0.0);
        let mass = v.abs() as f64;
        acc[side][0] += mass * ((t / size) as f64 - centre);
        acc[side][1] += mass * ((t % size) as f64 - centre);
        acc[side][2] += mass;
    }
    let centroid = |a: [f64; 3]| if a[2] > 0.0 { [a[0] / a[2], a[1] / a[2]] } else { [0.0, 0.0] };
    let (pos, neg) = (centroid(acc[0]), centroid(acc[1]));
    let separation = [pos[0] - neg[0], pos[1] - neg[1]];
    if separation[0].hypot(separation[1]) < CENTRE_SURROUND_SEPARATION {
        let c = size / 2;
        let centre_tap = key[c * size + c];
        let neighbours =
            key[(c - 1) * size + c] + key[(c + 1) * size + c] + key[c * size + c - 1] + key[c * size + c + 1];
        return if neighbours * centre_tap > 0.0 { Family::Gauss } else { Family::Sharpen };
    }
    let vertical = separation[0].abs() > separation[1].abs();
    let midpoint = if vertical { (pos[0] + neg[0]) / 2.0 } else { (pos[1] + neg[1]) / 2.0 };
    match (vertical, midpoint.abs() < OFFSET_MIDPOINT, midpoint > 0.0) {
        (true, true, _) => Family::Dy,
        (false, true, _) => Family::Dx,
        (true, false, true) => Family::OffsetDown,
        (true, false, false) => Family::OffsetUp,
        (false, false, true) => Family::OffsetRight,
        (false, false, false) => Family::OffsetLeft,
    }
}

const fn discrete(family: Family, sigma_x: f64, sigma_y: f64, alpha: Option<f64>) -> Model {
    Model { family, discretisation: Discretisation::Discrete, params: Params { sigma_x, sigma_y, alpha } }
}

/// The models of `published8`'s keys 1..=8: families by
/// [`family_from_centroids`], parameters from the L2 fit (discrete analogue,
/// 7x7) with `|cos|` 0.848, 0.946, 0.916, 0.908, 0.946, 0.955, 0.999, 0.997.
pub const PUBLISHED8_MODELS: [Model; 8] = [
    discrete(Family::OffsetDown, 0.417, 0.610, None),
    discrete(Family::OffsetRight, 0.519, 0.492, None),
    discrete(Family::OffsetUp, 0.549, 0.655, None),
    discrete(Family::OffsetLeft, 0.739, 0.341, None),
    discrete(Family::Dx, 1.097, 0.915, None),
    discrete(Family::Dy, 0.885, 0.836, None),
    discrete(Family::Sharpen, 0.746, 0.617, Some(0.720)),
    discrete(Family::Gauss, 0.627, 0.620, None),
];

/// A short label for a model: family, discretisation and parameters.
pub fn describe(model: &Model) -> String {
    let p = &model.params;
    let alpha = p.alpha.map(|a| format!(" alpha={a:.3}")).unwrap_or_default();
    format!("{} {} sx={:.3} sy={:.3}{alpha}", model.family, model.discretisation, p.sigma_x, p.sigma_y)
}

/// `models` at `size x size`, each normalised and multiplied by its sign (so
/// the bank shows each key's polarity rather than the model's convention).
fn bank_of(name: &str, size: usize, models: &[(String, Model, i8)], source: &str, licence: &str) -> Result<Bank> {
    check_size(size)?;
    let mut keys = Vec::with_capacity(models.len() * size * size);
    for (label, model, sign) in models {
        let kernel = model.kernel(size)?;
        let taps = normalised(&kernel.taps)
            .ok_or_else(|| InvalidInput(format!("{label}: the model is constant at {size}x{size}")))?;
        keys.extend(taps.iter().map(|&v| (f64::from(*sign) * v) as f32));
    }
    let labels = models.iter().map(|(label, model, _)| format!("{label}: {}", describe(model))).collect();
    Bank::new(name, KernelSize::square(size), keys, labels, source, licence).map_err(InvalidInput)
}

/// The idealised published 8 keys at an odd `size` in 3..=31, each with the
/// polarity of the published key it models.
pub fn ideal8(size: usize) -> Result<Bank> {
    let published = Bank::published8();
    let models: Vec<(String, Model, i8)> = PUBLISHED8_MODELS
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let kernel = model.kernel(published.kernel.h).expect("the built-in models are valid");
            let m = normalised(&kernel.taps).expect("the built-in models are not constant");
            let dot: f64 = published.key(i).iter().zip(&m).map(|(&k, &m)| k as f64 * m).sum();
            (published.labels[i].clone(), *model, if dot < 0.0 { -1 } else { 1 })
        })
        .collect();
    let source = format!(
        "idealised discrete scale-space models (masterkey-scalespace) fitted to published8: {PUBLISHED8_SOURCE}"
    );
    bank_of("ideal8", size, &models, &source, PUBLISHED8_LICENCE)
}

/// The bank of the best models of a fit, at an odd `size` in 3..=31.
pub fn ideal_bank_from_fit(fit: &BankFit, source_licence: &str, size: usize) -> Result<Bank> {
    let models: Vec<(String, Model, i8)> =
        fit.keys.iter().map(|k| (k.label.clone(), k.best.model, k.best.sign)).collect();
    let source =
        format!("idealised scale-space models (masterkey-scalespace, {} fit) of bank `{}`", fit.criterion, fit.bank);
    bank_of(&format!("ideal-{}", fit.bank), size, &models, &source, source_licence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::{fit_bank, fit_key, Criterion, FitOptions};

    #[test]
    fn published8_families_follow_from_the_centroids() {
        let published = Bank::published8();
        for (i, model) in PUBLISHED8_MODELS.iter().enumerate() {
            assert_eq!(family_from_centroids(published.key(i), 7), model.family, "key {}", i + 1);
        }
    }

    #[test]
    fn published8_models_are_the_fit_of_published8() {
        let published = Bank::published8();
        for (i, model) in PUBLISHED8_MODELS.iter().enumerate() {
            let taps: Vec<f64> = published.key(i).iter().map(|&v| v as f64).collect();
            let options = FitOptions {
                criterion: Criterion::L2,
                families: vec![model.family],
                discretisations: vec![Discretisation::Discrete],
            };
            let fit = fit_key(&taps, 7, "key", &options).unwrap().best.model.params;
            let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
            assert!(
                close(fit.sigma_x, model.params.sigma_x) && close(fit.sigma_y, model.params.sigma_y),
                "key {}: fit {fit:?}",
                i + 1
            );
            assert!(
                fit.alpha.zip(model.params.alpha).map_or(fit.alpha == model.params.alpha, |(a, b)| close(a, b)),
                "key {}: fit {fit:?}",
                i + 1
            );
        }
    }

    #[test]
    fn ideal8_has_the_published_polarity_at_every_size() {
        let published = Bank::published8();
        for size in (3..=31).step_by(2) {
            let bank = ideal8(size).unwrap();
            assert_eq!((bank.len(), bank.kernel), (8, KernelSize::square(size)));
            assert!(bank.keys.iter().all(|v| v.is_finite()));
            if size == 7 {
                for i in 0..8 {
                    let cos: f32 = bank.key(i).iter().zip(published.key(i)).map(|(a, b)| a * b).sum();
                    assert!(cos > 0.84, "key {}: cos {cos}", i + 1);
                }
            }
        }
        assert!(ideal8(8).is_err());
    }

    #[test]
    fn a_bank_built_from_a_fit_reproduces_the_keys_it_was_fitted_to() {
        let source = ideal8(5).unwrap();
        let fit = fit_bank(&source, &FitOptions::default()).unwrap();
        let rebuilt = ideal_bank_from_fit(&fit, "CC BY 4.0", 5).unwrap();
        assert_eq!(rebuilt.name, "ideal-ideal8");
        for i in 0..8 {
            let cos: f32 = rebuilt.key(i).iter().zip(source.key(i)).map(|(a, b)| a * b).sum();
            assert!(cos > 0.999, "key {}: cos {cos}", i + 1);
        }
    }
}
