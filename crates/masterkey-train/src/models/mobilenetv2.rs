//! MobileNetV2 (Sandler et al. 2018), torchvision layout at width 1.0:
//! stem 3x3/2 conv (32) + BN + ReLU6; inverted residuals `(t, c, n, s)` =
//! (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2)
//! (6,320,1,1); 1x1 conv to 1280; global pool; linear. The DW conv keeps a
//! bias although BN follows (BN cancels it); the classifier's dropout is
//! left out (a run stays a function of its seed).
//!
//! Small-input variant (28-64 px): stem stride 1 and the first stride-2
//! stage (24 channels) at stride 1, so a 32 px image keeps 32/32/16/8/8/4 px
//! (the usual CIFAR adaptation) instead of 112/56/28/14/14/7 at 224 px.

use crate::dw_op::Layout;
use crate::ModelBackend;
use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::dw::{DwConv, DwLayers, DwPlan};
use crate::layers::{global_mean, Conv, Dense, WeightInit};
use crate::models::ModelSpec;
use crate::rng::SplitMix;

const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Channels rounded to a multiple of 8, never more than 10% below (torchvision).
fn make_divisible(v: f32) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f32) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

fn relu6<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    x.clamp(0.0, 6.0)
}

#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    pub conv: Conv<B>,
    pub bn: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        init: WeightInit,
        rng: &mut SplitMix,
        device: &B::Device,
    ) -> Self {
        ConvBn {
            conv: Conv::new(c_in, c_out, kernel, stride, true, false, init, rng, device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward(self.conv.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct InvertedResidual<B: Backend> {
    pub expand: Option<ConvBn<B>>,
    pub dw: DwConv<B>,
    pub dw_bn: BatchNorm<B>,
    pub project: ConvBn<B>,
    pub residual: bool,
}

impl<B: ModelBackend> InvertedResidual<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = relu6(expand.forward(y));
        }
        let y = self.project.forward(relu6(self.dw_bn.forward(self.dw.forward(y, Layout::ChannelsFirst))));
        if self.residual {
            x + y
        } else {
            y
        }
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2<B: Backend> {
    pub stem: ConvBn<B>,
    pub blocks: Vec<InvertedResidual<B>>,
    pub last: ConvBn<B>,
    pub head: Dense<B>,
}

impl<B: ModelBackend> MobileNetV2<B> {
    pub fn new(spec: &ModelSpec, plan: &DwPlan, rng: &mut SplitMix, device: &B::Device) -> Self {
        let width = spec.width_mult;
        let conv_init = spec.weight_init(WeightInit::KaimingFanOut);
        let mut c_in = make_divisible(32.0 * width);
        let stem_stride = if spec.small_input { 1 } else { 2 };
        let stem = ConvBn::new(spec.in_channels, c_in, 3, stem_stride, conv_init, rng, device);
        let mut blocks = Vec::new();
        for (i, &(t, c, n, s)) in SETTINGS.iter().enumerate() {
            let c_out = make_divisible(c as f32 * width);
            let s = if spec.small_input && i == 1 { 1 } else { s };
            for j in 0..n {
                let stride = if j == 0 { s } else { 1 };
                let hidden = c_in * t;
                let dw_index = blocks.len();
                blocks.push(InvertedResidual {
                    expand: (t != 1).then(|| ConvBn::new(c_in, hidden, 1, 1, conv_init, rng, device)),
                    dw: plan.build(dw_index, hidden, spec.dw_kernel, stride, conv_init, rng, device),
                    dw_bn: BatchNormConfig::new(hidden).init(device),
                    project: ConvBn::new(hidden, c_out, 1, 1, conv_init, rng, device),
                    residual: stride == 1 && c_in == c_out,
                });
                c_in = c_out;
            }
        }
        let last_channels = make_divisible(1280.0 * width.max(1.0));
        MobileNetV2 {
            stem,
            blocks,
            last: ConvBn::new(c_in, last_channels, 1, 1, conv_init, rng, device),
            head: Dense::new(last_channels, spec.classes, spec.weight_init(WeightInit::Normal(0.01)), rng, device),
        }
    }

    /// The forward pass, `trace` called with each stage's name and output.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 4>,
        trace: &mut impl FnMut(&dyn Fn() -> String, &Tensor<B, 4>),
    ) -> Tensor<B, 2> {
        let mut x = relu6(self.stem.forward(x));
        trace(&|| "stem".into(), &x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            trace(&|| format!("blocks.{i}"), &x);
        }
        let x = relu6(self.last.forward(x));
        trace(&|| "last".into(), &x);
        self.head.forward(global_mean(x))
    }
}

impl<B: Backend> DwLayers<B> for MobileNetV2<B> {
    fn dw_layers(&self) -> Vec<&DwConv<B>> {
        self.blocks.iter().map(|b| &b.dw).collect()
    }

    fn map_dw(mut self, f: &mut dyn FnMut(usize, DwConv<B>) -> DwConv<B>) -> Self {
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(i, mut block)| {
                block.dw = f(i, block.dw);
                block
            })
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_matches_torchvision() {
        assert_eq!(make_divisible(32.0), 32);
        assert_eq!(make_divisible(16.0 * 0.35), 8);
        assert_eq!(make_divisible(24.0 * 0.75), 24);
        assert_eq!(make_divisible(1280.0), 1280);
    }
}
