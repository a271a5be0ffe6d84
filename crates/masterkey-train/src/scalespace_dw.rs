//! Depthwise filters rendered from learnable scale-space models
//! (`--dw-mode scalespace`, after Lindeberg, Babaiee & Kiasari, arXiv
//! 2509.12746).
//!
//! Each channel is one family of `masterkey-scalespace` (a 3x3 difference
//! operator applied to a separable Gaussian; `sharpen` is `delta - alpha *
//! Lap5 T`) with learnable `sigma_x`, `sigma_y` (and `alpha`), kept positive
//! and in the crate's ranges by learning their logarithms, clamped. The kernel
//! is rendered every step at the layer's size with the *sampled*
//! discretisation (the Gaussian sampled at the integers and normalised over
//! the lattice), the one of the three whose gradient in sigma is a plain
//! tensor expression; it is then shifted to zero mean and scaled to unit
//! norm (the fit's convention), so the applied filter is `a * kernel + b`
//! like a frozen key's.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use masterkey_core::{Bank, KernelSize};
use masterkey_scalespace::model::{ALPHA_RANGE, SIGMA_RANGE};
use masterkey_scalespace::{family_from_centroids, fit_key, Discretisation, Family, FitOptions, Params};
use serde::{Deserialize, Serialize};

use crate::layers::{frozen, param};

/// Beyond this many of the largest sigma the sampled Gaussian is below
/// `exp(-72)` of its peak (as in `masterkey-scalespace`): the lattice sum that
/// normalises it stops there.
const LATTICE_REACH: usize = (12.0 * *SIGMA_RANGE.end()) as usize;

/// `alpha` may fit to 0 (a bare delta), where its log is not finite: it is
/// kept at or above this.
const ALPHA_FLOOR: f64 = 1e-3;

/// Bounds of the learned logs of sigma and of alpha.
fn log_bounds(low: f64, high: f64) -> (f32, f32) {
    (low.ln() as f32, high.ln() as f32)
}

fn sigma_log_bounds() -> (f32, f32) {
    log_bounds(*SIGMA_RANGE.start(), *SIGMA_RANGE.end())
}

fn alpha_log_bounds() -> (f32, f32) {
    log_bounds(ALPHA_FLOOR, *ALPHA_RANGE.end())
}

/// Keeps the centred norm of a kernel away from zero (a kernel that renders
/// constant has nothing to normalise).
const NORM_FLOOR: f32 = 1e-20;

/// The scale-space model of one channel, as initialised or learned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelModel {
    pub family: Family,
    pub sigma_x: f64,
    pub sigma_y: f64,
    /// `sharpen` only.
    pub alpha: Option<f64>,
}

/// Each channel's difference operator, `C x 3 x 3` values (the frozen base
/// filter of a scale-space DW layer, which [`ScaleSpaceFilters::render`] takes).
pub fn operators(models: &[ChannelModel]) -> Vec<f32> {
    models.iter().flat_map(|m| m.family.stencil().into_iter().flatten().map(|v| v as f32)).collect()
}

/// The learnable models of one DW layer's channels.
#[derive(Module, Debug)]
pub struct ScaleSpaceFilters<B: Backend> {
    pub log_sigma_x: Param<Tensor<B, 1>>,
    pub log_sigma_y: Param<Tensor<B, 1>>,
    /// Learned for every channel, used by `sharpen` channels only (the
    /// others get no gradient for it).
    pub log_alpha: Param<Tensor<B, 1>>,
    /// `[C]`, frozen: 1 for `sharpen` channels (the delta), 0 otherwise.
    pub identity: Param<Tensor<B, 1>>,
    /// Not recorded: rebuilt from the run's settings, like the operators' shapes.
    #[module(skip)]
    pub families: Vec<Family>,
}

/// The family and initial parameters of each channel: the closest model of
/// the channel's key (the family read from the key's shape as
/// `masterkey-scalespace::ideal8` does, the parameters fitted in it, sampled
/// discretisation), with the sign of the fit (`-1` where the key is the
/// model's negative).
pub fn models_of_keys(keys: &[f32], kernel: usize) -> Vec<(ChannelModel, f32)> {
    let taps = kernel * kernel;
    keys.chunks_exact(taps)
        .map(|key| {
            let family = family_from_centroids(key, kernel);
            let options = FitOptions {
                families: vec![family],
                discretisations: vec![Discretisation::Sampled],
                ..Default::default()
            };
            let values: Vec<f64> = key.iter().map(|&v| v as f64).collect();
            let fit = fit_key(&values, kernel, family.name(), &options).expect("a usable key at an odd size");
            let Params { sigma_x, sigma_y, alpha } = fit.best.model.params;
            (ChannelModel { family, sigma_x, sigma_y, alpha }, fit.best.sign as f32)
        })
        .collect()
}

impl<B: Backend> ScaleSpaceFilters<B> {
    pub fn new(models: &[ChannelModel], device: &B::Device) -> Self {
        let c = models.len();
        let ln = |v: f64| v.ln() as f32;
        ScaleSpaceFilters {
            log_sigma_x: param(models.iter().map(|m| ln(m.sigma_x)).collect(), [c], device),
            log_sigma_y: param(models.iter().map(|m| ln(m.sigma_y)).collect(), [c], device),
            log_alpha: param(models.iter().map(|m| ln(m.alpha.unwrap_or(1.0).max(ALPHA_FLOOR))).collect(), [c], device),
            identity: frozen(models.iter().map(|m| f32::from(m.family.has_alpha())).collect(), [c], device),
            families: models.iter().map(|m| m.family).collect(),
        }
    }

    /// The current model of every channel.
    pub fn models(&self) -> Vec<ChannelModel> {
        let values = |p: &Param<Tensor<B, 1>>, (low, high): (f32, f32)| -> Vec<f64> {
            let v: Vec<f32> = p.val().into_data().convert::<f32>().to_vec().expect("f32 parameters");
            v.into_iter().map(|l| l.clamp(low, high).exp() as f64).collect()
        };
        let (sx, sy) = (values(&self.log_sigma_x, sigma_log_bounds()), values(&self.log_sigma_y, sigma_log_bounds()));
        let alpha = values(&self.log_alpha, alpha_log_bounds());
        self.families
            .iter()
            .enumerate()
            .map(|(c, &family)| ChannelModel {
                family,
                sigma_x: sx[c],
                sigma_y: sy[c],
                alpha: family.has_alpha().then_some(alpha[c]),
            })
            .collect()
    }

    /// The kernels, `[C, k*k]`, zero mean and unit L2 norm per channel, of
    /// the channels' difference `operators` (`[C, 1, 3, 3]`, see [`operators`]).
    pub fn render(&self, operators: Tensor<B, 4>, kernel: usize) -> Tensor<B, 2> {
        let c = self.families.len();
        let operators = operators.reshape([c, 3, 3]);
        let padded = kernel + 2;
        let gx = sampled_gaussians(self.log_sigma_x.val(), padded / 2);
        let gy = sampled_gaussians(self.log_sigma_y.val(), padded / 2);
        let gauss = gy.reshape([c, padded, 1]) * gx.reshape([c, 1, padded]);
        // K(q) = sum_d a(d) T(q - d), the operator's taps `a` at d = (i - 1, j - 1):
        // T(q - d) is the window of the padded T shifted by (2 - i, 2 - j). Taps
        // that are zero in every channel's operator are skipped.
        let mut operator: Option<Tensor<B, 3>> = None;
        for (i, j) in self.used_taps() {
            let weight = operators.clone().slice([0..c, i..i + 1, j..j + 1]);
            let window = gauss.clone().slice([0..c, 2 - i..2 - i + kernel, 2 - j..2 - j + kernel]);
            let term = window * weight;
            operator = Some(match operator {
                Some(sum) => sum + term,
                None => term,
            });
        }
        let operator = operator.expect("every family's operator has a non-zero tap").reshape([c, kernel * kernel]);
        // sharpen is `delta - alpha * operator`, the others the operator itself:
        // weight `1 - identity * (1 + alpha)` is `-alpha` for sharpen and 1 else.
        let identity = self.identity.val().reshape([c, 1]);
        let (low, high) = alpha_log_bounds();
        let alpha = self.log_alpha.val().clamp(low, high).exp();
        let weight = identity.clone().neg() * (alpha.reshape([c, 1]) + 1.0) + 1.0;
        let centre = kernel / 2 * kernel + kernel / 2;
        let mut delta = vec![0.0f32; kernel * kernel];
        delta[centre] = 1.0;
        let delta = Tensor::<B, 2>::from_data(TensorData::new(delta, [1, kernel * kernel]), &identity.device());
        let kernels = operator * weight + delta * identity;
        let centred = kernels.clone() - kernels.mean_dim(1);
        let norm = (centred.clone().powi_scalar(2).sum_dim(1) + NORM_FLOOR).sqrt();
        centred / norm
    }

    fn used_taps(&self) -> Vec<(usize, usize)> {
        let mut used = Vec::new();
        for i in 0..3 {
            for j in 0..3 {
                if self.families.iter().any(|f| f.stencil()[i][j] != 0.0) {
                    used.push((i, j));
                }
            }
        }
        used
    }
}

/// Sampled Gaussians of scales `exp(log_sigma)` (clamped to the model's
/// range), `[C, 2 * radius + 1]`, each normalised by its sum over the lattice.
fn sampled_gaussians<B: Backend>(log_sigma: Tensor<B, 1>, radius: usize) -> Tensor<B, 2> {
    let c = log_sigma.dims()[0];
    let device = log_sigma.device();
    let (low, high) = sigma_log_bounds();
    let sigma = log_sigma.clamp(low, high).exp();
    let reach = LATTICE_REACH.max(radius);
    let squares: Vec<f32> = (0..2 * reach + 1).map(|n| (n as f32 - reach as f32).powi(2)).collect();
    let squares = Tensor::<B, 2>::from_data(TensorData::new(squares, [1, 2 * reach + 1]), &device);
    let inverse_variance = sigma.powi_scalar(2).recip().reshape([c, 1]);
    let lattice = (squares * inverse_variance * -0.5).exp();
    let total = lattice.clone().sum_dim(1);
    lattice.slice([0..c, reach - radius..reach + radius + 1]) / total
}

/// The mean model of each family present among `models`, in the order of
/// [`Family::ALL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyMean {
    pub family: Family,
    pub channels: usize,
    pub sigma_x: f64,
    pub sigma_y: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

pub fn family_means(models: &[ChannelModel]) -> Vec<FamilyMean> {
    Family::ALL
        .iter()
        .filter_map(|&family| {
            let mine: Vec<&ChannelModel> = models.iter().filter(|m| m.family == family).collect();
            let n = mine.len() as f64;
            let mean = |f: &dyn Fn(&ChannelModel) -> f64| mine.iter().map(|m| f(m)).sum::<f64>() / n;
            (!mine.is_empty()).then(|| FamilyMean {
                family,
                channels: mine.len(),
                sigma_x: mean(&|m| m.sigma_x),
                sigma_y: mean(&|m| m.sigma_y),
                alpha: family.has_alpha().then(|| mean(&|m| m.alpha.unwrap_or(0.0))),
            })
        })
        .collect()
}

/// What a scale-space run learned: per family, the models fitted to the
/// bank's keys (where the channels started) and the learned means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedScales {
    pub bank: String,
    pub discretisation: String,
    pub fitted_to_keys: Vec<FamilyMean>,
    pub learned: Vec<FamilyMean>,
    /// Every channel's learned model, per DW layer in model order.
    pub channels: Vec<Vec<ChannelModel>>,
}

impl LearnedScales {
    /// `learned`: per DW layer, its kernel size and channel models.
    pub fn new(bank: &Bank, learned: Vec<(usize, Vec<ChannelModel>)>) -> Self {
        let kernels: std::collections::BTreeSet<usize> = learned.iter().map(|(k, _)| *k).collect();
        let fitted: Vec<ChannelModel> = kernels
            .into_iter()
            .flat_map(|k| {
                let (keys, _) = bank.resized(KernelSize::square(k));
                models_of_keys(&keys, k).into_iter().map(|(m, _)| m)
            })
            .collect();
        let channels: Vec<Vec<ChannelModel>> = learned.into_iter().map(|(_, m)| m).collect();
        LearnedScales {
            bank: bank.name.clone(),
            discretisation: Discretisation::Sampled.to_string(),
            fitted_to_keys: family_means(&fitted),
            learned: family_means(&channels.concat()),
            channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, to_vec, Cpu};
    use masterkey_scalespace::Model;

    fn reference(m: &ChannelModel, kernel: usize) -> Vec<f64> {
        let params = Params { sigma_x: m.sigma_x, sigma_y: m.sigma_y, alpha: m.alpha };
        let model = Model::new(m.family, Discretisation::Sampled, params).unwrap();
        model.kernel(kernel).unwrap().normalised().unwrap()
    }

    #[test]
    fn rendered_kernels_match_the_scalespace_crate() {
        let device = Default::default();
        let models: Vec<ChannelModel> = Family::ALL
            .iter()
            .enumerate()
            .map(|(i, &family)| ChannelModel {
                family,
                sigma_x: 0.3 + 0.37 * i as f64,
                sigma_y: 2.5 - 0.19 * i as f64,
                alpha: family.has_alpha().then_some(0.8),
            })
            .collect();
        let filters = ScaleSpaceFilters::<Cpu>::new(&models, &device);
        let ops = Tensor::<Cpu, 4>::from_data(TensorData::new(operators(&models), [models.len(), 1, 3, 3]), &device);
        for kernel in [3, 5, 7] {
            let got = to_vec(filters.render(ops.clone(), kernel));
            let want: Vec<f64> = models.iter().flat_map(|m| reference(m, kernel)).collect();
            assert_close(&got, &want, 1e-5, &format!("{kernel}x{kernel}"));
        }
        let back = filters.models();
        for (m, b) in models.iter().zip(&back) {
            assert!((m.sigma_x - b.sigma_x).abs() < 1e-5 && (m.sigma_y - b.sigma_y).abs() < 1e-5, "{m:?} {b:?}");
            assert_eq!(m.alpha.is_some(), b.alpha.is_some());
        }
    }

    #[test]
    fn the_published_keys_start_from_their_fitted_models() {
        let bank = Bank::published8();
        let (keys, _) = bank.resized(masterkey_core::KernelSize::square(7));
        let models = models_of_keys(&keys, 7);
        let families: Vec<Family> = models.iter().map(|(m, _)| m.family).collect();
        let expected: Vec<Family> = masterkey_scalespace::PUBLISHED8_MODELS.iter().map(|m| m.family).collect();
        assert_eq!(families, expected);
        let models_only: Vec<ChannelModel> = models.iter().map(|m| m.0).collect();
        let device = Default::default();
        let ops = Tensor::<Cpu, 4>::from_data(TensorData::new(operators(&models_only), [8, 1, 3, 3]), &device);
        let rendered = to_vec(ScaleSpaceFilters::<Cpu>::new(&models_only, &device).render(ops, 7));
        for (k, ((_, sign), kernel)) in models.iter().zip(rendered.chunks_exact(49)).enumerate() {
            let taps: Vec<f64> = keys[k * 49..(k + 1) * 49].iter().map(|&v| v as f64).collect();
            let key = masterkey_scalespace::model::normalised(&taps).unwrap();
            let cos: f64 = key.iter().zip(kernel).map(|(a, &b)| a * b as f64).sum::<f64>() * *sign as f64;
            // The sampled fits are close to the discrete ones (|cos| 0.85 to 0.999).
            assert!(cos > 0.8, "key {}: cos {cos}", k + 1);
        }
    }
}
