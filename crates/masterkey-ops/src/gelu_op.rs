//! GELU (`x * Φ(x)`, the exact, erf-based form ConvNeXt uses) and its
//! gradient as a backend operation, through burn's backend extension like
//! [`crate::dw_op`]: the default bodies are burn's own GELU, the CPU backend
//! gets a vectorised, multi-threaded version, autodiff a backward step.
//!
//! Hand-written because burn 0.21's CPU GELU calls libm's scalar `erff` on
//! one thread, forward and backward: an eighth of a training step of the
//! reference model (REFERENCE §5) went there. Here `erf` and `exp` are
//! branch-free polynomials the compiler vectorises (AVX-512 or AVX2 where the
//! CPU has it), split across cores. Accuracy: `erfc` by the Chebyshev fit of Press
//! et al., *Numerical Recipes* §6.2 (fractional error below 1.2e-7), `exp` by
//! range reduction and a degree-6 polynomial (a few ulp); tested against
//! burn's libm-based GELU to 1e-6.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use crate::cpu::{values, written, Isa};
use std::mem::MaybeUninit;

/// A backend with a GELU operation of its own; see the module docs.
pub trait GeluBackend: Backend {
    fn gelu_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `output_grad * GELU'(x)`.
    fn gelu_op_backward(x: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, output_grad)
    }
}

/// GELU of `x`, differentiable on an autodiff backend.
pub fn gelu<B: GeluBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::new(TensorPrimitive::Float(B::gelu_op(x.into_primitive().tensor())))
}

#[derive(Debug)]
struct GeluBackward;

impl<B: GeluBackend> Backward<B, 1> for GeluBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(ops.state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::gelu_op_backward(x, grad));
        }
    }
}

impl<B: GeluBackend, C: CheckpointStrategy> GeluBackend for Autodiff<B, C> {
    fn gelu_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::gelu_op(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_op(x.primitive)),
        }
    }
}

/// Values per parallel task: large enough to amortise the task, small
/// enough to split a batch's activations across cores.
const CHUNK: usize = 1 << 14;

impl GeluBackend for Flex {
    fn gelu_op(x: FlexTensor) -> FlexTensor {
        let (shape, isa) = (x.shape(), Isa::best());
        let x = values(&x);
        // SAFETY: `gelu_slice` writes every value of its chunk.
        let out = unsafe {
            written(x.len(), |out| {
                out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| simd::gelu_slice(isa, x, out));
            })
        };
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn gelu_op_backward(x: FlexTensor, mut output_grad: FlexTensor) -> FlexTensor {
        let (shape, isa) = (x.shape(), Isa::best());
        let x = values(&x);
        assert_eq!(x.len(), shape.num_elements(), "GELU gradient of another shape");
        // In place where the gradient is not shared (the usual case): no new buffer.
        let whole = output_grad.is_contiguous() && output_grad.layout().start_offset() == 0;
        if let Some(grad) = output_grad.try_storage_mut::<f32>().filter(|g| whole && g.len() == x.len()) {
            grad.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(grad, x)| simd::gelu_grad_slice(isa, x, grad));
            return output_grad;
        }
        let mut grad = values(&output_grad).into_owned();
        grad.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(grad, x)| simd::gelu_grad_slice(isa, x, grad));
        FlexTensor::from_data(TensorData::new(grad, shape))
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `a * b + c`, fused where `FUSED` (compiled only into functions with FMA:
/// elsewhere `mul_add` is a libm call).
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The polynomial with `coefficients` (lowest degree first) at `t`, by Horner.
#[inline(always)]
fn horner<const FUSED: bool, const N: usize>(t: f32, coefficients: [f32; N]) -> f32 {
    let mut acc = coefficients[N - 1];
    for i in (0..N - 1).rev() {
        acc = madd::<FUSED>(acc, t, coefficients[i]);
    }
    acc
}

/// `e^x` for `x` in about `[-87, 88]` (clamped outside): `2^n * e^r` with
/// `n = round(x / ln 2)` and `|r| <= ln 2 / 2`; `e^r` by its Taylor
/// polynomial to degree 6 (truncation below 2e-8 relative on that range).
/// Only float additions and integer bit operations, so that it vectorises:
/// `round_ties_even` is a libm call and `as i32` a per-lane saturating cast.
#[inline(always)]
fn exp<const FUSED: bool>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // `v = 1.5 * 2^23 + n`: the addition rounds `x / ln 2` to the nearest
    // integer (ties to even), whose value then sits in the low bits of `v`.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let v = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = v - ROUNDER;
    // ln 2 in two parts: `n * LN2_HI` is exact, so `r` keeps its low bits.
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = horner::<FUSED, 7>(r, [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0]);
    let exponent = (v.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32).wrapping_add(127);
    p * f32::from_bits((exponent as u32) << 23)
}

/// `erf(x)` as `1 - erfc(|x|)` with the sign of `x`, `erfc` by the
/// Chebyshev fit of Numerical Recipes (`erfcc`).
#[inline(always)]
fn erf<const FUSED: bool>(x: f32) -> f32 {
    const ERFCC: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let erfc = t * exp::<FUSED>(madd::<FUSED>(-z, z, horner::<FUSED, 10>(t, ERFCC)));
    (1.0 - erfc).copysign(x)
}

/// `Φ(x)`, the standard normal distribution function.
#[inline(always)]
fn normal_cdf<const FUSED: bool>(x: f32) -> f32 {
    0.5 * (1.0 + erf::<FUSED>(x * FRAC_1_SQRT_2))
}

// Index loops, not iterator adaptors: an adaptor's `fold` is a function of
// its own, compiled without the caller's AVX2 and left out of its inlining.
#[inline(always)]
fn gelu_slice_auto<const FUSED: bool>(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    let n = out.len().min(x.len());
    let (x, out) = (&x[..n], &mut out[..n]);
    for i in 0..n {
        out[i] = MaybeUninit::new(x[i] * normal_cdf::<FUSED>(x[i]));
    }
}

/// `grad *= GELU'(x)`.
#[inline(always)]
fn gelu_grad_slice_auto<const FUSED: bool>(x: &[f32], grad: &mut [f32]) {
    let n = grad.len().min(x.len());
    let (x, grad) = (&x[..n], &mut grad[..n]);
    for i in 0..n {
        grad[i] *= derivative::<FUSED>(x[i], normal_cdf::<FUSED>(x[i]));
    }
}

/// `GELU'(x) = Φ(x) + x φ(x)`, given `cdf = Φ(x)`.
#[inline(always)]
fn derivative<const FUSED: bool>(x: f32, cdf: f32) -> f32 {
    let density = FRAC_1_SQRT_2PI * exp::<FUSED>(-0.5 * x * x);
    madd::<FUSED>(x, density, cdf)
}

/// `out = GELU(x)` and `derivative = GELU'(x)` in one pass, for a backward
/// step that then only multiplies (the arithmetic of the two loops above).
#[inline(always)]
fn gelu_and_derivative_slice_auto<const FUSED: bool>(
    x: &[f32],
    out: &mut [MaybeUninit<f32>],
    derivative: &mut [MaybeUninit<f32>],
) {
    let n = out.len().min(x.len()).min(derivative.len());
    let (x, out, derivative) = (&x[..n], &mut out[..n], &mut derivative[..n]);
    for i in 0..n {
        let cdf = normal_cdf::<FUSED>(x[i]);
        out[i] = MaybeUninit::new(x[i] * cdf);
        derivative[i] = MaybeUninit::new(self::derivative::<FUSED>(x[i], cdf));
    }
}

/// `grad *= derivative`: the backward step of a GELU whose derivative the
/// forward one kept.
#[inline(always)]
fn times_derivative_auto(derivative: &[f32], grad: &mut [f32]) {
    let n = grad.len().min(derivative.len());
    let (derivative, grad) = (&derivative[..n], &mut grad[..n]);
    for i in 0..n {
        grad[i] *= derivative[i];
    }
}

/// The slice loops built per instruction set, with fused multiply-adds where
/// the CPU has FMA.
pub(crate) mod simd {
    use std::mem::MaybeUninit;

    use crate::cpu::per_isa;

    per_isa!(pub(crate) fn gelu_slice(x: &[f32], out: &mut [MaybeUninit<f32>])
        => super::gelu_slice_auto::<true>, super::gelu_slice_auto::<true>, super::gelu_slice_auto::<false>);
    per_isa!(pub(super) fn gelu_grad_slice(x: &[f32], grad: &mut [f32])
        => super::gelu_grad_slice_auto::<true>, super::gelu_grad_slice_auto::<true>, super::gelu_grad_slice_auto::<false>);
    per_isa!(pub(crate) fn gelu_and_derivative_slice(
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        derivative: &mut [MaybeUninit<f32>],
    ) => super::gelu_and_derivative_slice_auto::<true>,
        super::gelu_and_derivative_slice_auto::<true>,
        super::gelu_and_derivative_slice_auto::<false>);
    per_isa!(pub(crate) fn times_derivative(derivative: &[f32], grad: &mut [f32])
        => super::times_derivative_auto, super::times_derivative_auto, super::times_derivative_auto);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad};

    /// Values from -10 to 10 in steps of 1/1024, and the ends of f32.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-10_240..=10_240).map(|i| i as f32 / 1024.0).collect();
        v.extend([-80.0, -30.0, 30.0, 1e-30, -1e-30, 0.0]);
        v
    }

    /// Forward and gradient against burn's GELU (libm's `erff` and `expf`),
    /// through autodiff.
    #[test]
    fn matches_burns_gelu_and_its_gradient() {
        let device = Default::default();
        let values = inputs();
        let n = values.len();
        let weights: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 / 7.0).collect();
        let make = || Tensor::<Ad, 1>::from_data(TensorData::new(values.clone(), [n]), &device).require_grad();
        let r = Tensor::<Ad, 1>::from_data(TensorData::new(weights, [n]), &device);
        let (x, x_ref) = (make(), make());
        let (ours, theirs) = (gelu(x.clone()), burn::tensor::activation::gelu(x_ref.clone()));
        let close = |got: Vec<f32>, want: Vec<f32>, what: &str| {
            for ((g, w), v) in got.iter().zip(&want).zip(&values) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{what} at {v}: {g} vs {w}");
            }
        };
        close(to_vec(ours.clone()), to_vec(theirs.clone()), "gelu");
        let grads = (ours * r.clone()).sum().backward();
        let grads_ref = (theirs * r).sum().backward();
        close(to_vec(x.grad(&grads).unwrap()), to_vec(x_ref.grad(&grads_ref).unwrap()), "gradient");
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        check_exp_and_erf::<false>();
        check_exp_and_erf::<true>();
    }

    fn check_exp_and_erf<const FUSED: bool>() {
        for v in inputs() {
            let (x, e) = (v as f64 / 2.0, (v as f64 / 2.0).exp());
            assert!((exp::<FUSED>(x as f32) as f64 - e).abs() <= 4e-7 * e, "exp({x}), fused {FUSED}");
        }
        // erf at points tabulated to 10 digits (Abramowitz & Stegun, table 7.1).
        for (x, want) in
            [(0.1, 0.112_462_916_0), (0.5, 0.520_499_877_8), (1.0, 0.842_700_792_9), (2.0, 0.995_322_265_0)]
        {
            let (got, mirrored) = (erf::<FUSED>(x) as f64, erf::<FUSED>(-x) as f64);
            assert!((got - want).abs() <= 3e-7 && (mirrored + want).abs() <= 3e-7, "erf(±{x}) = {got}, fused {FUSED}");
        }
    }
}
