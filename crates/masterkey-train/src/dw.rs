//! The pluggable depthwise (DW) convolution shared by every model.
//!
//! In the frozen modes each channel's filter is `a * base + b`: `base` is a
//! bank key (or a random unit filter) held in a parameter that never requires
//! a gradient, so autodiff never produces one for it and the optimizer never
//! touches it; `b` (one offset per channel, added to every tap) is learnable,
//! and `a` is learnable only when asked for. With `a` frozen no filter
//! gradient is formed at all: `b` learns from box sums of the input
//! ([`crate::dw_op::depthwise_offset`]). With `--dw-scale`, `a` and `b` learn
//! through the gradient of the combined filter.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use masterkey_core::fit::{fit_filters, FilterFit};
use masterkey_core::kernel::{is_dead, mean_and_centered_norm, normalise, KernelSize, DEFAULT_DEAD_TOLERANCE};
use masterkey_core::{kebab_enum, Bank};
use serde::{Deserialize, Serialize};

use crate::dw_op::{depthwise, depthwise_offset, DepthwiseBackend, Layout};
use crate::layers::{frozen, param, WeightInit};
use crate::rng::SplitMix;
use crate::scalespace_dw::{models_of_keys, operators, ScaleSpaceFilters};

/// How the DW filters are set up and trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DwMode {
    /// The usual layer: randomly initialised, trained.
    Trainable,
    /// Bank keys, frozen, with a learnable per-channel offset (and optional scale).
    Frozen,
    /// Bank keys as initial values, then trained.
    BankInit,
    /// Random zero-mean unit-norm filters, frozen like `frozen` (the control of
    /// the random-filter literature).
    RandomFrozen,
    /// Each channel a scale-space model (the closest one to its key) whose
    /// sigmas (and sharpening weight) learn; the kernel is rendered every step
    /// ([`crate::scalespace_dw`]).
    Scalespace,
    /// Another trained network's own DW filters, frozen, with a learnable
    /// offset ("The Master Key Filters Hypothesis", arXiv 2412.16751).
    TransferFrozen,
}

/// Which key each channel gets in the bank-based modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentKind {
    /// Channel `c` gets key `c mod K`.
    RoundRobin,
    /// Each channel draws a key uniformly (seeded).
    Random,
    /// Fit the DW filters of a trained checkpoint and copy key, `a`, `b`.
    FromCheckpoint,
    /// Train trainable filters for some epochs, snap each to its best key
    /// with the fitted `a`, `b`, freeze, go on.
    FitAndFreeze,
}

kebab_enum!(
    DwMode,
    Trainable = "trainable",
    Frozen = "frozen",
    BankInit = "bank-init",
    RandomFrozen = "random-frozen",
    Scalespace = "scalespace",
    TransferFrozen = "transfer-frozen"
);
kebab_enum!(
    AssignmentKind,
    RoundRobin = "round-robin",
    Random = "random",
    FromCheckpoint = "from-checkpoint",
    FitAndFreeze = "fit-and-freeze"
);

impl DwMode {
    /// Whether the mode's filters come from a bank's keys, so that it reads
    /// a bank and an assignment of keys to channels.
    pub fn uses_bank(self) -> bool {
        matches!(self, DwMode::Frozen | DwMode::BankInit | DwMode::Scalespace)
    }

    /// Whether the mode's filters are `a * base + b` with a per-channel
    /// scale `a` that can be made learnable.
    pub fn has_scale(self) -> bool {
        !matches!(self, DwMode::Trainable | DwMode::BankInit)
    }
}

/// One channel's frozen filter: `a * key + b`, `key` indexing the bank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelKey {
    pub key: usize,
    pub a: f32,
    pub b: f32,
}

/// Where the keys of each channel come from when a model is built.
#[derive(Debug, Clone)]
pub enum KeyChoice {
    RoundRobin,
    Random {
        seed: u64,
    },
    /// Per DW layer (in model order), per channel.
    Given(Vec<Vec<ChannelKey>>),
}

/// Everything a model needs to build its DW layers.
#[derive(Debug, Clone)]
pub struct DwPlan {
    /// The mode the layers start in (`fit-and-freeze` starts `trainable`).
    pub mode: DwMode,
    pub bank: Bank,
    pub keys: KeyChoice,
    /// Learn the per-channel scale `a` in the frozen modes.
    pub learn_scale: bool,
    /// Rescale every initial filter to this L2 norm (all modes but
    /// `transfer-frozen`, whose filters keep their trained norm), so that
    /// modes can be compared at equal initial filter norm.
    pub init_norm: Option<f32>,
    /// `transfer-frozen`: the filters of each DW layer (`C x k*k` values, in
    /// model order). `None` builds zero placeholders, for a network whose
    /// weights are then loaded from its checkpoint.
    pub transferred: Option<Vec<Vec<f32>>>,
}

impl DwPlan {
    pub fn trainable(bank: Bank) -> Self {
        DwPlan {
            mode: DwMode::Trainable,
            bank,
            keys: KeyChoice::RoundRobin,
            learn_scale: false,
            init_norm: None,
            transferred: None,
        }
    }

    /// Builds DW layer number `layer` (counting from 0 in model order).
    /// `init` draws trainable filters (the model's own DW initialisation).
    #[allow(clippy::too_many_arguments)]
    pub fn build<B: Backend>(
        &self,
        layer: usize,
        channels: usize,
        kernel: usize,
        stride: usize,
        init: WeightInit,
        rng: &mut SplitMix,
        device: &B::Device,
    ) -> DwConv<B> {
        assert!(kernel % 2 == 1, "DW kernels must be odd, got {kernel}");
        let taps = kernel * kernel;
        // Every mode keeps a trainable bias, drawn as the model's layers draw theirs.
        let bias = param(init.bias(channels, taps, rng), [channels], device);
        // Filters come from a stream of their own, seeded by one draw in every
        // mode: the model's other weights are then the same in every mode for
        // a seed, so modes can be compared seed by seed.
        let rng = &mut SplitMix::new(rng.next_u64());
        let shape = [channels, 1, kernel, kernel];
        match self.mode {
            DwMode::Trainable => {
                let mut w = init.draw(channels * taps, taps, channels * taps, rng);
                if let Some(norm) = self.init_norm {
                    w.chunks_exact_mut(taps).for_each(|f| rescale(f, norm));
                }
                DwConv::trainable(param(w, shape, device), bias, stride, kernel)
            }
            DwMode::BankInit => {
                let keys = self.channel_keys(layer, channels, kernel);
                let mut w = self.key_filters(&keys, kernel);
                let norm = self.init_norm.unwrap_or(1.0);
                w.chunks_exact_mut(taps).for_each(|f| rescale(f, norm));
                DwConv::trainable(param(w, shape, device), bias, stride, kernel)
            }
            DwMode::Frozen => {
                let keys = self.channel_keys(layer, channels, kernel);
                let base = self.key_filters(&keys, kernel);
                let a = keys.iter().map(|k| self.init_norm.map_or(k.a, |n| n * k.a.signum())).collect();
                let b = keys.iter().map(|k| k.b).collect();
                DwConv::frozen_from(base, a, b, self.learn_scale, kernel, stride, bias, device)
            }
            DwMode::RandomFrozen => {
                let mut base: Vec<f32> = (0..channels * taps).map(|_| rng.normal()).collect();
                base.chunks_exact_mut(taps).for_each(|f| {
                    normalise(f, DEFAULT_DEAD_TOLERANCE);
                });
                let a = vec![self.init_norm.unwrap_or(1.0); channels];
                DwConv::frozen_from(base, a, vec![0.0; channels], self.learn_scale, kernel, stride, bias, device)
            }
            DwMode::TransferFrozen => {
                let filters = match &self.transferred {
                    Some(layers) => {
                        let given =
                            layers.get(layer).unwrap_or_else(|| panic!("no transferred filters for DW layer {layer}"));
                        assert_eq!(
                            given.len(),
                            channels * taps,
                            "DW layer {layer}: transferred filters of another shape"
                        );
                        given.clone()
                    }
                    None => vec![0.0; channels * taps],
                };
                // `a * unit + b` reproduces each filter exactly; a dead one is its mean.
                let (mut base, mut a, mut b) = (filters, Vec::with_capacity(channels), Vec::with_capacity(channels));
                for f in base.chunks_exact_mut(taps) {
                    let (mean, norm) = mean_and_centered_norm(f);
                    if normalise(f, DEFAULT_DEAD_TOLERANCE) {
                        a.push(norm);
                    } else {
                        f.fill(0.0);
                        a.push(0.0);
                    }
                    b.push(mean);
                }
                DwConv::frozen_from(base, a, b, self.learn_scale, kernel, stride, bias, device)
            }
            DwMode::Scalespace => {
                let keys = self.channel_keys(layer, channels, kernel);
                let (models, signs): (Vec<_>, Vec<_>) =
                    models_of_keys(&self.key_filters(&keys, kernel), kernel).into_iter().unzip();
                let a: Vec<f32> = signs.iter().map(|s| s * self.init_norm.unwrap_or(1.0)).collect();
                let scale = if self.learn_scale { param(a, [channels], device) } else { frozen(a, [channels], device) };
                DwConv {
                    filter: frozen(operators(&models), [channels, 1, 3, 3], device),
                    scale: Some(scale),
                    offset: Some(param(vec![0.0; channels], [channels], device)),
                    scalespace: Some(ScaleSpaceFilters::new(&models, device)),
                    bias,
                    stride,
                    kernel,
                }
            }
        }
    }

    /// The bank's keys at `kernel` size (resized by the bank's rule), with
    /// the original index of each usable key.
    pub fn keys_at(&self, kernel: usize) -> (Vec<f32>, Vec<usize>) {
        let (keys, kept) = self.bank.resized(KernelSize::square(kernel));
        assert!(!kept.is_empty(), "bank `{}` has no usable key at {kernel}x{kernel}", self.bank.name);
        (keys, kept)
    }

    fn channel_keys(&self, layer: usize, channels: usize, kernel: usize) -> Vec<ChannelKey> {
        let (_, kept) = self.keys_at(kernel);
        let unit = |key| ChannelKey { key, a: 1.0, b: 0.0 };
        match &self.keys {
            KeyChoice::RoundRobin => (0..channels).map(|c| unit(kept[c % kept.len()])).collect(),
            KeyChoice::Random { seed } => (0..channels)
                .map(|c| unit(kept[SplitMix::for_item(*seed, layer as u64, c as u64).below(kept.len())]))
                .collect(),
            KeyChoice::Given(layers) => {
                let given = layers.get(layer).unwrap_or_else(|| panic!("no key assignment for DW layer {layer}"));
                assert_eq!(given.len(), channels, "DW layer {layer}: assignment has {} channels", given.len());
                given.clone()
            }
        }
    }

    /// The unit-norm key filter of every channel.
    fn key_filters(&self, keys: &[ChannelKey], kernel: usize) -> Vec<f32> {
        let (resized, kept) = self.keys_at(kernel);
        let taps = kernel * kernel;
        keys.iter()
            .flat_map(|k| {
                let pos = kept.iter().position(|&i| i == k.key).expect("assigned key is usable at this size");
                resized[pos * taps..(pos + 1) * taps].iter().copied()
            })
            .collect()
    }
}

fn rescale(filter: &mut [f32], norm: f32) {
    let current = filter.iter().map(|v| v * v).sum::<f32>().sqrt();
    if current > 0.0 {
        filter.iter_mut().for_each(|v| *v *= norm / current);
    }
}

/// Depthwise convolution, padding `k/2`, with a per-channel bias.
#[derive(Module, Debug)]
pub struct DwConv<B: Backend> {
    /// `[C, 1, k, k]`: the trainable filters, or the frozen base filters; in
    /// `scalespace` mode `[C, 1, 3, 3]`, the frozen difference operator each
    /// channel applies to its Gaussian.
    pub filter: Param<Tensor<B, 4>>,
    /// `a` per channel (frozen and scale-space modes only).
    pub scale: Option<Param<Tensor<B, 1>>>,
    /// `b` per channel, added to every tap (frozen and scale-space modes only).
    pub offset: Option<Param<Tensor<B, 1>>>,
    /// The learnable scale-space models (`scalespace` mode only).
    pub scalespace: Option<ScaleSpaceFilters<B>>,
    pub bias: Param<Tensor<B, 1>>,
    pub stride: usize,
    pub kernel: usize,
}

impl<B: Backend> DwConv<B> {
    fn trainable(filter: Param<Tensor<B, 4>>, bias: Param<Tensor<B, 1>>, stride: usize, kernel: usize) -> Self {
        DwConv { filter, scale: None, offset: None, scalespace: None, bias, stride, kernel }
    }

    #[allow(clippy::too_many_arguments)]
    fn frozen_from(
        base: Vec<f32>,
        a: Vec<f32>,
        b: Vec<f32>,
        learn_scale: bool,
        kernel: usize,
        stride: usize,
        bias: Param<Tensor<B, 1>>,
        device: &B::Device,
    ) -> Self {
        let channels = a.len();
        let scale = if learn_scale { param(a, [channels], device) } else { frozen(a, [channels], device) };
        DwConv {
            filter: frozen(base, [channels, 1, kernel, kernel], device),
            scale: Some(scale),
            offset: Some(param(b, [channels], device)),
            scalespace: None,
            bias,
            stride,
            kernel,
        }
    }

    pub fn channels(&self) -> usize {
        self.bias.dims()[0]
    }

    /// Whether the filters' shapes are fixed (only `a`, `b` may learn).
    pub fn is_frozen(&self) -> bool {
        self.offset.is_some() && self.scalespace.is_none()
    }

    /// The filters actually applied, `[C, 1, k, k]`.
    pub fn effective_filter(&self) -> Tensor<B, 4> {
        let (c, k) = (self.channels(), self.kernel);
        let base = match &self.scalespace {
            Some(models) => models.render(self.filter.val(), k).reshape([c, 1, k, k]),
            None => self.filter.val(),
        };
        match (&self.scale, &self.offset) {
            (Some(a), Some(b)) => base * a.val().reshape([c, 1, 1, 1]) + b.val().reshape([c, 1, 1, 1]),
            _ => base,
        }
    }

    /// The applied filters as `C x k*k` values, row-major.
    pub fn filter_values(&self) -> Vec<f32> {
        self.effective_filter().into_data().convert::<f32>().to_vec().expect("f32 filters")
    }

    /// Freezes the layer: each channel's current filter is replaced by its
    /// best key of `plan`'s bank with the fitted `a`, `b` (dead filters keep
    /// their mean as `b` with `a = 0`).
    pub fn snap_to_bank(self, plan: &DwPlan, device: &B::Device) -> (Self, Vec<ChannelKey>) {
        let keys = snap_keys(&self.filter_values(), self.kernel, plan);
        let base = plan.key_filters(&keys, self.kernel);
        let a = keys.iter().map(|k| k.a).collect();
        let b = keys.iter().map(|k| k.b).collect();
        let layer = DwConv::frozen_from(base, a, b, plan.learn_scale, self.kernel, self.stride, self.bias, device);
        (layer, keys)
    }
}

impl<B: DepthwiseBackend> DwConv<B> {
    /// `x` and the result in `layout`.
    pub fn forward(&self, x: Tensor<B, 4>, layout: Layout) -> Tensor<B, 4> {
        match (&self.scale, &self.offset) {
            // Keys and `a` frozen: only `b` learns, from box sums, and no
            // filter gradient is formed.
            (Some(scale), Some(offset)) if self.is_frozen() && !scale.val().is_require_grad() => {
                depthwise_offset(x, self.effective_filter(), offset.val(), self.bias.val(), self.stride, layout)
            }
            _ => depthwise(x, self.effective_filter(), self.bias.val(), self.stride, layout),
        }
    }
}

/// Best key, `a` and `b` of every filter (`C x k*k` values) in `plan`'s bank.
pub fn snap_keys(filters: &[f32], kernel: usize, plan: &DwPlan) -> Vec<ChannelKey> {
    let taps = kernel * kernel;
    let (keys, kept) = plan.keys_at(kernel);
    let dead: Vec<bool> =
        filters.chunks_exact(taps).map(|f| is_dead(mean_and_centered_norm(f).1, DEFAULT_DEAD_TOLERANCE)).collect();
    fit_filters(filters, taps, &keys, &dead)
        .into_iter()
        .map(|FilterFit { key, a, b, .. }| match key {
            Some(k) => ChannelKey { key: kept[k as usize], a, b },
            None => ChannelKey { key: kept[0], a: 0.0, b },
        })
        .collect()
}

/// Mean L2 norm of the applied filters over every channel of `layers`.
pub fn mean_filter_norm<B: Backend>(layers: &[&DwConv<B>]) -> f32 {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for layer in layers {
        let taps = layer.kernel * layer.kernel;
        for f in layer.filter_values().chunks_exact(taps) {
            sum += f.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            count += 1;
        }
    }
    (sum / count.max(1) as f64) as f32
}

/// Models list their DW layers in a fixed order and can rebuild them.
pub trait DwLayers<B: Backend>: Sized {
    fn dw_layers(&self) -> Vec<&DwConv<B>>;
    fn map_dw(self, f: &mut dyn FnMut(usize, DwConv<B>) -> DwConv<B>) -> Self;

    /// Snaps every DW layer to the bank (`fit-and-freeze`); returns the
    /// assignment per layer.
    fn freeze_to_bank(self, plan: &DwPlan, device: &B::Device) -> (Self, Vec<Vec<ChannelKey>>) {
        let mut assignment = Vec::new();
        let model = self.map_dw(&mut |_, layer| {
            let (layer, keys) = layer.snap_to_bank(plan, device);
            assignment.push(keys);
            layer
        });
        (model, assignment)
    }
}

/// Counts how many channels use each key of the bank.
pub fn key_usage(assignment: &[Vec<ChannelKey>], bank_len: usize) -> Vec<usize> {
    let mut usage = vec![0; bank_len];
    assignment.iter().flatten().for_each(|k| usage[k.key] += 1);
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, to_vec, Ad, Cpu};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::TensorData;

    /// Direct cross-correlation, zero padding `k/2`, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive_dw(
        x: &[f32],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        filt: &[f32],
        bias: &[f32],
        k: usize,
        s: usize,
    ) -> Vec<f64> {
        let p = (k / 2) as isize;
        let (oh, ow) = ((h + 2 * (k / 2) - k) / s + 1, (w + 2 * (k / 2) - k) / s + 1);
        let mut out = vec![0.0f64; n * c * oh * ow];
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[ch] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) =
                                    ((oy * s) as isize + ky as isize - p, (ox * s) as isize + kx as isize - p);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let xv = x[((b * c + ch) * h + iy as usize) * w + ix as usize] as f64;
                                    acc += xv * filt[ch * k * k + ky * k + kx] as f64;
                                }
                            }
                        }
                        out[((b * c + ch) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    /// d(sum(out * r))/dx, naively: every output tap scatters `r * filter` back.
    #[allow(clippy::too_many_arguments)]
    fn naive_input_grad(
        r: &[f32],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        filt: &[f32],
        k: usize,
        s: usize,
    ) -> Vec<f64> {
        let p = (k / 2) as isize;
        let (oh, ow) = ((h + 2 * (k / 2) - k) / s + 1, (w + 2 * (k / 2) - k) / s + 1);
        let mut g = vec![0.0f64; n * c * h * w];
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let rv = r[((b * c + ch) * oh + oy) * ow + ox] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) =
                                    ((oy * s) as isize + ky as isize - p, (ox * s) as isize + kx as isize - p);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    g[((b * c + ch) * h + iy as usize) * w + ix as usize] +=
                                        rv * filt[ch * k * k + ky * k + kx] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        g
    }

    /// Runs `layer` on a random input of `shape` and backpropagates
    /// `sum(out * r)` for a random `r`: the input, `r`, the output's height and
    /// width, and the gradients.
    fn backward_of_random_projection(
        layer: &DwConv<Ad>,
        shape: [usize; 4],
        rng: &mut SplitMix,
    ) -> (Vec<f32>, Vec<f32>, [usize; 2], <Ad as AutodiffBackend>::Gradients) {
        let device = Default::default();
        let xs: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
        let x = Tensor::<Ad, 4>::from_data(TensorData::new(xs.clone(), shape), &device);
        let out = layer.forward(x, Layout::ChannelsFirst);
        let [n, c, oh, ow] = out.dims();
        let rs: Vec<f32> = (0..n * c * oh * ow).map(|_| rng.normal()).collect();
        let r = Tensor::<Ad, 4>::from_data(TensorData::new(rs.clone(), [n, c, oh, ow]), &device);
        let grads = (out * r).sum().backward();
        (xs, rs, [oh, ow], grads)
    }

    fn plan(mode: DwMode) -> DwPlan {
        DwPlan { mode, ..DwPlan::trainable(Bank::published8()) }
    }

    #[test]
    fn forward_and_input_gradient_match_a_naive_reference() {
        let device = Default::default();
        let (n, c, h, w) = (2, 5, 9, 8);
        for mode in [DwMode::Trainable, DwMode::Frozen] {
            for k in [3, 5, 7] {
                for s in [1, 2] {
                    let mut rng = SplitMix::new((k * 10 + s) as u64);
                    let mut layer = plan(mode).build::<Ad>(0, c, k, s, WeightInit::Normal(0.3), &mut rng, &device);
                    layer.bias = param((0..c).map(|i| 0.1 * i as f32).collect(), [c], &device);
                    if mode == DwMode::Frozen {
                        layer.offset = Some(param((0..c).map(|i| 0.05 - 0.02 * i as f32).collect(), [c], &device));
                    }
                    let filt = layer.filter_values();
                    let xs: Vec<f32> = (0..n * c * h * w).map(|_| rng.normal()).collect();
                    let x =
                        Tensor::<Ad, 4>::from_data(TensorData::new(xs.clone(), [n, c, h, w]), &device).require_grad();
                    let out = layer.forward(x.clone(), Layout::ChannelsFirst);
                    let [_, _, oh, ow] = out.dims();
                    let expected = naive_dw(&xs, n, c, h, w, &filt, &to_vec(layer.bias.val()), k, s);
                    assert_eq!(out.dims(), [n, c, (h - 1) / s + 1, (w - 1) / s + 1]);
                    assert_close(&to_vec(out.clone()), &expected, 1e-4, &format!("{mode} forward k={k} s={s}"));

                    let rs: Vec<f32> = (0..n * c * oh * ow).map(|_| rng.normal()).collect();
                    let r = Tensor::<Ad, 4>::from_data(TensorData::new(rs.clone(), [n, c, oh, ow]), &device);
                    let grads = (out * r).sum().backward();
                    let gx = x.grad(&grads).expect("input gradient");
                    let expected = naive_input_grad(&rs, n, c, h, w, &filt, k, s);
                    assert_close(&to_vec(gx), &expected, 1e-4, &format!("{mode} input grad k={k} s={s}"));
                }
            }
        }
    }

    #[test]
    fn offset_and_scale_gradients_match_a_naive_reference() {
        // d(sum(out * r))/db = sum(r * box(x)) and d/da = sum(r * conv(x, base)), per channel.
        let device = Default::default();
        let (n, c, h, w) = (2, 3, 9, 8);
        let cases = [3, 5, 7].into_iter().flat_map(|k| [(k, 1), (k, 2)]);
        for (k, s, learn_scale) in cases.flat_map(|(k, s)| [(k, s, false), (k, s, true)]) {
            let mut rng = SplitMix::new((k * 10 + s) as u64);
            let mut p = plan(DwMode::Frozen);
            p.learn_scale = learn_scale;
            let layer = p.build::<Ad>(0, c, k, s, WeightInit::Normal(0.3), &mut rng, &device);
            let base = to_vec(layer.filter.val());
            let (xs, rs, [oh, ow], grads) = backward_of_random_projection(&layer, [n, c, h, w], &mut rng);
            let per_channel = |response: Vec<f64>| -> Vec<f64> {
                let plane = oh * ow;
                (0..c)
                    .map(|ch| {
                        (0..n)
                            .flat_map(|b| (0..plane).map(move |i| (b * c + ch) * plane + i))
                            .map(|i| rs[i] as f64 * response[i])
                            .sum()
                    })
                    .collect()
            };
            let zeros = vec![0.0; c];
            let boxed = naive_dw(&xs, n, c, h, w, &vec![1.0; c * k * k], &zeros, k, s);
            let keyed = naive_dw(&xs, n, c, h, w, &base, &zeros, k, s);
            let what = format!("k={k} s={s} learn_scale={learn_scale}");
            let g_offset = layer.offset.as_ref().unwrap().val().grad(&grads).expect("offset gradient");
            assert_close(&to_vec(g_offset), &per_channel(boxed), 1e-4, &format!("offset grad {what}"));
            let g_scale = layer.scale.as_ref().unwrap().val().grad(&grads);
            if learn_scale {
                let g_scale = g_scale.expect("scale gradient");
                assert_close(&to_vec(g_scale), &per_channel(keyed), 1e-4, &format!("scale grad {what}"));
            } else {
                assert!(g_scale.is_none(), "a frozen scale got a gradient");
            }
            assert!(layer.filter.val().grad(&grads).is_none(), "the keys got a gradient");
        }
    }

    #[test]
    fn frozen_bank_weights_stay_bit_identical_while_offsets_learn() {
        let device = Default::default();
        let mut rng = SplitMix::new(1);
        let mut layer = plan(DwMode::Frozen).build::<Ad>(0, 8, 7, 1, WeightInit::Normal(0.1), &mut rng, &device);
        let base_before = to_vec(layer.filter.val());
        let scale_before = to_vec(layer.scale.as_ref().unwrap().val());
        let offset_before = to_vec(layer.offset.as_ref().unwrap().val());
        // The bases are the published keys, round-robin.
        let bank = Bank::published8();
        assert_eq!(&base_before[3 * 49..4 * 49], bank.key(3));
        let mut optim = AdamWConfig::new().with_weight_decay(0.05).init::<Ad, DwConv<Ad>>();
        for _ in 0..3 {
            let x = Tensor::<Ad, 4>::from_data(
                TensorData::new((0..2 * 8 * 10 * 10).map(|_| rng.normal()).collect::<Vec<f32>>(), [2, 8, 10, 10]),
                &device,
            );
            let loss = layer.forward(x, Layout::ChannelsFirst).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            assert!(grads.get::<Cpu, 4>(layer.filter.id).is_none(), "the bank weights got a gradient");
            layer = optim.step(1e-2, layer, grads);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&to_vec(layer.filter.val())), bits(&base_before));
        assert_eq!(bits(&to_vec(layer.scale.as_ref().unwrap().val())), bits(&scale_before));
        let offset_after = to_vec(layer.offset.as_ref().unwrap().val());
        assert!(offset_after.iter().zip(&offset_before).all(|(a, b)| a != b), "{offset_after:?}");
    }

    #[test]
    fn modes_start_from_the_documented_filters() {
        let device = Default::default();
        let mut rng = SplitMix::new(2);
        let mut p = plan(DwMode::BankInit);
        p.keys = KeyChoice::Random { seed: 5 };
        p.init_norm = Some(0.5);
        let layer = p.build::<Ad>(0, 16, 7, 1, WeightInit::Normal(0.1), &mut rng, &device);
        assert!(!layer.is_frozen());
        let keys = snap_keys(&layer.filter_values(), 7, &p);
        assert!(keys.iter().all(|k| (k.a.abs() - 0.5).abs() < 1e-5 && k.b.abs() < 1e-6));
        assert!(keys.iter().map(|k| k.key).collect::<std::collections::BTreeSet<_>>().len() > 3);
        assert!((mean_filter_norm(&[&layer]) - 0.5).abs() < 1e-5);

        let layer = plan(DwMode::RandomFrozen).build::<Ad>(0, 4, 3, 2, WeightInit::Normal(0.1), &mut rng, &device);
        assert!(layer.is_frozen());
        for f in to_vec(layer.filter.val()).chunks_exact(9) {
            let (mean, norm) = mean_and_centered_norm(f);
            assert!(mean.abs() < 1e-6 && (norm - 1.0).abs() < 1e-5);
        }
        // Smaller kernels use the centre-cropped keys.
        let layer = plan(DwMode::Frozen).build::<Ad>(0, 8, 3, 1, WeightInit::Normal(0.1), &mut rng, &device);
        let (keys3, kept) = plan(DwMode::Frozen).keys_at(3);
        assert_eq!(&to_vec(layer.filter.val())[..9], &keys3[..9]);
        assert_eq!(kept[0], 0);
    }

    #[test]
    fn snapping_recovers_shifted_keys_and_freezes() {
        let device = Default::default();
        let bank = Bank::published8();
        let mut rng = SplitMix::new(3);
        let mut layer = plan(DwMode::Trainable).build::<Ad>(0, 3, 7, 1, WeightInit::Normal(0.1), &mut rng, &device);
        let shifted: Vec<f32> = [(6, -2.0, 0.3), (0, 0.5, -0.1), (7, 1.5, 0.0)]
            .iter()
            .flat_map(|&(k, a, b)| bank.key(k).iter().map(move |v| a * v + b))
            .collect();
        layer.filter = param(shifted.clone(), [3, 1, 7, 7], &device);
        let (snapped, keys) = layer.snap_to_bank(&plan(DwMode::Frozen), &device);
        assert_eq!(keys.iter().map(|k| k.key).collect::<Vec<_>>(), vec![6, 0, 7]);
        assert!((keys[0].a + 2.0).abs() < 1e-4 && (keys[0].b - 0.3).abs() < 1e-5);
        assert!(snapped.is_frozen());
        assert_close(&snapped.filter_values(), &shifted.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-5, "snapped");
        assert_eq!(key_usage(&[keys], 8), vec![1, 0, 0, 0, 0, 0, 1, 1]);
    }

    /// The gradients of the scale-space parameters (sigmas, alpha, `a`, `b`)
    /// against central differences of the loss computed from
    /// `masterkey-scalespace`'s own kernels (sampled discretisation).
    #[test]
    fn scalespace_gradients_match_finite_differences_of_the_reference_kernels() {
        use crate::scalespace_dw::ChannelModel;
        use masterkey_scalespace::{Discretisation, Model, Params};
        let device = Default::default();
        let (n, c, h, w) = (2, 8, 9, 8);
        for (k, s) in [(5, 1), (7, 2), (3, 1)] {
            let mut p = plan(DwMode::Scalespace);
            p.learn_scale = true;
            let mut rng = SplitMix::new(k as u64);
            let mut layer = p.build::<Ad>(0, c, k, s, WeightInit::Normal(0.3), &mut rng, &device);
            let families: Vec<_> = layer.scalespace.as_ref().unwrap().models().iter().map(|m| m.family).collect();
            // Parameters inside their ranges, where the clamps do not cut the gradient.
            let models: Vec<ChannelModel> = families
                .iter()
                .enumerate()
                .map(|(i, &family)| ChannelModel {
                    family,
                    sigma_x: 0.5 + 0.11 * i as f64,
                    sigma_y: 1.3 - 0.07 * i as f64,
                    alpha: family.has_alpha().then_some(0.7),
                })
                .collect();
            let a: Vec<f32> = (0..c).map(|i| 1.0 - 0.15 * i as f32).collect();
            let b: Vec<f32> = (0..c).map(|i| 0.02 * i as f32 - 0.05).collect();
            let ss = layer.scalespace.take().unwrap();
            let fresh = crate::scalespace_dw::ScaleSpaceFilters::<Ad>::new(&models, &device);
            layer.scalespace = Some(crate::scalespace_dw::ScaleSpaceFilters { families: ss.families, ..fresh });
            layer.scale = Some(param(a.clone(), [c], &device));
            layer.offset = Some(param(b.clone(), [c], &device));
            let (xs, rs, _, grads) = backward_of_random_projection(&layer, [n, c, h, w], &mut rng);

            let loss = |models: &[ChannelModel], a: &[f32], b: &[f32]| -> f64 {
                let filt: Vec<f32> = models
                    .iter()
                    .enumerate()
                    .flat_map(|(i, m)| {
                        let params = Params { sigma_x: m.sigma_x, sigma_y: m.sigma_y, alpha: m.alpha };
                        let model = Model::new(m.family, Discretisation::Sampled, params).unwrap();
                        let unit = model.kernel(k).unwrap().normalised().unwrap();
                        let (a, b) = (a[i] as f64, b[i] as f64);
                        unit.into_iter().map(move |v| (a * v + b) as f32)
                    })
                    .collect();
                let out = naive_dw(&xs, n, c, h, w, &filt, &vec![0.0; c], k, s);
                out.iter().zip(&rs).map(|(o, &r)| o * r as f64).sum()
            };
            let step = 1e-2;
            let central = |shift: &dyn Fn(&mut ChannelModel, f64), ch: usize| {
                let mut up = models.clone();
                let mut down = models.clone();
                shift(&mut up[ch], step);
                shift(&mut down[ch], -step);
                (loss(&up, &a, &b) - loss(&down, &a, &b)) / (2.0 * step)
            };
            let ss = layer.scalespace.as_ref().unwrap();
            let grad = |p: &Param<Tensor<Ad, 1>>| to_vec(p.val().grad(&grads).expect("a gradient"));
            let (g_sx, g_sy, g_alpha) = (grad(&ss.log_sigma_x), grad(&ss.log_sigma_y), grad(&ss.log_alpha));
            let g_a = grad(layer.scale.as_ref().unwrap());
            let g_b = grad(layer.offset.as_ref().unwrap());
            for ch in 0..c {
                // The parameters are logs: d/dlog(sigma) shifts sigma by the factor exp(step).
                let fd_sx = central(&|m, d| m.sigma_x *= d.exp(), ch);
                let fd_sy = central(&|m, d| m.sigma_y *= d.exp(), ch);
                let what = format!("{} k={k} s={s}", families[ch]);
                assert_close(&[g_sx[ch]], &[fd_sx], 2e-3, &format!("d/dlog sigma_x {what}"));
                assert_close(&[g_sy[ch]], &[fd_sy], 2e-3, &format!("d/dlog sigma_y {what}"));
                if families[ch].has_alpha() {
                    let fd_alpha = central(&|m, d| m.alpha = m.alpha.map(|v| v * d.exp()), ch);
                    assert_close(&[g_alpha[ch]], &[fd_alpha], 2e-3, &format!("d/dlog alpha {what}"));
                } else {
                    assert_eq!(g_alpha[ch], 0.0, "{what}: alpha is not used");
                }
                let shifted = |v: &[f32], d: f64| {
                    let mut v = v.to_vec();
                    v[ch] += d as f32;
                    v
                };
                let fd_a =
                    (loss(&models, &shifted(&a, step), &b) - loss(&models, &shifted(&a, -step), &b)) / (2.0 * step);
                let fd_b =
                    (loss(&models, &a, &shifted(&b, step)) - loss(&models, &a, &shifted(&b, -step))) / (2.0 * step);
                assert_close(&[g_a[ch]], &[fd_a], 2e-3, &format!("d/da {what}"));
                assert_close(&[g_b[ch]], &[fd_b], 2e-3, &format!("d/db {what}"));
            }
            assert!(layer.filter.val().grad(&grads).is_none(), "the operators got a gradient");
        }
    }
}
