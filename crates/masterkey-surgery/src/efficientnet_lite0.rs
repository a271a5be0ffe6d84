//! EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the "lite"
//! variant of the TensorFlow TPU repository) for inference, generic over the
//! burn backend: the whole architecture in this one file.
//!
//! Lite means: ReLU6 instead of swish, no squeeze-and-excitation, stem (32)
//! and head (1280) not scaled. Weights are taken by name from a state dict
//! laid out as the `efficientnet_lite_pytorch` port (after lukemelas'
//! EfficientNet-PyTorch) saves it: `_conv_stem`, `_bn0`,
//! `_blocks.{i}._expand_conv` / `_bn0` / `_depthwise_conv` / `_bn1` /
//! `_project_conv` / `_bn2`, `_conv_head`, `_bn1`, `_fc`. Each batch norm
//! (eps 1e-3, running statistics) is folded into the convolution before it
//! when the model is built. Convolutions pad as TensorFlow's "SAME" does,
//! which is asymmetric for stride 2 (the extra row and column go at the
//! bottom and right).

use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{Tensor, TensorData};
use masterkey_core::Result;

use crate::state_dict::StateDict;

/// Side of the square input image.
pub const INPUT_SIZE: usize = 224;
/// ImageNet-1k classes.
pub const CLASSES: usize = 1000;
/// The TensorFlow batch-norm epsilon the weights were trained with.
const BN_EPS: f32 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of MBConv blocks: the first block has the stride and changes
/// the channel count, the repeats keep both.
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand_ratio: usize,
    out_channels: usize,
}

/// Lite0 is EfficientNet-B0's stage table with width and depth 1.0.
const STAGES: [Stage; 7] = [
    Stage { repeats: 1, kernel: 3, stride: 1, expand_ratio: 1, out_channels: 16 },
    Stage { repeats: 2, kernel: 3, stride: 2, expand_ratio: 6, out_channels: 24 },
    Stage { repeats: 2, kernel: 5, stride: 2, expand_ratio: 6, out_channels: 40 },
    Stage { repeats: 3, kernel: 3, stride: 2, expand_ratio: 6, out_channels: 80 },
    Stage { repeats: 3, kernel: 5, stride: 1, expand_ratio: 6, out_channels: 112 },
    Stage { repeats: 4, kernel: 5, stride: 2, expand_ratio: 6, out_channels: 192 },
    Stage { repeats: 1, kernel: 3, stride: 1, expand_ratio: 6, out_channels: 320 },
];

/// A convolution without bias followed by a batch norm, folded into one
/// convolution with bias.
#[derive(Debug, Clone)]
struct ConvBn<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl<B: Backend> ConvBn<B> {
    /// Loads `{conv}.weight` `[out, in / groups, k, k]` and the batch norm
    /// `{bn}.*` and folds them: `w' = w * s`, `b' = beta - mean * s` with
    /// `s = gamma / sqrt(var + eps)` per output channel.
    fn load(
        weights: &StateDict,
        conv: &str,
        bn: &str,
        [out, in_channels, kernel, stride, groups]: [usize; 5],
        device: &B::Device,
    ) -> Result<Self> {
        let shape = [out, in_channels / groups, kernel, kernel];
        let mut w = weights.get(&format!("{conv}.weight"), &shape)?.to_vec();
        let gamma = weights.get(&format!("{bn}.weight"), &[out])?;
        let beta = weights.get(&format!("{bn}.bias"), &[out])?;
        let mean = weights.get(&format!("{bn}.running_mean"), &[out])?;
        let var = weights.get(&format!("{bn}.running_var"), &[out])?;
        let per_output = w.len() / out;
        let mut bias = vec![0.0f32; out];
        for o in 0..out {
            let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
            w[o * per_output..(o + 1) * per_output].iter_mut().for_each(|v| *v *= scale);
            bias[o] = beta[o] - mean[o] * scale;
        }
        Ok(ConvBn {
            weight: Tensor::from_data(TensorData::new(w, shape), device),
            bias: Tensor::from_data(TensorData::new(bias, [out]), device),
            kernel,
            stride,
            groups,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let options =
            PaddedConvOptions::asymmetric([self.stride; 2], [top, left], [bottom, right], [1, 1], self.groups);
        conv2d(x, self.weight.clone(), Some(self.bias.clone()), options)
    }
}

/// TensorFlow "SAME" padding of one axis: the output has `ceil(input /
/// stride)` positions; the total padding that needs is split with the
/// smaller half first.
fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

fn relu6<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    x.clamp(0.0, 6.0)
}

/// Mobile inverted bottleneck: 1x1 expansion (absent when the ratio is 1),
/// depthwise k x k, 1x1 projection; a residual when shape is kept.
#[derive(Debug, Clone)]
struct MbConv<B: Backend> {
    expand: Option<ConvBn<B>>,
    depthwise: ConvBn<B>,
    project: ConvBn<B>,
    residual: bool,
}

impl<B: Backend> MbConv<B> {
    fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = input.clone();
        if let Some(expand) = &self.expand {
            x = relu6(expand.forward(x));
        }
        x = relu6(self.depthwise.forward(x));
        x = self.project.forward(x);
        if self.residual {
            x = x + input;
        }
        x
    }
}

/// The network, with batch norms folded.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0<B: Backend> {
    stem: ConvBn<B>,
    blocks: Vec<MbConv<B>>,
    head: ConvBn<B>,
    /// `[1280, 1000]`: burn's `linear` multiplies by the weight untransposed.
    fc_weight: Tensor<B, 2>,
    fc_bias: Tensor<B, 1>,
}

impl<B: Backend> EfficientNetLite0<B> {
    /// Builds the network from a state dict, checking the name and shape of
    /// every tensor it takes.
    pub fn from_state_dict(weights: &StateDict, device: &B::Device) -> Result<Self> {
        let stem = ConvBn::load(weights, "_conv_stem", "_bn0", [STEM_CHANNELS, 3, 3, 2, 1], device)?;
        let mut blocks = Vec::new();
        let mut in_channels = STEM_CHANNELS;
        for stage in &STAGES {
            for repeat in 0..stage.repeats {
                let prefix = format!("_blocks.{}", blocks.len());
                let stride = if repeat == 0 { stage.stride } else { 1 };
                let hidden = in_channels * stage.expand_ratio;
                let expand = (stage.expand_ratio != 1)
                    .then(|| {
                        let conv = format!("{prefix}._expand_conv");
                        ConvBn::load(weights, &conv, &format!("{prefix}._bn0"), [hidden, in_channels, 1, 1, 1], device)
                    })
                    .transpose()?;
                let depthwise = ConvBn::load(
                    weights,
                    &format!("{prefix}._depthwise_conv"),
                    &format!("{prefix}._bn1"),
                    [hidden, hidden, stage.kernel, stride, hidden],
                    device,
                )?;
                let project = ConvBn::load(
                    weights,
                    &format!("{prefix}._project_conv"),
                    &format!("{prefix}._bn2"),
                    [stage.out_channels, hidden, 1, 1, 1],
                    device,
                )?;
                let residual = stride == 1 && in_channels == stage.out_channels;
                blocks.push(MbConv { expand, depthwise, project, residual });
                in_channels = stage.out_channels;
            }
        }
        let head = ConvBn::load(weights, "_conv_head", "_bn1", [HEAD_CHANNELS, in_channels, 1, 1, 1], device)?;
        let fc = weights.get("_fc.weight", &[CLASSES, HEAD_CHANNELS])?;
        let fc_weight = Tensor::<B, 2>::from_data(TensorData::new(fc.to_vec(), [CLASSES, HEAD_CHANNELS]), device);
        let fc_bias =
            Tensor::from_data(TensorData::new(weights.get("_fc.bias", &[CLASSES])?.to_vec(), [CLASSES]), device);
        Ok(EfficientNetLite0 { stem, blocks, head, fc_weight: fc_weight.transpose(), fc_bias })
    }

    /// Logits `[N, 1000]` of preprocessed images `[N, 3, 224, 224]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = relu6(self.stem.forward(images));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = relu6(self.head.forward(x));
        let [n, c, h, w] = x.dims();
        let pooled = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        linear(pooled, self.fc_weight.clone(), Some(self.fc_bias.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // Stride 1 keeps the size: (k - 1) split evenly.
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        // Stride 2 on an even size needs k - 2, the larger half after.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        // On an odd size, k - 1 again.
        assert_eq!(same_padding(7, 3, 2), (1, 1));
        assert_eq!(same_padding(10, 1, 1), (0, 0));
    }
}
