//! ConvNeXt (Liu et al. 2022) and ConvNeXt V2 (Woo et al. 2023, with GRN).
//!
//! Block: `x + gamma * Linear(GELU(Linear(LN(DW7x7(x))))[, GRN])`, all on
//! channels-last tensors. V1 scales the branch by a learnable layer scale
//! `gamma` (official init 1e-6); V2 drops it and adds GRN after the GELU.
//! Stochastic depth and dropout are not implemented (a run stays a function
//! of its seed), so results compare with the official recipes run with
//! `drop_path = 0`.
//!
//! ImageNet stem: 4x4 stride-4 patchify conv + LN. Small-input variant (for
//! 28-64 px): 2x2 stride-2 patchify stem, so a 32 px image gives stages of
//! 16/8/4/2 px (28 px: 14/7/3/1) instead of 56/28/14/7 at 224 px; the
//! downsampling layers (LN + 2x2 stride-2 conv) and stages are unchanged.

use crate::dw_op::Layout;
use crate::gelu_op::gelu;
use crate::linear_op::linear;
use crate::mlp_op::block_mlp;
use crate::ModelBackend;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::dw::{DwConv, DwLayers, DwPlan};
use crate::layers::{broadcast_last, filled, global_mean_channels_last, to_channels_last, Conv, Dense, LastAxisNorm};
use crate::models::{ModelSpec, CONVNEXT_INIT};
use crate::rng::SplitMix;

/// Official depths and widths (timm / ConvNeXt-V2 repositories).
pub const PRESETS: &[(&str, [usize; 4], [usize; 4])] = &[
    ("atto", [2, 2, 6, 2], [40, 80, 160, 320]),
    ("femto", [2, 2, 6, 2], [48, 96, 192, 384]),
    ("pico", [2, 2, 6, 2], [64, 128, 256, 512]),
    ("nano", [2, 2, 8, 2], [80, 160, 320, 640]),
    ("tiny", [3, 3, 9, 3], [96, 192, 384, 768]),
];

const GRN_NORM_FLOOR: f32 = 1e-12;

/// Global response normalisation (ConvNeXt V2) on channels-last input.
#[derive(Module, Debug)]
pub struct Grn<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
}

impl<B: Backend> Grn<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Grn { gamma: filled(0.0, [dim], device), beta: filled(0.0, [dim], device) }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        // L2 norm over the spatial axes, per sample and channel. The tiny
        // term keeps the gradient of sqrt finite for a channel that is all
        // zeros (GELU underflows to exactly 0, and in the last stage of the
        // small-input variant a channel is one pixel): without it a long run
        // turns to NaN. It moves the norm by at most 1e-6.
        let gx =
            (x.clone().reshape([n, h * w, c]).powi_scalar(2).sum_dim(1) + GRN_NORM_FLOOR).sqrt().reshape([n, 1, 1, c]);
        let nx = gx.clone() / (gx.mean_dim(3) + 1e-6);
        broadcast_last::<B, 4>(self.gamma.val()) * (x.clone() * nx) + broadcast_last::<B, 4>(self.beta.val()) + x
    }
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub dw: DwConv<B>,
    pub norm: LastAxisNorm<B>,
    pub expand: Dense<B>,
    pub grn: Option<Grn<B>>,
    pub project: Dense<B>,
    pub layer_scale: Option<Param<Tensor<B, 1>>>,
}

impl<B: ModelBackend> Block<B> {
    /// `x` channels-last, `[N, H, W, C]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.dw.forward(x.clone(), Layout::ChannelsLast);
        let project = match &self.layer_scale {
            Some(gamma) => self.project.scaled_params(gamma.val()),
            None => self.project.params(),
        };
        let Some(grn) = &self.grn else {
            return block_mlp(y, x, self.norm.params(), self.expand.params(), project);
        };
        let y = grn.forward(gelu(self.expand.forward(self.norm.forward(y))));
        x + linear(y, project.0, project.1)
    }
}

#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub norm: LastAxisNorm<B>,
    pub conv: Conv<B>,
}

#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    pub downsample: Option<Downsample<B>>,
    pub blocks: Vec<Block<B>>,
}

#[derive(Module, Debug)]
pub struct ConvNext<B: Backend> {
    pub stem: Conv<B>,
    pub stem_norm: LastAxisNorm<B>,
    pub stages: Vec<Stage<B>>,
    pub head_norm: LastAxisNorm<B>,
    pub head: Dense<B>,
}

impl<B: ModelBackend> ConvNext<B> {
    /// `spec.depths` / `spec.dims` per stage; `spec.v2` selects GRN.
    pub fn new(spec: &ModelSpec, v2: bool, plan: &DwPlan, rng: &mut SplitMix, device: &B::Device) -> Self {
        let init = spec.weight_init(CONVNEXT_INIT);
        let patch = if spec.small_input { 2 } else { 4 };
        let stem = Conv::new(spec.in_channels, spec.dims[0], patch, patch, false, true, init, rng, device);
        let mut dw_index = 0;
        let mut stages = Vec::new();
        for (s, (&depth, &dim)) in spec.depths.iter().zip(&spec.dims).enumerate() {
            let downsample = (s > 0).then(|| Downsample {
                norm: LastAxisNorm::new(spec.dims[s - 1], device),
                conv: Conv::new(spec.dims[s - 1], dim, 2, 2, false, true, init, rng, device),
            });
            let blocks = (0..depth)
                .map(|_| {
                    let dw = plan.build(dw_index, dim, spec.dw_kernel, 1, init, rng, device);
                    dw_index += 1;
                    Block {
                        dw,
                        norm: LastAxisNorm::new(dim, device),
                        expand: Dense::new(dim, 4 * dim, init, rng, device),
                        grn: v2.then(|| Grn::new(4 * dim, device)),
                        project: Dense::new(4 * dim, dim, init, rng, device),
                        layer_scale: spec.layer_scale_init.map(|g| filled(g, [dim], device)),
                    }
                })
                .collect();
            stages.push(Stage { downsample, blocks });
        }
        let last = *spec.dims.last().expect("at least one stage");
        ConvNext {
            stem,
            stem_norm: LastAxisNorm::new(spec.dims[0], device),
            stages,
            head_norm: LastAxisNorm::new(last, device),
            head: Dense::new(last, spec.classes, init, rng, device),
        }
    }

    /// The forward pass, `trace` called with each stage's name and output
    /// (names as in the PyTorch state dict: `stem`, `stages.1.downsample`,
    /// `stages.1.blocks.0`).
    pub fn forward_traced(
        &self,
        x: Tensor<B, 4>,
        trace: &mut impl FnMut(&dyn Fn() -> String, &Tensor<B, 4>),
    ) -> Tensor<B, 2> {
        // Channels-last from the input on, as the patchify convolutions,
        // LayerNorm, the MLP and the DW operation read it.
        let mut x = self.stem_norm.forward(self.stem.forward_patches(to_channels_last(x)));
        trace(&|| "stem".into(), &x);
        for (i, stage) in self.stages.iter().enumerate() {
            if let Some(down) = &stage.downsample {
                x = down.conv.forward_patches(down.norm.forward(x));
                trace(&|| format!("stages.{i}.downsample"), &x);
            }
            for (j, block) in stage.blocks.iter().enumerate() {
                x = block.forward(x);
                trace(&|| format!("stages.{i}.blocks.{j}"), &x);
            }
        }
        self.head.forward(self.head_norm.forward(global_mean_channels_last(x)))
    }
}

impl<B: Backend> DwLayers<B> for ConvNext<B> {
    fn dw_layers(&self) -> Vec<&DwConv<B>> {
        self.stages.iter().flat_map(|s| s.blocks.iter().map(|b| &b.dw)).collect()
    }

    fn map_dw(mut self, f: &mut dyn FnMut(usize, DwConv<B>) -> DwConv<B>) -> Self {
        let mut index = 0;
        for stage in &mut self.stages {
            stage.blocks = std::mem::take(&mut stage.blocks)
                .into_iter()
                .map(|mut block| {
                    block.dw = f(index, block.dw);
                    index += 1;
                    block
                })
                .collect();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Ad;
    use burn::tensor::TensorData;

    #[test]
    fn grn_gradients_stay_finite_on_an_all_zero_channel() {
        let device = Default::default();
        let mut grn = Grn::<Ad>::new(3, &device);
        grn.gamma = filled(0.5, [3], &device);
        // Channel 1 is zero at both pixels of both samples.
        let values = vec![1.0, 0.0, -2.0, 0.5, 0.0, 3.0, -1.0, 0.0, 0.25, 2.0, 0.0, -0.5];
        let x = Tensor::<Ad, 4>::from_data(TensorData::new(values, [2, 1, 2, 3]), &device).require_grad();
        let grads = grn.forward(x.clone()).sum().backward();
        let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let dgamma: Vec<f32> = grn.gamma.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert!(dx.iter().chain(&dgamma).all(|v| v.is_finite()), "dx {dx:?} dgamma {dgamma:?}");
    }
}
