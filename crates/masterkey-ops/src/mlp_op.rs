//! The inverted-bottleneck MLP of a ConvNeXt block after its DW
//! convolution, `x + GELU(LN(y) W1 + b1) W2 + b2` per row, as one backend
//! operation. The default body composes this crate's LayerNorm, linear and
//! GELU, so autodiff (training) records exactly those operations; the CPU
//! backend runs inference (evaluation) fused.
//!
//! Hand-written because, unfused, the hidden activation (`[rows, 4C]`, four
//! times the block's width) is written by the first product, read and
//! written again by GELU and read by the second product: on the small-data
//! recipe's network, evaluating a batch of 256 sends 25 MB through memory
//! that way per block. Fused, each task takes a slab of rows through all
//! five steps while its hidden rows stay in the core's L2 cache.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use crate::cpu::{values, written, Isa};
use crate::gelu_op::{gelu, GeluBackend};
use crate::linear_op::{linear, product, product_onto, LinearBackend, Matrix};
use crate::norm_op::{layer_norm, LayerNormBackend};

/// The parameters of the MLP: LayerNorm scale, shift and epsilon, then the
/// expanding product `[C, H]` + `[H]` and the projecting one `[H, C]` + `[C]`.
pub struct MlpParams<B: burn::tensor::backend::Backend> {
    pub norm_gamma: FloatTensor<B>,
    pub norm_beta: FloatTensor<B>,
    pub eps: f32,
    pub expand_weight: FloatTensor<B>,
    pub expand_bias: FloatTensor<B>,
    pub project_weight: FloatTensor<B>,
    pub project_bias: FloatTensor<B>,
}

/// A backend with the block MLP as one operation; see the module docs.
pub trait MlpBackend: LayerNormBackend + LinearBackend + GeluBackend {
    /// `residual + GELU(LN(y) W1 + b1) W2 + b2` on `y`, `residual` `[rows, C]`.
    fn block_mlp(y: FloatTensor<Self>, residual: FloatTensor<Self>, p: MlpParams<Self>) -> FloatTensor<Self> {
        fn t<B: burn::tensor::backend::Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
            Tensor::new(TensorPrimitive::Float(p))
        }
        let normed = layer_norm(t::<Self, 2>(y), t(p.norm_gamma), t(p.norm_beta), p.eps);
        let hidden = gelu(linear(normed, t(p.expand_weight), t(p.expand_bias)));
        (t::<Self, 2>(residual) + linear(hidden, t(p.project_weight), t(p.project_bias))).into_primitive().tensor()
    }
}

/// `residual + GELU(LN(y) W1 + b1) W2 + b2` over the last axis of `y` and
/// `residual` (any rank, the same shape); differentiable on an autodiff
/// backend, where it is the three operations it is made of.
pub fn block_mlp<B: MlpBackend, const D: usize>(
    y: Tensor<B, D>,
    residual: Tensor<B, D>,
    norm: (Tensor<B, 1>, Tensor<B, 1>, f32),
    expand: (Tensor<B, 2>, Tensor<B, 1>),
    project: (Tensor<B, 2>, Tensor<B, 1>),
) -> Tensor<B, D> {
    let dims = y.dims();
    let c = dims[D - 1];
    let rows = y.shape().num_elements() / c.max(1);
    let float = |t: TensorPrimitive<B>| t.tensor();
    let params = MlpParams {
        norm_gamma: float(norm.0.into_primitive()),
        norm_beta: float(norm.1.into_primitive()),
        eps: norm.2,
        expand_weight: float(expand.0.into_primitive()),
        expand_bias: float(expand.1.into_primitive()),
        project_weight: float(project.0.into_primitive()),
        project_bias: float(project.1.into_primitive()),
    };
    let out = B::block_mlp(
        float(y.reshape([rows, c]).into_primitive()),
        float(residual.reshape([rows, c]).into_primitive()),
        params,
    );
    Tensor::<B, 2>::new(TensorPrimitive::Float(out)).reshape(dims)
}

impl<B: MlpBackend, C: CheckpointStrategy> MlpBackend for Autodiff<B, C> {}

/// Rows per task: the task's hidden rows (`ROWS_PER_TASK x 4C` values,
/// 128 KiB at C = 64) and its normalised input stay in L2.
const ROWS_PER_TASK: usize = 128;

impl MlpBackend for Flex {
    fn block_mlp(y: FlexTensor, residual: FlexTensor, p: MlpParams<Flex>) -> FlexTensor {
        let shape = y.shape();
        let [rows, c]: [usize; 2] = shape.dims();
        let hidden = p.expand_weight.shape()[1];
        let (y, residual) = (values(&y), values(&residual));
        let (gamma, beta) = (values(&p.norm_gamma), values(&p.norm_beta));
        let (w1, b1) = (values(&p.expand_weight), values(&p.expand_bias));
        let (w2, b2) = (values(&p.project_weight), values(&p.project_bias));
        let (w1, w2) = (Matrix::new(&w1, c, hidden), Matrix::new(&w2, hidden, c));
        let isa = Isa::best();
        let chunk = ROWS_PER_TASK * c.max(1);
        // SAFETY: every task writes its rows (residual plus bias) before the
        // product adds onto them.
        let out = unsafe {
            written(rows * c, |out| {
                out.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(residual.par_chunks(chunk))).for_each(
                    |(out, (y, residual))| {
                        let n = y.len() / c;
                        let mut normed = vec![0.0f32; y.len()];
                        crate::norm_op::simd::forward_rows(isa, y, &gamma, &beta, p.eps, &mut normed);
                        let mut pre = vec![0.0f32; n * hidden];
                        pre.chunks_exact_mut(hidden).for_each(|row| row.copy_from_slice(&b1));
                        product_onto(&Matrix::new(&normed, n, c), &w1, &mut pre);
                        // SAFETY: `gelu_slice` writes every value.
                        let activated = written(n * hidden, |h| crate::gelu_op::simd::gelu_slice(isa, &pre, h));
                        for (out, residual) in out.chunks_exact_mut(c).zip(residual.chunks_exact(c)) {
                            for ((o, r), b) in out.iter_mut().zip(residual).zip(b2.iter()) {
                                o.write(r + b);
                            }
                        }
                        product(&Matrix::new(&activated, n, hidden), &w2, out, true, false);
                    },
                );
            })
        };
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad, Cpu};
    use burn::tensor::backend::Backend;
    use masterkey_core::rng::SplitMix;

    fn random<B: Backend, const D: usize>(rng: &mut SplitMix, dims: [usize; D]) -> Tensor<B, D> {
        let values: Vec<f32> = (0..dims.iter().product()).map(|_| rng.normal()).collect();
        Tensor::from_data(TensorData::new(values, dims), &Default::default())
    }

    /// The fused CPU operation against the three operations it replaces, on
    /// row counts that do and do not fill the last task, at the recipe's widths.
    #[test]
    fn fused_matches_the_composed_operations() {
        for (rows, c, hidden) in [(5, 8, 32), (ROWS_PER_TASK * 3 + 17, 32, 128), (2 * 7 * 7 * 4, 64, 256)] {
            let mut rng = SplitMix::new((rows * c) as u64);
            let (y, residual) = (random::<Cpu, 2>(&mut rng, [rows, c]), random::<Cpu, 2>(&mut rng, [rows, c]));
            let norm = (random::<Cpu, 1>(&mut rng, [c]), random::<Cpu, 1>(&mut rng, [c]), 1e-6);
            let expand = (random::<Cpu, 2>(&mut rng, [c, hidden]), random::<Cpu, 1>(&mut rng, [hidden]));
            let project = (random::<Cpu, 2>(&mut rng, [hidden, c]), random::<Cpu, 1>(&mut rng, [c]));
            let normed = layer_norm(y.clone(), norm.0.clone(), norm.1.clone(), norm.2);
            let hidden_out = gelu(linear(normed, expand.0.clone(), expand.1.clone()));
            let want = to_vec(residual.clone() + linear(hidden_out, project.0.clone(), project.1.clone()));
            let got = to_vec(block_mlp(y.reshape([1, rows, c]), residual.reshape([1, rows, c]), norm, expand, project));
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{rows}x{c}x{hidden} [{i}]: {g} vs {w}");
            }
        }
    }

    /// On autodiff the operation is its composition: every input and
    /// parameter gets a gradient.
    #[test]
    fn autodiff_reaches_every_input_and_parameter() {
        let mut rng = SplitMix::new(3);
        let (rows, c, hidden) = (10, 4, 16);
        let tracked = |t: Tensor<Ad, 2>| t.require_grad();
        let y = tracked(random(&mut rng, [rows, c]));
        let residual = tracked(random(&mut rng, [rows, c]));
        let (w1, w2) = (tracked(random(&mut rng, [c, hidden])), tracked(random(&mut rng, [hidden, c])));
        let (gamma, b1) = (random::<Ad, 1>(&mut rng, [c]).require_grad(), random::<Ad, 1>(&mut rng, [hidden]));
        let (beta, b2) = (random::<Ad, 1>(&mut rng, [c]), random::<Ad, 1>(&mut rng, [c]));
        let out =
            block_mlp(y.clone(), residual.clone(), (gamma.clone(), beta, 1e-6), (w1.clone(), b1), (w2.clone(), b2));
        let grads = out.sum().backward();
        for (name, grad) in [
            ("y", y.grad(&grads).map(to_vec)),
            ("residual", residual.grad(&grads).map(to_vec)),
            ("expand weight", w1.grad(&grads).map(to_vec)),
            ("project weight", w2.grad(&grads).map(to_vec)),
        ] {
            let grad = grad.unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(grad.iter().any(|g| *g != 0.0) && grad.iter().all(|g| g.is_finite()), "{name}: {grad:?}");
        }
        assert!(gamma.grad(&grads).is_some(), "no gradient for the norm's scale");
    }
}
