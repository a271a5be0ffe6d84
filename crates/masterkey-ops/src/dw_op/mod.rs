//! Depthwise convolution (`[C, 1, k, k]` filters, padding `k/2`, stride 1 or
//! 2) on channels-first or channels-last activations, as a backend operation
//! with its own backward pass, through burn's backend extension: a trait whose
//! default bodies call burn's grouped convolution (so every backend, CUDA
//! included, has it), implemented with direct kernels for the CPU backend and
//! with a backward step for autodiff; on burn's GPU backends the kernels of
//! [`cube`] run it.
//!
//! Hand-written because burn 0.21's CPU backend runs a depthwise 7x7
//! forward + backward on 128x64x32x32 in about a second (grouped convolution
//! through a general path); the direct kernels ([`nchw`], [`nhwc`]) bring that
//! to a tenth (`masterkey bench dw`).

#[cfg(feature = "gpu")]
mod cube;
mod nchw;
mod nhwc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};

use crate::cpu::{values, Isa};

/// Memory order of the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`.
    ChannelsFirst,
    /// `[N, H, W, C]`: what LayerNorm and the MLP of a ConvNeXt block read.
    ChannelsLast,
}

impl Layout {
    /// `[N, C, H, W]` of a tensor in this layout.
    fn nchw(self, dims: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::ChannelsFirst => dims,
            Layout::ChannelsLast => [dims[0], dims[3], dims[1], dims[2]],
        }
    }

    /// The dimensions, in this layout, of a tensor of `[N, C, H, W]`.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    fn dims_from_nchw(self, [n, c, h, w]: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::ChannelsFirst => [n, c, h, w],
            Layout::ChannelsLast => [n, h, w, c],
        }
    }

    fn to_first<B: Backend>(self, t: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Layout::ChannelsFirst => t,
            Layout::ChannelsLast => B::float_permute(t, &[0, 3, 1, 2]),
        }
    }

    fn back_from_first<B: Backend>(self, t: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Layout::ChannelsFirst => t,
            Layout::ChannelsLast => B::float_permute(t, &[0, 2, 3, 1]),
        }
    }
}

/// A backend that runs depthwise convolutions; see the module docs. The
/// default bodies go through burn's grouped convolution on `[N, C, H, W]`.
pub trait DepthwiseBackend: Backend {
    /// `x`, `weight [C, 1, k, k]`, `bias [C]`: the output, in `layout`.
    fn depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        let options = conv_options(&weight, stride);
        layout.back_from_first::<Self>(Self::conv2d(layout.to_first::<Self>(x), weight, Some(bias), options))
    }

    /// The gradient of the input, given the gradient of the output.
    fn depthwise_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        let options = conv_options(&weight, stride);
        let (x, grad) = (layout.to_first::<Self>(x), layout.to_first::<Self>(output_grad));
        layout.back_from_first::<Self>(Self::conv2d_x_backward(x, weight, grad, options))
    }

    /// The gradient of the filters, given the gradient of the output.
    fn depthwise_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        let options = conv_options(&weight, stride);
        let (x, grad) = (layout.to_first::<Self>(x), layout.to_first::<Self>(output_grad));
        Self::conv2d_weight_backward(x, weight, grad, options)
    }

    /// The forward of [`depthwise_offset`]: the offset is already inside
    /// `weight`; it is an operand only so that autodiff can reach it.
    fn depthwise_offset(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        _offset: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        Self::depthwise(x, weight, bias, stride, layout)
    }

    /// `sum over images and positions of output_grad * box(x)` per channel
    /// (`[C]`), `box` summing each `kernel x kernel` window: the gradient of
    /// an offset added to every tap of a filter.
    fn depthwise_offset_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        let c = layout.nchw(x.shape().dims())[1];
        let ones = Self::float_ones([c, 1, kernel, kernel].into(), &Self::float_device(&x), x.dtype().into());
        let per_tap = Self::depthwise_weight_backward(x, ones, output_grad, stride, layout);
        let summed = Self::float_sum_dim(Self::float_sum_dim(per_tap, 3), 2);
        Self::float_reshape(summed, [c].into())
    }
}

fn conv_options<T: TensorMetadata>(weight: &T, stride: usize) -> ConvOptions<2> {
    let dims: [usize; 4] = weight.shape().dims();
    ConvOptions::new([stride; 2], [dims[2] / 2; 2], [1, 1], dims[0])
}

/// The bias gradient: the output gradient summed over all but the channel axis.
fn bias_backward<B: Backend>(
    x: FloatTensor<B>,
    bias: FloatTensor<B>,
    grad: FloatTensor<B>,
    layout: Layout,
) -> FloatTensor<B> {
    match layout {
        Layout::ChannelsFirst => B::conv2d_bias_backward(x, bias, grad),
        Layout::ChannelsLast => {
            let [n, h, w, c] = grad.shape().dims();
            let rows = B::float_reshape(grad, [n * h * w, c].into());
            B::float_reshape(B::float_sum_dim(rows, 0), [c].into())
        }
    }
}

/// Depthwise convolution of `x` (in `layout`) by `weight` plus `bias`,
/// differentiable in all three on an autodiff backend.
pub fn depthwise<B: DepthwiseBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    stride: usize,
    layout: Layout,
) -> Tensor<B, 4> {
    let float = |t: TensorPrimitive<B>| t.tensor();
    Tensor::new(TensorPrimitive::Float(B::depthwise(
        float(x.into_primitive()),
        float(weight.into_primitive()),
        float(bias.into_primitive()),
        stride,
        layout,
    )))
}

/// [`depthwise`] by filters `a * key + b` whose keys and `a` are frozen: the
/// constant combined `weight` is applied, and `offset` (`b`, `[C]`) learns
/// from box sums of the input, so no filter gradient is ever formed.
pub fn depthwise_offset<B: DepthwiseBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    offset: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    stride: usize,
    layout: Layout,
) -> Tensor<B, 4> {
    let float = |t: TensorPrimitive<B>| t.tensor();
    Tensor::new(TensorPrimitive::Float(B::depthwise_offset(
        float(x.into_primitive()),
        float(weight.detach().into_primitive()),
        float(offset.into_primitive()),
        float(bias.into_primitive()),
        stride,
        layout,
    )))
}

#[derive(Debug)]
struct DepthwiseBackward;

impl<B: DepthwiseBackend> Backward<B, 3> for DepthwiseBackward {
    type State = (NodeId, NodeId, NodeId, usize, Layout);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, stride, layout) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight);
        let bias = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(bias);
        if let Some(node) = node_x {
            let dx = B::depthwise_x_backward(x.clone(), weight.clone(), grad.clone(), stride, layout);
            grads.register::<B>(node.id, dx);
        }
        // A frozen filter is not tracked: its gradient is never formed.
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::depthwise_weight_backward(x.clone(), weight, grad.clone(), stride, layout));
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, bias_backward::<B>(x, bias, grad, layout));
        }
    }
}

#[derive(Debug)]
struct DepthwiseOffsetBackward;

impl<B: DepthwiseBackend> Backward<B, 4> for DepthwiseOffsetBackward {
    /// Input, weight and bias nodes, kernel size, stride, layout.
    type State = (NodeId, NodeId, NodeId, usize, usize, Layout);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, _constant_weight, node_offset, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, kernel, stride, layout) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight);
        let bias = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(bias);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::depthwise_x_backward(x.clone(), weight, grad.clone(), stride, layout));
        }
        if let Some(node) = node_offset {
            let db = B::depthwise_offset_backward(x.clone(), grad.clone(), kernel, stride, layout);
            grads.register::<B>(node.id, db);
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, bias_backward::<B>(x, bias, grad, layout));
        }
    }
}

impl<B: DepthwiseBackend, C: CheckpointStrategy> DepthwiseBackend for Autodiff<B, C> {
    fn depthwise_offset(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        let kernel = weight.primitive.shape().dims::<4>()[2];
        let forward = |x, weight, offset, bias| B::depthwise_offset(x, weight, offset, bias, stride, layout);
        match DepthwiseOffsetBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), offset.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let nodes = (prep.checkpoint(&x), prep.checkpoint(&weight), prep.checkpoint(&bias));
                let state = (nodes.0, nodes.1, nodes.2, kernel, stride, layout);
                prep.finish(state, forward(x.primitive, weight.primitive, offset.primitive, bias.primitive))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(x.primitive, weight.primitive, offset.primitive, bias.primitive))
            }
        }
    }

    fn depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        layout: Layout,
    ) -> FloatTensor<Self> {
        match DepthwiseBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), prep.checkpoint(&bias), stride, layout);
                prep.finish(state, B::depthwise(x.primitive, weight.primitive, bias.primitive, stride, layout))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::depthwise(x.primitive, weight.primitive, bias.primitive, stride, layout))
            }
        }
    }
}

/// The two kernel families' sizes for one operation on the CPU.
enum Sizes {
    First(nchw::Geometry),
    Last(nhwc::Shape, Isa),
}

impl Sizes {
    fn new(x_dims: [usize; 4], kernel: usize, stride: usize, layout: Layout) -> Self {
        match layout {
            Layout::ChannelsFirst => Sizes::First(nchw::Geometry::new(x_dims, kernel, stride)),
            Layout::ChannelsLast => Sizes::Last(nhwc::Shape::new(x_dims, kernel, stride), Isa::best()),
        }
    }

    fn of(x: &FlexTensor, weight: &FlexTensor, stride: usize, layout: Layout) -> Self {
        let (xd, wd): ([usize; 4], [usize; 4]) = (x.shape().dims(), weight.shape().dims());
        let c = layout.nchw(xd)[1];
        assert!(wd[0] == c && wd[1] == 1 && wd[3] == wd[2], "depthwise filters [C, 1, k, k], found {wd:?}");
        Sizes::new(xd, wd[2], stride, layout)
    }

    fn input(&self) -> [usize; 4] {
        match self {
            Sizes::First(g) => [g.n, g.c, g.h, g.w],
            Sizes::Last(s, _) => [s.n, s.h, s.w, s.c],
        }
    }

    fn output(&self) -> [usize; 4] {
        match self {
            Sizes::First(g) => [g.n, g.c, g.oh, g.ow],
            Sizes::Last(s, _) => [s.n, s.oh, s.ow, s.c],
        }
    }
}

impl DepthwiseBackend for Flex {
    fn depthwise(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, stride: usize, layout: Layout) -> FlexTensor {
        let sizes = Sizes::of(&x, &weight, stride, layout);
        let (x, weight, bias) = (values(&x), values(&weight), values(&bias));
        let out = match &sizes {
            Sizes::First(g) => nchw::forward(g, &x, &weight, &bias),
            Sizes::Last(s, isa) => nhwc::forward(*isa, s, &x, &weight, &bias),
        };
        tensor(out, sizes.output())
    }

    fn depthwise_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
        layout: Layout,
    ) -> FlexTensor {
        let sizes = Sizes::of(&x, &weight, stride, layout);
        let (weight, grad) = (values(&weight), values(&output_grad));
        let out = match &sizes {
            Sizes::First(g) => nchw::input_grad(g, &weight, &grad),
            Sizes::Last(s, isa) => nhwc::input_grad(*isa, s, &weight, &grad),
        };
        tensor(out, sizes.input())
    }

    fn depthwise_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
        layout: Layout,
    ) -> FlexTensor {
        let sizes = Sizes::of(&x, &weight, stride, layout);
        let k = weight.shape().dims::<4>()[2];
        let (x, grad) = (values(&x), values(&output_grad));
        let out = match &sizes {
            Sizes::First(g) => nchw::filter_grad(g, &x, &grad),
            Sizes::Last(s, isa) => nhwc::filter_grad(*isa, s, &x, &grad),
        };
        let c = out.len() / (k * k);
        tensor(out, [c, 1, k, k])
    }

    fn depthwise_offset_backward(
        x: FlexTensor,
        output_grad: FlexTensor,
        kernel: usize,
        stride: usize,
        layout: Layout,
    ) -> FlexTensor {
        let sizes = Sizes::new(x.shape().dims(), kernel, stride, layout);
        let (x, grad) = (values(&x), values(&output_grad));
        let out = match &sizes {
            Sizes::First(g) => nchw::offset_grad(g, &x, &grad),
            Sizes::Last(s, isa) => nhwc::offset_grad(*isa, s, &x, &grad),
        };
        let c = out.len();
        tensor(out, [c])
    }
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::module::conv2d;
    use masterkey_core::rng::SplitMix;

    /// Shapes with an uneven image, one narrower than the filter, one with
    /// more channels than a vector holds but not a whole number of vectors,
    /// and one exactly an AVX-512 vector wide (whole rows copied at once).
    const SHAPES: [(usize, usize, usize, usize); 4] = [(2, 3, 9, 8), (1, 2, 5, 2), (2, 19, 11, 13), (3, 16, 6, 7)];

    fn permuted<B: Backend>(t: Tensor<B, 4>, layout: Layout, back: bool) -> Tensor<B, 4> {
        match (layout, back) {
            (Layout::ChannelsFirst, _) => t,
            (Layout::ChannelsLast, false) => t.permute([0, 2, 3, 1]),
            (Layout::ChannelsLast, true) => t.permute([0, 3, 1, 2]),
        }
    }

    /// The direct kernels, in both layouts, against a naive f64 loop for the
    /// filter gradient and against burn's own grouped convolution for the rest.
    #[test]
    fn forward_and_every_gradient_match_the_references() {
        forward_and_every_gradient_match_the_references_on::<Flex>(&Default::default());
    }

    /// What [`forward_and_every_gradient_match_the_references`] checks, for
    /// the operation of backend `X`; the references run on the CPU.
    pub(super) fn forward_and_every_gradient_match_the_references_on<X: DepthwiseBackend>(device: &X::Device) {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for (n, c, h, w) in SHAPES {
                for k in [3, 5, 7] {
                    for s in [1, 2] {
                        let what = format!("{layout:?} n{n} c{c} {h}x{w} k{k} s{s}");
                        check_against_references::<Autodiff<X>>(layout, [n, c, h, w], k, s, device, &what);
                    }
                }
            }
        }
    }

    fn check_against_references<B: DepthwiseBackend + AutodiffBackend>(
        layout: Layout,
        [n, c, h, w]: [usize; 4],
        k: usize,
        s: usize,
        device: &B::Device,
        what: &str,
    ) {
        let mut rng = SplitMix::new((100 * k + 10 * s + w + c) as u64);
        let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
        let (xs, ws, bs) = (draw(n * c * h * w), draw(c * k * k), draw(c));
        let make = |v: &[f32], shape: [usize; 4]| {
            Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), shape), device).require_grad()
        };
        let cpu = Default::default();
        let make_ref = |v: &[f32], shape: [usize; 4]| {
            Tensor::<Ad, 4>::from_data(TensorData::new(v.to_vec(), shape), &cpu).require_grad()
        };
        let (x, wt) = (make(&xs, [n, c, h, w]), make(&ws, [c, 1, k, k]));
        let b = Tensor::<B, 1>::from_data(TensorData::new(bs.clone(), [c]), device).require_grad();
        let (x_ref, wt_ref) = (make_ref(&xs, [n, c, h, w]), make_ref(&ws, [c, 1, k, k]));
        let b_ref = Tensor::<Ad, 1>::from_data(TensorData::new(bs.clone(), [c]), &cpu).require_grad();

        let out = depthwise(permuted(x.clone(), layout, false), wt.clone(), b.clone(), s, layout);
        let out = permuted(out, layout, true);
        let options = ConvOptions::new([s; 2], [k / 2; 2], [1, 1], c);
        let reference = conv2d(x_ref.clone(), wt_ref.clone(), Some(b_ref.clone()), options);
        assert_eq!(out.dims(), reference.dims(), "{what}");
        let [_, _, oh, ow] = out.dims();
        let rs = draw(n * c * oh * ow);
        let r = Tensor::<B, 4>::from_data(TensorData::new(rs.clone(), [n, c, oh, ow]), device);
        let r_ref = Tensor::<Ad, 4>::from_data(TensorData::new(rs.clone(), [n, c, oh, ow]), &cpu);
        close(&to_vec(out.clone()), &to_vec(reference.clone()), &format!("{what} forward"));

        let grads = (out * r).sum().backward();
        let grads_ref = (reference * r_ref).sum().backward();
        let grad_of = |t: &Tensor<B, 4>| to_vec(t.grad(&grads).expect("a gradient"));
        let grad_ref = to_vec(x_ref.grad(&grads_ref).expect("a gradient"));
        close(&grad_of(&x), &grad_ref, &format!("{what} input grad"));
        close(&to_vec(b.grad(&grads).unwrap()), &to_vec(b_ref.grad(&grads_ref).unwrap()), &format!("{what} bias"));

        let pad = (k / 2) as isize;
        let mut naive = vec![0.0f64; c * k * k];
        for (i, g) in naive.iter_mut().enumerate() {
            let (ch, ky, kx) = (i / (k * k), (i / k) % k, i % k);
            for img in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * s + ky) as isize - pad;
                        let ix = (ox * s + kx) as isize - pad;
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let xv = xs[((img * c + ch) * h + iy as usize) * w + ix as usize] as f64;
                            *g += xv * rs[((img * c + ch) * oh + oy) * ow + ox] as f64;
                        }
                    }
                }
            }
        }
        let naive: Vec<f32> = naive.iter().map(|&v| v as f32).collect();
        close(&grad_of(&wt), &naive, &format!("{what} filter grad"));
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }

    fn flex(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// Every instruction set this CPU runs (the portable one included) gives
    /// what the channels-first kernels give on the same values.
    #[test]
    fn every_instruction_set_agrees_with_the_channels_first_kernels() {
        for (n, c, h, w) in SHAPES {
            for k in [3, 5, 7] {
                for s in [1, 2] {
                    let mut rng = SplitMix::new((7 * k + s + c) as u64);
                    let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
                    let (x, weight, bias) = (draw(n * c * h * w), draw(c * k * k), draw(c));
                    let g = nchw::Geometry::new([n, c, h, w], k, s);
                    let grad = draw(n * c * g.oh * g.ow);
                    let last = |v: &[f32], [n, c, h, w]: [usize; 4]| {
                        values(&flex(v.to_vec(), [n, c, h, w]).permute(&[0, 2, 3, 1])).to_vec()
                    };
                    let first = |v: Vec<f32>, [n, h, w, c]: [usize; 4]| {
                        values(&flex(v, [n, h, w, c]).permute(&[0, 3, 1, 2])).to_vec()
                    };
                    let (x_last, grad_last) = (last(&x, [n, c, h, w]), last(&grad, [n, c, g.oh, g.ow]));
                    let shape = nhwc::Shape::new([n, h, w, c], k, s);
                    for isa in Isa::available() {
                        let what = format!("{isa:?} n{n} c{c} {h}x{w} k{k} s{s}");
                        let out = first(nhwc::forward(isa, &shape, &x_last, &weight, &bias), [n, g.oh, g.ow, c]);
                        close(&out, &nchw::forward(&g, &x, &weight, &bias), &format!("{what} forward"));
                        let dx = first(nhwc::input_grad(isa, &shape, &weight, &grad_last), [n, h, w, c]);
                        close(&dx, &nchw::input_grad(&g, &weight, &grad), &format!("{what} input grad"));
                        let dw = nhwc::filter_grad(isa, &shape, &x_last, &grad_last);
                        close(&dw, &nchw::filter_grad(&g, &x, &grad), &format!("{what} filter grad"));
                        let db = nhwc::offset_grad(isa, &shape, &x_last, &grad_last);
                        close(&db, &nchw::offset_grad(&g, &x, &grad), &format!("{what} offset grad"));
                    }
                }
            }
        }
    }

    /// The box-sum offset gradient equals the filter gradient summed over
    /// the taps (what an offset added to every tap receives), in both layouts.
    #[test]
    fn offset_gradient_is_the_filter_gradient_summed_over_taps() {
        offset_gradient_is_the_filter_gradient_summed_over_taps_on::<Flex>(&Default::default());
    }

    pub(super) fn offset_gradient_is_the_filter_gradient_summed_over_taps_on<X: DepthwiseBackend>(device: &X::Device) {
        let primitive = |v: Vec<f32>, shape: [usize; 4], layout: Layout| {
            let t = Tensor::<X, 4>::from_data(TensorData::new(v, shape), device);
            permuted(t, layout, false).into_primitive().tensor()
        };
        let read = |t: FloatTensor<X>| {
            let flat = X::float_reshape(t.clone(), [t.shape().num_elements()].into());
            to_vec(Tensor::<X, 1>::from_primitive(TensorPrimitive::Float(flat)))
        };
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for (n, c, h, w) in SHAPES {
                for k in [3, 5, 7] {
                    for s in [1, 2] {
                        let mut rng = SplitMix::new((1000 + 100 * k + 10 * s + w) as u64);
                        let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
                        let x = primitive(draw(n * c * h * w), [n, c, h, w], layout);
                        let ones = Tensor::<X, 4>::ones([c, 1, k, k], device).into_primitive().tensor();
                        let out = nchw::Geometry::new([n, c, h, w], k, s);
                        let grad = primitive(draw(n * c * out.oh * out.ow), [n, c, out.oh, out.ow], layout);
                        let per_tap = X::depthwise_weight_backward(x.clone(), ones, grad.clone(), s, layout);
                        let summed: Vec<f32> = read(per_tap).chunks_exact(k * k).map(|t| t.iter().sum()).collect();
                        let boxed = X::depthwise_offset_backward(x, grad, k, s, layout);
                        close(&read(boxed), &summed, &format!("{layout:?} n{n} c{c} {h}x{w} k{k} s{s}"));
                    }
                }
            }
        }
    }

    #[test]
    fn a_frozen_filter_gets_no_gradient() {
        let device = Default::default();
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let x = Tensor::<Ad, 4>::ones([1, 2, 6, 2], &device).require_grad();
            let filter = Tensor::<Ad, 4>::ones([2, 1, 3, 3], &device);
            let bias = Tensor::<Ad, 1>::zeros([2], &device).require_grad();
            let grads = depthwise(x.clone(), filter.clone(), bias.clone(), 1, layout).sum().backward();
            assert!(filter.grad(&grads).is_none());
            assert!(x.grad(&grads).is_some() && bias.grad(&grads).is_some());
        }
    }
}
