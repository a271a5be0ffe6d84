//! Small layers whose weights are drawn from the caller's [`SplitMix`], so
//! that a model is a function of its seed (see `rng.rs`). Shapes follow
//! PyTorch for convs (`[out, in/groups, kh, kw]`); linear weights are
//! `[in, out]`, the layout burn's `linear` multiplies by.

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use crate::linear_op::{linear, LinearBackend};
use crate::norm_op::{layer_norm, LayerNormBackend};
use crate::patch_op::{patches, PatchBackend};
use crate::rng::SplitMix;

/// A trainable parameter holding `values`.
pub fn param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// A parameter that never receives a gradient: recorded in checkpoints, but
/// skipped by autodiff and therefore by the optimizer.
pub fn frozen<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), Tensor::from_data(TensorData::new(values, shape), device))
}

pub fn filled<B: Backend, const D: usize>(value: f32, shape: [usize; D], device: &B::Device) -> Param<Tensor<B, D>> {
    param(vec![value; shape.iter().product()], shape, device)
}

/// How weights of a layer are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// timm's `trunc_normal_(std=std)`, as ConvNeXt uses for convs and
    /// linears; biases zero.
    TruncNormal(f32),
    /// Kaiming normal with fan-out (torchvision MobileNetV2 convs); biases zero.
    KaimingFanOut,
    /// Normal with this standard deviation (torchvision MobileNetV2
    /// classifier); biases zero.
    Normal(f32),
    /// PyTorch's own `Conv2d` / `Linear` initialisation: weights and biases
    /// uniform in `±1/sqrt(fan_in)` (`kaiming_uniform_(a=sqrt(5))`).
    PytorchDefault,
}

impl WeightInit {
    /// `n` weights of a layer with the given fans.
    pub fn draw(self, n: usize, fan_in: usize, fan_out: usize, rng: &mut SplitMix) -> Vec<f32> {
        match self {
            WeightInit::TruncNormal(std) => (0..n).map(|_| rng.trunc_normal(std)).collect(),
            WeightInit::KaimingFanOut => {
                let std = (2.0 / fan_out as f32).sqrt();
                (0..n).map(|_| rng.normal() * std).collect()
            }
            WeightInit::Normal(std) => (0..n).map(|_| rng.normal() * std).collect(),
            WeightInit::PytorchDefault => uniform_fan_in(n, fan_in, rng),
        }
    }

    /// `n` biases of a layer with `fan_in` inputs per output.
    pub fn bias(self, n: usize, fan_in: usize, rng: &mut SplitMix) -> Vec<f32> {
        match self {
            WeightInit::PytorchDefault => uniform_fan_in(n, fan_in, rng),
            _ => vec![0.0; n],
        }
    }
}

fn uniform_fan_in(n: usize, fan_in: usize, rng: &mut SplitMix) -> Vec<f32> {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    (0..n).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect()
}

/// `y = x W + b` over the last axis.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Dense<B> {
    pub fn new(d_in: usize, d_out: usize, init: WeightInit, rng: &mut SplitMix, device: &B::Device) -> Self {
        let w = init.draw(d_in * d_out, d_in, d_out, rng);
        let b = init.bias(d_out, d_in, rng);
        Dense { weight: param(w, [d_in, d_out], device), bias: param(b, [d_out], device) }
    }

    /// The weight and bias.
    pub fn params(&self) -> (Tensor<B, 2>, Tensor<B, 1>) {
        (self.weight.val(), self.bias.val())
    }

    /// The weight and bias of this layer followed by a per-output scale
    /// (such as ConvNeXt's layer scale): `W diag(scale)` and `b * scale`, so
    /// that the product touches the small weight instead of the large
    /// output, forward and backward, and autodiff gives `scale` the same
    /// gradient.
    pub fn scaled_params(&self, scale: Tensor<B, 1>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let out = scale.dims()[0];
        (self.weight.val() * scale.clone().reshape([1, out]), self.bias.val() * scale)
    }
}

impl<B: LinearBackend> Dense<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.weight.val(), self.bias.val())
    }
}

/// A dense (groups = 1) convolution with padding `k/2`.
#[derive(Module, Debug)]
pub struct Conv<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
    pub padding: usize,
}

impl<B: Backend> Conv<B> {
    /// `padded`: pad by `k/2` (3x3 stems) or not at all (patchify stems).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padded: bool,
        bias: bool,
        init: WeightInit,
        rng: &mut SplitMix,
        device: &B::Device,
    ) -> Self {
        let taps = kernel * kernel;
        let w = init.draw(c_out * c_in * taps, c_in * taps, c_out * taps, rng);
        Conv {
            weight: param(w, [c_out, c_in, kernel, kernel], device),
            bias: bias.then(|| param(init.bias(c_out, c_in * taps, rng), [c_out], device)),
            stride,
            padding: if padded { kernel / 2 } else { 0 },
        }
    }
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        conv2d(x, self.weight.val(), self.bias.as_ref().map(Param::val), options)
    }
}

impl<B: LinearBackend + PatchBackend> Conv<B> {
    /// A patchify convolution (stride = kernel, no padding, as ConvNeXt's
    /// stems and downsampling layers) on `[N, H, W, C]` in and out, as one
    /// matrix product of the `k*k*C` patches with the weight: the output is
    /// channels-last as it comes, and the product runs on the fast linear
    /// operation instead of burn's channels-first convolution and the copies
    /// to and from it. Rows and columns past the last whole patch are
    /// dropped, as the convolution drops them.
    pub fn forward_patches(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        let [out, _, k, _] = self.weight.dims();
        debug_assert!(self.stride == k && self.padding == 0, "not a patchify convolution");
        let (oh, ow) = (h / k, w / k);
        let rows = patches(x, k);
        // [out, in, ky, kx] -> [ky, kx, in] x out, the patches' order.
        let weight = self.weight.val().permute([2, 3, 1, 0]).reshape([k * k * c, out]);
        let bias = match &self.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([out], &rows.device()),
        };
        linear(rows, weight, bias).reshape([n, oh, ow, out])
    }
}

/// LayerNorm over the last axis (eps 1e-6 as in ConvNeXt).
#[derive(Module, Debug)]
pub struct LastAxisNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
}

const LAYER_NORM_EPS: f32 = 1e-6;

impl<B: Backend> LastAxisNorm<B> {
    pub fn new(channels: usize, device: &B::Device) -> Self {
        LastAxisNorm { gamma: filled(1.0, [channels], device), beta: filled(0.0, [channels], device) }
    }

    /// Scale, shift and epsilon.
    pub fn params(&self) -> (Tensor<B, 1>, Tensor<B, 1>, f32) {
        (self.gamma.val(), self.beta.val(), LAYER_NORM_EPS)
    }
}

impl<B: LayerNormBackend> LastAxisNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        layer_norm(x, self.gamma.val(), self.beta.val(), LAYER_NORM_EPS)
    }
}

/// `[C]` as `[1, .., 1, C]` for broadcasting over the last axis.
pub fn broadcast_last<B: Backend, const D: usize>(v: Tensor<B, 1>) -> Tensor<B, D> {
    let c = v.dims()[0];
    let mut shape = [1usize; D];
    shape[D - 1] = c;
    v.reshape(shape)
}

/// Global average pooling `[N, C, H, W] -> [N, C]`.
pub fn global_mean<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// `[N, C, H, W]` as a contiguous `[N, H, W, C]`: copied once here, where a
/// permuted view would be copied by every operation that reads it, and
/// iterated element by element by burn's strided binary operations.
pub fn to_channels_last<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    // Merging the axes of a permuted view is what makes burn copy it.
    x.permute([0, 2, 3, 1]).reshape([n * h * w, c]).reshape([n, h, w, c])
}

/// Global average pooling `[N, H, W, C] -> [N, C]`.
pub fn global_mean_channels_last<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, h, w, c] = x.dims();
    x.reshape([n, h * w, c]).mean_dim(1).reshape([n, c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad};

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }

    fn random<const D: usize>(shape: [usize; D], rng: &mut SplitMix) -> Tensor<Ad, D> {
        let n = shape.iter().product();
        Tensor::from_data(
            TensorData::new((0..n).map(|_| rng.normal()).collect::<Vec<f32>>(), shape),
            &Default::default(),
        )
    }

    #[test]
    fn a_scaled_dense_layer_matches_scaling_its_output_with_the_same_gradients() {
        let mut rng = SplitMix::new(4);
        let device = Default::default();
        let dense = Dense::<Ad>::new(6, 5, WeightInit::PytorchDefault, &mut rng, &device);
        let scale = random([5], &mut rng).require_grad();
        let x = random([2, 3, 4, 6], &mut rng).require_grad();
        let r = random([2, 3, 4, 5], &mut rng);
        let plain = dense.forward(x.clone()) * scale.clone().reshape([1, 1, 1, 5]);
        let (weight, bias) = dense.scaled_params(scale.clone());
        let fused = linear(x.clone(), weight, bias);
        close(&to_vec(fused.clone()), &to_vec(plain.clone()), "output");
        let (gp, gf) = ((plain * r.clone()).sum().backward(), (fused * r).sum().backward());
        close(&to_vec(scale.grad(&gf).unwrap()), &to_vec(scale.grad(&gp).unwrap()), "scale gradient");
        close(&to_vec(x.grad(&gf).unwrap()), &to_vec(x.grad(&gp).unwrap()), "input gradient");
        let w = dense.weight.val();
        close(&to_vec(w.grad(&gf).unwrap()), &to_vec(w.grad(&gp).unwrap()), "weight gradient");
    }

    #[test]
    fn patchify_convolutions_match_burns_convolution_and_its_gradients() {
        let mut rng = SplitMix::new(5);
        let device = Default::default();
        // 7 px with 2x2 patches drops the last row and column, as the convolution does.
        for (c_in, c_out, k, side) in [(3, 8, 2, 8), (4, 6, 2, 7), (1, 5, 4, 12)] {
            let conv = Conv::<Ad>::new(c_in, c_out, k, k, false, true, WeightInit::PytorchDefault, &mut rng, &device);
            let x = random([2, c_in, side, side], &mut rng).require_grad();
            let want = to_channels_last(conv.forward(x.clone()));
            let got = conv.forward_patches(to_channels_last(x.clone()));
            assert_eq!(got.dims(), want.dims());
            close(&to_vec(got.clone()), &to_vec(want.clone()), "output");
            let r = random(want.dims(), &mut rng);
            let (gw, gg) = ((want * r.clone()).sum().backward(), (got * r).sum().backward());
            close(&to_vec(x.grad(&gg).unwrap()), &to_vec(x.grad(&gw).unwrap()), "input gradient");
            let w = conv.weight.val();
            close(&to_vec(w.grad(&gg).unwrap()), &to_vec(w.grad(&gw).unwrap()), "weight gradient");
            let b = conv.bias.as_ref().unwrap().val();
            close(&to_vec(b.grad(&gg).unwrap()), &to_vec(b.grad(&gw).unwrap()), "bias gradient");
        }
    }

    #[test]
    fn pytorch_default_init_is_uniform_in_the_fan_in_bound_for_weights_and_biases() {
        let mut rng = SplitMix::new(6);
        let device = Default::default();
        let conv = Conv::<Ad>::new(4, 300, 3, 1, true, true, WeightInit::PytorchDefault, &mut rng, &device);
        let bound = 1.0 / 36f32.sqrt();
        for (what, v) in [("weight", to_vec(conv.weight.val())), ("bias", to_vec(conv.bias.unwrap().val()))] {
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            // Uniform in ±bound: the largest of many draws is close to the bound.
            assert!(max <= bound && max > 0.95 * bound, "{what}: largest {max}, bound {bound}");
            let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
            assert!((var - bound * bound / 3.0).abs() < 0.15 * bound * bound / 3.0, "{what}: variance {var}");
        }
        let dense = Dense::<Ad>::new(64, 10, WeightInit::TruncNormal(0.02), &mut rng, &device);
        assert!(to_vec(dense.bias.val()).iter().all(|&b| b == 0.0), "ConvNeXt's biases start at zero");
    }
}
