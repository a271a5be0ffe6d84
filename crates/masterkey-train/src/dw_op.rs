//! Depthwise convolution (`[C, 1, k, k]` filters, padding `k/2`, stride 1 or
//! 2) as a backend operation with its own backward pass, through burn's
//! backend extension: a trait whose default bodies call burn's grouped
//! convolution (so every backend, CUDA included, has it), implemented with
//! direct kernels for the CPU backend and with a backward step for autodiff.
//!
//! Hand-written because burn 0.21's CPU backend runs a depthwise 7x7
//! forward + backward on 128x64x32x32 in about a second (grouped convolution
//! through a general path); the direct kernels below (one channel plane per
//! task, zero-padded so the inner loops need no bounds, AVX2 intrinsics for
//! stride 1) bring that to ~0.2 s (`masterkey bench dw`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

/// A backend that runs depthwise convolutions; see the module docs.
pub trait DepthwiseBackend: Backend {
    /// `x [N, C, H, W]`, `weight [C, 1, k, k]`, `bias [C]`: `[N, C, OH, OW]`.
    fn depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let options = conv_options(&weight, stride);
        Self::conv2d(x, weight, Some(bias), options)
    }

    /// The gradient of the input, given the gradient of the output.
    fn depthwise_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let options = conv_options(&weight, stride);
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// The gradient of the filters, given the gradient of the output.
    fn depthwise_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let options = conv_options(&weight, stride);
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }

    /// The forward of [`depthwise_offset`]: the offset is already inside
    /// `weight`; it is an operand only so that autodiff can reach it.
    fn depthwise_offset(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        _offset: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        Self::depthwise(x, weight, bias, stride)
    }

    /// `sum over images and positions of output_grad * box(x)` per channel
    /// (`[C]`), `box` summing each `kernel x kernel` window: the gradient of
    /// an offset added to every tap of a filter.
    fn depthwise_offset_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
    ) -> FloatTensor<Self> {
        let c = x.shape().dims::<4>()[1];
        let ones = Self::float_ones([c, 1, kernel, kernel].into(), &Self::float_device(&x), x.dtype().into());
        let per_tap = Self::depthwise_weight_backward(x, ones, output_grad, stride);
        let summed = Self::float_sum_dim(Self::float_sum_dim(per_tap, 3), 2);
        Self::float_reshape(summed, [c].into())
    }
}

fn conv_options<T: TensorMetadata>(weight: &T, stride: usize) -> ConvOptions<2> {
    let dims: [usize; 4] = weight.shape().dims();
    ConvOptions::new([stride; 2], [dims[2] / 2; 2], [1, 1], dims[0])
}

/// Depthwise convolution of `x` by `weight` plus `bias`, differentiable in
/// all three on an autodiff backend.
pub fn depthwise<B: DepthwiseBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    stride: usize,
) -> Tensor<B, 4> {
    let float = |t: TensorPrimitive<B>| t.tensor();
    Tensor::new(TensorPrimitive::Float(B::depthwise(
        float(x.into_primitive()),
        float(weight.into_primitive()),
        float(bias.into_primitive()),
        stride,
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
) -> Tensor<B, 4> {
    let float = |t: TensorPrimitive<B>| t.tensor();
    Tensor::new(TensorPrimitive::Float(B::depthwise_offset(
        float(x.into_primitive()),
        float(weight.detach().into_primitive()),
        float(offset.into_primitive()),
        float(bias.into_primitive()),
        stride,
    )))
}

#[cfg(feature = "cuda")]
impl DepthwiseBackend for burn::backend::Cuda {}

#[derive(Debug)]
struct DepthwiseBackward;

impl<B: DepthwiseBackend> Backward<B, 3> for DepthwiseBackward {
    type State = (NodeId, NodeId, NodeId, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, stride) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight);
        let bias = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(bias);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::depthwise_x_backward(x.clone(), weight.clone(), grad.clone(), stride));
        }
        // A frozen filter is not tracked: its gradient is never formed.
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::depthwise_weight_backward(x.clone(), weight, grad.clone(), stride));
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, B::conv2d_bias_backward(x, bias, grad));
        }
    }
}

#[derive(Debug)]
struct DepthwiseOffsetBackward;

impl<B: DepthwiseBackend> Backward<B, 4> for DepthwiseOffsetBackward {
    /// Input, weight and bias nodes, kernel size, stride.
    type State = (NodeId, NodeId, NodeId, usize, usize);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, _constant_weight, node_offset, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, kernel, stride) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight);
        let bias = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(bias);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::depthwise_x_backward(x.clone(), weight, grad.clone(), stride));
        }
        if let Some(node) = node_offset {
            grads.register::<B>(node.id, B::depthwise_offset_backward(x.clone(), grad.clone(), kernel, stride));
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, B::conv2d_bias_backward(x, bias, grad));
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
    ) -> FloatTensor<Self> {
        let kernel = weight.primitive.shape().dims::<4>()[2];
        let forward = |x, weight, offset, bias| B::depthwise_offset(x, weight, offset, bias, stride);
        match DepthwiseOffsetBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), offset.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), prep.checkpoint(&bias), kernel, stride);
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
    ) -> FloatTensor<Self> {
        match DepthwiseBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), prep.checkpoint(&bias), stride);
                prep.finish(state, B::depthwise(x.primitive, weight.primitive, bias.primitive, stride))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::depthwise(x.primitive, weight.primitive, bias.primitive, stride))
            }
        }
    }
}

impl DepthwiseBackend for Flex {
    fn depthwise(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, stride: usize) -> FlexTensor {
        let geometry = Geometry::of(&x, &weight, stride);
        let (x, weight, bias) = (values(&x), values(&weight), values(&bias));
        let mut out = vec![0.0f32; geometry.n * geometry.c * geometry.out_plane()];
        out.par_chunks_mut(geometry.out_plane()).zip(x.par_chunks(geometry.in_plane())).enumerate().for_each(
            |(plane, (out, x))| {
                let c = plane % geometry.c;
                out.fill(bias[c]);
                simd::correlate_plane(&geometry, &geometry.padded(x), geometry.filter(&weight, c), out);
            },
        );
        tensor(out, [geometry.n, geometry.c, geometry.oh, geometry.ow])
    }

    fn depthwise_x_backward(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, stride: usize) -> FlexTensor {
        let geometry = Geometry::of(&x, &weight, stride);
        let (weight, grad) = (values(&weight), values(&output_grad));
        // The input gradient of a stride-1 correlation is the correlation of
        // the output gradient with the filters turned by 180 degrees, on the
        // same geometry: turned once here, not per image.
        let turned: Vec<f32> =
            weight.chunks_exact(geometry.k * geometry.k).flat_map(|f| f.iter().rev()).copied().collect();
        let mut out = vec![0.0f32; geometry.n * geometry.c * geometry.in_plane()];
        out.par_chunks_mut(geometry.in_plane()).zip(grad.par_chunks(geometry.out_plane())).enumerate().for_each(
            |(plane, (out, grad))| {
                // Written before it is read: a fresh zeroed allocation read
                // first maps the shared zero page, and every first write then
                // costs a copy-on-write fault with a TLB shootdown.
                out.fill(0.0);
                let c = plane % geometry.c;
                if stride == 1 {
                    simd::correlate_plane(&geometry, &geometry.padded(grad), geometry.filter(&turned, c), out);
                } else {
                    simd::input_grad_plane(&geometry, grad, geometry.filter(&weight, c), out);
                }
            },
        );
        tensor(out, [geometry.n, geometry.c, geometry.h, geometry.w])
    }

    fn depthwise_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
    ) -> FlexTensor {
        let geometry = Geometry::of(&x, &weight, stride);
        let (x, grad) = (values(&x), values(&output_grad));
        let taps = geometry.k * geometry.k;
        let mut out = vec![0.0f32; geometry.c * taps];
        // One task per channel, images in order: the sums do not depend on the thread count.
        out.par_chunks_mut(taps).enumerate().for_each(|(c, out)| {
            let mut acc = vec![0.0f64; taps];
            for n in 0..geometry.n {
                let plane = n * geometry.c + c;
                let x = geometry.padded(&x[plane * geometry.in_plane()..][..geometry.in_plane()]);
                let grad = geometry.blocked(&grad[plane * geometry.out_plane()..][..geometry.out_plane()]);
                simd::weight_grad_plane(&geometry, &x, &grad, &mut acc);
            }
            out.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
        });
        tensor(out, [geometry.c, 1, geometry.k, geometry.k])
    }

    fn depthwise_offset_backward(x: FlexTensor, output_grad: FlexTensor, kernel: usize, stride: usize) -> FlexTensor {
        let dims: [usize; 4] = x.shape().dims();
        let geometry = Geometry::new(dims, kernel, stride);
        let (x, grad) = (values(&x), values(&output_grad));
        let mut out = vec![0.0f32; geometry.c];
        // One task per channel, images in order, as for the filter gradient.
        out.par_iter_mut().enumerate().for_each(|(c, out)| {
            let mut acc = 0.0f64;
            for n in 0..geometry.n {
                let plane = n * geometry.c + c;
                let boxed =
                    geometry.box_sums(&geometry.padded(&x[plane * geometry.in_plane()..][..geometry.in_plane()]));
                let grad = &grad[plane * geometry.out_plane()..][..geometry.out_plane()];
                acc += boxed.iter().zip(grad).map(|(&b, &g)| b as f64 * g as f64).sum::<f64>();
            }
            *out = acc as f32;
        });
        tensor(out, [geometry.c])
    }
}

/// The values of a CPU tensor in row-major order.
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) if t.is_contiguous() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("f32 tensor").to_vec()),
    }
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Output columns computed together: one AVX2 vector.
const LANES: usize = 8;

/// Sizes of one depthwise convolution.
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn of(x: &FlexTensor, weight: &FlexTensor, stride: usize) -> Self {
        let (xd, wd): ([usize; 4], [usize; 4]) = (x.shape().dims(), weight.shape().dims());
        assert!(wd[0] == xd[1] && wd[1] == 1 && wd[3] == wd[2], "depthwise filters [C, 1, k, k]");
        Geometry::new(xd, wd[2], stride)
    }

    fn new([n, c, h, w]: [usize; 4], k: usize, stride: usize) -> Self {
        assert!(k % 2 == 1, "depthwise kernels are odd, found {k}");
        let out = |len: usize| (len + 2 * (k / 2) - k) / stride + 1;
        Geometry { n, c, h, w, k, stride, oh: out(h), ow: out(w) }
    }

    /// The sum of every `k x k` window of a [`Self::padded`] plane that an
    /// output reads (`oh x ow`): a row pass, then a column pass.
    fn box_sums(&self, padded: &[f32]) -> Vec<f32> {
        let (hp, wp) = self.padded_dims();
        let (k, s) = (self.k, self.stride);
        let mut across = vec![0.0f32; hp * self.ow];
        for (row, sums) in padded.chunks_exact(wp).zip(across.chunks_exact_mut(self.ow)) {
            for (ox, sum) in sums.iter_mut().enumerate() {
                *sum = row[ox * s..][..k].iter().sum();
            }
        }
        let mut out = vec![0.0f32; self.oh * self.ow];
        for (oy, sums) in out.chunks_exact_mut(self.ow).enumerate() {
            for row in across.chunks_exact(self.ow).skip(oy * s).take(k) {
                sums.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
            }
        }
        out
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    fn filter<'a>(&self, weight: &'a [f32], c: usize) -> &'a [f32] {
        &weight[c * self.k * self.k..][..self.k * self.k]
    }

    /// The input row of output row `oy` and filter row `ky`, if inside.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.k / 2).filter(|&iy| iy < self.h)
    }

    /// The outputs `ox` whose input column `ox * stride + kx - k/2` is
    /// inside, and that column for the first of them; `None` if none is.
    fn columns(&self, kx: usize) -> Option<(std::ops::Range<usize>, usize)> {
        let pad = self.k / 2;
        let first = pad.saturating_sub(kx).div_ceil(self.stride);
        let end = (self.w + pad).saturating_sub(kx).div_ceil(self.stride).min(self.ow);
        (first < end).then(|| (first..end, first * self.stride + kx - pad))
    }

    /// Output columns rounded up to whole vectors of [`LANES`].
    fn ow_blocked(&self) -> usize {
        self.ow.div_ceil(LANES) * LANES
    }

    /// Rows and columns of [`Self::padded`].
    fn padded_dims(&self) -> (usize, usize) {
        ((self.oh - 1) * self.stride + self.k, (self.ow_blocked() - 1) * self.stride + self.k)
    }

    /// An `h x w` plane with `k/2` zeros around it (and more on the right,
    /// so that every lane of the last vector of a row reads inside): the
    /// inner loops then need no bounds.
    fn padded(&self, plane: &[f32]) -> Vec<f32> {
        let (hp, wp) = self.padded_dims();
        let pad = self.k / 2;
        let mut out = vec![0.0f32; hp * wp];
        for (iy, row) in plane.chunks_exact(self.w).enumerate().take(hp.saturating_sub(pad)) {
            let cols = self.w.min(wp - pad);
            out[(iy + pad) * wp + pad..][..cols].copy_from_slice(&row[..cols]);
        }
        out
    }

    /// An `oh x ow` plane with its rows padded by zeros to [`Self::ow_blocked`].
    fn blocked(&self, plane: &[f32]) -> Vec<f32> {
        let owb = self.ow_blocked();
        let mut out = vec![0.0f32; self.oh * owb];
        for (row, from) in out.chunks_exact_mut(owb).zip(plane.chunks_exact(self.ow)) {
            row[..self.ow].copy_from_slice(from);
        }
        out
    }

    /// Adds the correlation of a [`Self::padded`] plane with `filter` to
    /// `out` (`oh x ow`): [`LANES`] outputs at a time, held in registers
    /// through all `k * k` taps.
    #[inline(always)]
    fn correlate_plane_auto(&self, padded: &[f32], filter: &[f32], out: &mut [f32]) {
        let (_, wp) = self.padded_dims();
        let (k, s) = (self.k, self.stride);
        for (oy, out) in out.chunks_exact_mut(self.ow).enumerate() {
            for (block, out) in out.chunks_mut(LANES).enumerate() {
                let mut acc = [0.0f32; LANES];
                for ky in 0..k {
                    let row = &padded[(oy * s + ky) * wp..][..wp];
                    for (kx, &tap) in filter[ky * k..][..k].iter().enumerate() {
                        let first = block * LANES * s + kx;
                        if s == 1 {
                            let v: &[f32; LANES] = row[first..first + LANES].try_into().expect("LANES values");
                            for l in 0..LANES {
                                acc[l] += tap * v[l];
                            }
                        } else {
                            for (l, a) in acc.iter_mut().enumerate() {
                                *a += tap * row[first + l * s];
                            }
                        }
                    }
                }
                out.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
            }
        }
    }

    #[inline(always)]
    fn input_grad_plane(&self, grad: &[f32], filter: &[f32], out: &mut [f32]) {
        for (oy, grad) in grad.chunks_exact(self.ow).enumerate() {
            for ky in 0..self.k {
                let Some(iy) = self.input_row(oy, ky) else { continue };
                let row = &mut out[iy * self.w..][..self.w];
                for kx in 0..self.k {
                    let tap = filter[ky * self.k + kx];
                    let Some((cols, start)) = self.columns(kx) else { continue };
                    let grad = &grad[cols];
                    if self.stride == 1 {
                        row[start..].iter_mut().zip(grad).for_each(|(o, &g)| *o += tap * g);
                    } else {
                        row[start..].iter_mut().step_by(self.stride).zip(grad).for_each(|(o, &g)| *o += tap * g);
                    }
                }
            }
        }
    }

    /// Adds one image's contribution to a channel's filter gradient, from
    /// its [`Self::padded`] input and [`Self::blocked`] output gradient: per
    /// tap, [`LANES`] partial sums in registers, then one f64 sum.
    #[inline(always)]
    fn weight_grad_plane_auto(&self, padded: &[f32], grad: &[f32], acc: &mut [f64]) {
        let (_, wp) = self.padded_dims();
        let (k, s, owb) = (self.k, self.stride, self.ow_blocked());
        for (tap, acc) in acc.iter_mut().enumerate() {
            let (ky, kx) = (tap / k, tap % k);
            let mut lanes = [0.0f32; LANES];
            for (oy, grad) in grad.chunks_exact(owb).enumerate() {
                let row = &padded[(oy * s + ky) * wp..][..wp];
                for (block, g) in grad.chunks_exact(LANES).enumerate() {
                    let first = block * LANES * s + kx;
                    if s == 1 {
                        let v: &[f32; LANES] = row[first..first + LANES].try_into().expect("LANES values");
                        for l in 0..LANES {
                            lanes[l] += g[l] * v[l];
                        }
                    } else {
                        for (l, a) in lanes.iter_mut().enumerate() {
                            *a += g[l] * row[first + l * s];
                        }
                    }
                }
            }
            *acc += lanes.iter().map(|&v| v as f64).sum::<f64>();
        }
    }
}

/// The plane kernels compiled twice: for AVX2 (eight lanes; chosen at run
/// time where the CPU has it) and for the build's baseline target.
mod simd {
    use super::Geometry;

    macro_rules! dispatch {
        ($name:ident, $avx2:ident ($($arg:ident: $ty:ty),*)) => {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn $avx2(g: &Geometry, $($arg: $ty),*) {
                g.$name($($arg),*)
            }

            pub(super) fn $name(g: &Geometry, $($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { $avx2(g, $($arg),*) };
                }
                g.$name($($arg),*)
            }
        };
    }

    dispatch!(correlate_plane_auto, correlate_plane_avx2(padded: &[f32], filter: &[f32], out: &mut [f32]));
    dispatch!(input_grad_plane, input_grad_plane_avx2(grad: &[f32], filter: &[f32], out: &mut [f32]));
    dispatch!(weight_grad_plane_auto, weight_grad_plane_avx2(padded: &[f32], grad: &[f32], acc: &mut [f64]));

    fn has_avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Stride 1, the common case, in AVX2 intrinsics where the CPU has
    /// them (the vectoriser leaves the tap loop scalar-heavy).
    pub(super) fn correlate_plane(g: &Geometry, padded: &[f32], filter: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if g.stride == 1 && has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA; the slices are checked inside.
            return unsafe { super::avx2::correlate_stride1(g, padded, filter, out) };
        }
        correlate_plane_auto(g, padded, filter, out)
    }

    pub(super) fn weight_grad_plane(g: &Geometry, padded: &[f32], grad: &[f32], acc: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if g.stride == 1 && has_avx2() {
            // SAFETY: as above.
            return unsafe { super::avx2::weight_grad_stride1(g, padded, grad, acc) };
        }
        weight_grad_plane_auto(g, padded, grad, acc)
    }
}

/// Stride-1 kernels in AVX2 intrinsics: raw pointers inside, because bounds
/// checks on every tap are what kept the vectorised version slow.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Geometry, LANES};

    /// Vectors of one output row computed together: independent multiply-add
    /// chains that hide the FMA latency.
    const GROUP: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn correlate_stride1(g: &Geometry, padded: &[f32], filter: &[f32], out: &mut [f32]) {
        let (hp, wp) = g.padded_dims();
        let (k, blocks) = (g.k, g.ow_blocked() / LANES);
        assert!(padded.len() >= hp * wp && filter.len() >= k * k && out.len() >= g.oh * g.ow);
        for oy in 0..g.oh {
            let mut block = 0;
            while block < blocks {
                let n = GROUP.min(blocks - block);
                let mut acc = [_mm256_setzero_ps(); GROUP];
                for ky in 0..k {
                    // SAFETY: row oy + ky < hp and columns up to blocks * LANES + k - 1 <= wp, by `padded_dims`.
                    unsafe {
                        let row = padded.as_ptr().add((oy + ky) * wp + block * LANES);
                        for kx in 0..k {
                            let tap = _mm256_set1_ps(*filter.get_unchecked(ky * k + kx));
                            for (j, acc) in acc.iter_mut().enumerate().take(n) {
                                *acc = _mm256_fmadd_ps(tap, _mm256_loadu_ps(row.add(j * LANES + kx)), *acc);
                            }
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(n) {
                    let mut lanes = [0.0f32; LANES];
                    // SAFETY: `lanes` holds LANES floats.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
                    let start = (block + j) * LANES;
                    let end = (start + LANES).min(g.ow);
                    for (o, v) in out[oy * g.ow + start..oy * g.ow + end].iter_mut().zip(lanes) {
                        *o += v;
                    }
                }
                block += n;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn weight_grad_stride1(g: &Geometry, padded: &[f32], grad: &[f32], acc: &mut [f64]) {
        let (hp, wp) = g.padded_dims();
        let (k, owb) = (g.k, g.ow_blocked());
        assert!(padded.len() >= hp * wp && grad.len() >= g.oh * owb && acc.len() >= k * k);
        for (tap, total) in acc.iter_mut().enumerate().take(k * k) {
            let (ky, kx) = (tap / k, tap % k);
            let mut sums = [_mm256_setzero_ps(); GROUP];
            for oy in 0..g.oh {
                // SAFETY: as in `correlate_stride1`; `grad` rows are `owb` long.
                unsafe {
                    let row = padded.as_ptr().add((oy + ky) * wp + kx);
                    let grad = grad.as_ptr().add(oy * owb);
                    for b in 0..owb / LANES {
                        let s = &mut sums[b % GROUP];
                        *s = _mm256_fmadd_ps(
                            _mm256_loadu_ps(grad.add(b * LANES)),
                            _mm256_loadu_ps(row.add(b * LANES)),
                            *s,
                        );
                    }
                }
            }
            let mut lanes = [0.0f32; LANES];
            for s in sums {
                // SAFETY: `lanes` holds LANES floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
                *total += lanes.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
    }
}

/// An autodiff backend whose training and evaluation passes both run
/// [`DepthwiseBackend`] operations.
pub trait DepthwiseAutodiffBackend: AutodiffBackend<InnerBackend: DepthwiseBackend> + DepthwiseBackend {}

impl<B> DepthwiseAutodiffBackend for B
where
    B: AutodiffBackend + DepthwiseBackend,
    B::InnerBackend: DepthwiseBackend,
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;
    use crate::testing::{to_vec, Ad};
    use burn::tensor::module::conv2d;

    /// The direct kernels against a naive f64 loop for the filter gradient
    /// and against burn's own grouped convolution for the rest, with an
    /// uneven image and one narrower than the filter.
    #[test]
    fn forward_and_every_gradient_match_the_references() {
        let device = Default::default();
        for (n, c, h, w) in [(2, 3, 9, 8), (1, 2, 5, 2)] {
            for k in [3, 5, 7] {
                for s in [1, 2] {
                    let mut rng = SplitMix::new((100 * k + 10 * s + w) as u64);
                    let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
                    let (xs, ws, bs) = (draw(n * c * h * w), draw(c * k * k), draw(c));
                    let make = |v: &[f32], shape: [usize; 4]| {
                        Tensor::<Ad, 4>::from_data(TensorData::new(v.to_vec(), shape), &device).require_grad()
                    };
                    let bias = || Tensor::<Ad, 1>::from_data(TensorData::new(bs.clone(), [c]), &device).require_grad();
                    let (x, wt, b) = (make(&xs, [n, c, h, w]), make(&ws, [c, 1, k, k]), bias());
                    let (x_ref, wt_ref, b_ref) = (make(&xs, [n, c, h, w]), make(&ws, [c, 1, k, k]), bias());

                    let out = depthwise(x.clone(), wt.clone(), b.clone(), s);
                    let options = ConvOptions::new([s; 2], [k / 2; 2], [1, 1], c);
                    let reference = conv2d(x_ref.clone(), wt_ref.clone(), Some(b_ref.clone()), options);
                    let what = format!("n{n} c{c} {h}x{w} k{k} s{s}");
                    assert_eq!(out.dims(), reference.dims(), "{what}");
                    let [_, _, oh, ow] = out.dims();
                    let rs = draw(n * c * oh * ow);
                    let r = Tensor::<Ad, 4>::from_data(TensorData::new(rs.clone(), [n, c, oh, ow]), &device);
                    close(&to_vec(out.clone()), &to_vec(reference.clone()), &format!("{what} forward"));

                    let grads = (out * r.clone()).sum().backward();
                    let grads_ref = (reference * r).sum().backward();
                    let grad = |t: &Tensor<Ad, 4>, g| to_vec(t.grad(g).expect("a gradient"));
                    close(&grad(&x, &grads), &grad(&x_ref, &grads_ref), &format!("{what} input grad"));
                    close(&to_vec(b.grad(&grads).unwrap()), &to_vec(b_ref.grad(&grads_ref).unwrap()), &what);

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
                    close(&grad(&wt, &grads), &naive, &format!("{what} filter grad"));
                }
            }
        }
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// The box-sum offset gradient equals the filter gradient summed over
    /// the taps (what an offset added to every tap receives).
    #[test]
    fn offset_gradient_is_the_filter_gradient_summed_over_taps() {
        for (n, c, h, w) in [(2, 3, 9, 8), (1, 2, 5, 2)] {
            for k in [3, 5, 7] {
                for s in [1, 2] {
                    let mut rng = SplitMix::new((1000 + 100 * k + 10 * s + w) as u64);
                    let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
                    let x = FlexTensor::from_data(TensorData::new(draw(n * c * h * w), [n, c, h, w]));
                    let ones = FlexTensor::from_data(TensorData::new(vec![1.0f32; c * k * k], [c, 1, k, k]));
                    let g = Geometry::of(&x, &ones, s);
                    let grad = FlexTensor::from_data(TensorData::new(draw(n * c * g.oh * g.ow), [n, c, g.oh, g.ow]));
                    let per_tap = Flex::depthwise_weight_backward(x.clone(), ones, grad.clone(), s);
                    let summed: Vec<f32> = values(&per_tap).chunks_exact(k * k).map(|t| t.iter().sum()).collect();
                    let boxed = Flex::depthwise_offset_backward(x, grad, k, s);
                    close(&values(&boxed), &summed, &format!("n{n} c{c} {h}x{w} k{k} s{s}"));
                }
            }
        }
    }

    #[test]
    fn a_frozen_filter_gets_no_gradient() {
        let device = Default::default();
        let x = Tensor::<Ad, 4>::ones([1, 2, 6, 6], &device).require_grad();
        let filter = Tensor::<Ad, 4>::ones([2, 1, 3, 3], &device);
        let bias = Tensor::<Ad, 1>::zeros([2], &device).require_grad();
        let grads = depthwise(x.clone(), filter.clone(), bias.clone(), 1).sum().backward();
        assert!(filter.grad(&grads).is_none());
        assert!(x.grad(&grads).is_some() && bias.grad(&grads).is_some());
    }
}
