//! LayerNorm over the last axis of `[rows, C]` as one backend operation,
//! through burn's backend extension like [`crate::dw_op`]: the default bodies
//! compose burn's own operations, the CPU backend gets a fused version (one
//! pass per row forward, one backward), autodiff a backward step.
//!
//! Hand-written because the composed LayerNorm makes nine full-size
//! temporaries forward and about twice that backward, each a trip through
//! memory: on the reference model (REFERENCE §5) that was a tenth of a step.

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

use std::mem::MaybeUninit;

use crate::cpu::{values, written, Isa};

/// The gradients of a LayerNorm: input, scale, shift.
pub struct LayerNormGrads<B: Backend> {
    pub x: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

/// A backend with a LayerNorm operation of its own; see the module docs.
pub trait LayerNormBackend: Backend {
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` per row of `x [rows, C]`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (normed, _) = composed::normalise::<Self>(x, eps);
        let c = gamma.shape()[0];
        let scaled = Self::float_mul(normed, Self::float_reshape(gamma, [1, c].into()));
        Self::float_add(scaled, Self::float_reshape(beta, [1, c].into()))
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        eps: f32,
    ) -> LayerNormGrads<Self> {
        composed::backward::<Self>(x, gamma, output_grad, eps)
    }
}

/// The default bodies, in burn's own operations.
mod composed {
    use super::*;

    /// `(x - mean) / std` and `std`, per row.
    pub(super) fn normalise<B: Backend>(x: FloatTensor<B>, eps: f32) -> (FloatTensor<B>, FloatTensor<B>) {
        let centred = B::float_sub(x.clone(), B::float_mean_dim(x, 1));
        let var = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), 1);
        let std = B::float_sqrt(B::float_add_scalar(var, eps.into()));
        (B::float_div(centred, std.clone()), std)
    }

    pub(super) fn backward<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        grad: FloatTensor<B>,
        eps: f32,
    ) -> LayerNormGrads<B> {
        let c = gamma.shape()[0];
        let (normed, std) = normalise::<B>(x, eps);
        let g = B::float_mul(grad.clone(), B::float_reshape(gamma, [1, c].into()));
        let mean_g = B::float_mean_dim(g.clone(), 1);
        let mean_gn = B::float_mean_dim(B::float_mul(g.clone(), normed.clone()), 1);
        let inner = B::float_sub(B::float_sub(g, mean_g), B::float_mul(normed.clone(), mean_gn));
        let gamma = B::float_reshape(B::float_sum_dim(B::float_mul(grad.clone(), normed), 0), [c].into());
        let beta = B::float_reshape(B::float_sum_dim(grad, 0), [c].into());
        LayerNormGrads { x: B::float_div(inner, std), gamma, beta }
    }
}

/// LayerNorm over the last axis of `x` (any rank), differentiable in all three.
pub fn layer_norm<B: LayerNormBackend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    let dims = x.dims();
    let c = dims[D - 1];
    let rows = x.shape().num_elements() / c.max(1);
    let float = |t: TensorPrimitive<B>| t.tensor();
    let y = B::fused_layer_norm(
        float(x.reshape([rows, c]).into_primitive()),
        float(gamma.into_primitive()),
        float(beta.into_primitive()),
        eps,
    );
    Tensor::<B, 2>::new(TensorPrimitive::Float(y)).reshape(dims)
}

#[derive(Debug)]
struct LayerNormBackward;

impl<B: LayerNormBackend> Backward<B, 3> for LayerNormBackward {
    /// Input and scale nodes, epsilon.
    type State = (NodeId, NodeId, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, eps) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x);
        let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gamma);
        let g = B::fused_layer_norm_backward(x, gamma, grad, eps);
        for (node, value) in [(node_x, g.x), (node_gamma, g.gamma), (node_beta, g.beta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: LayerNormBackend, C: CheckpointStrategy> LayerNormBackend for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), eps);
                prep.finish(state, B::fused_layer_norm(x.primitive, gamma.primitive, beta.primitive, eps))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_layer_norm(x.primitive, gamma.primitive, beta.primitive, eps))
            }
        }
    }
}

/// Rows per parallel task; the parameter gradients are summed per task and
/// then over tasks in order, so they do not depend on the thread count.
const ROWS_PER_TASK: usize = 512;

impl LayerNormBackend for Flex {
    fn fused_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f32) -> FlexTensor {
        let shape = x.shape();
        let [_, c]: [usize; 2] = shape.dims();
        let (x, gamma, beta) = (values(&x), values(&gamma), values(&beta));
        let (isa, chunk) = (Isa::best(), ROWS_PER_TASK * c);
        // SAFETY: `forward_rows` writes every row of its chunk.
        let out = unsafe {
            written(x.len(), |out| {
                out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(out, x)| {
                    simd::forward_rows(isa, x, &gamma, &beta, eps, out);
                })
            })
        };
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn fused_layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        output_grad: FlexTensor,
        eps: f32,
    ) -> LayerNormGrads<Flex> {
        let shape = x.shape();
        let [_, c]: [usize; 2] = shape.dims();
        let (x, gamma, grad) = (values(&x), values(&gamma), values(&output_grad));
        let isa = Isa::best();
        let chunk = ROWS_PER_TASK * c;
        let tasks = x.len().div_ceil(chunk.max(1));
        // Per task: the scale gradient, then the shift gradient.
        let mut partials = vec![0.0f32; tasks * 2 * c];
        // SAFETY: `backward_rows` writes every row of its chunk of `dx`.
        let dx = unsafe {
            written(x.len(), |dx| {
                dx.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
                    .zip(partials.par_chunks_mut(2 * c))
                    .for_each(|((dx, (x, grad)), partial)| {
                        let (dgamma, dbeta) = partial.split_at_mut(c);
                        simd::backward_rows(isa, x, &gamma, grad, eps, dx, dgamma, dbeta);
                    })
            })
        };
        let total = |offset: usize| -> Vec<f32> {
            (0..c).map(|i| partials.chunks_exact(2 * c).map(|p| p[offset + i] as f64).sum::<f64>() as f32).collect()
        };
        let tensor = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, [c]));
        LayerNormGrads {
            gamma: tensor(total(0)),
            beta: tensor(total(c)),
            x: FlexTensor::from_data(TensorData::new(dx, shape)),
        }
    }
}

/// Partial sums kept apart: a float sum in one chain does not vectorise
/// (the compiler may not reorder it), sixteen chains (one AVX-512 vector,
/// two AVX2 ones) do.
const LANES: usize = 16;

/// `sum of f(x[i], y[i], z[i])` over the slices (of one length), in
/// [`LANES`] chains. Blocks are fixed-size arrays, so that the compiler sees
/// no bounds to check and turns the chains into one vector.
#[inline(always)]
fn lane_sum(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = x.len().min(y.len()).min(z.len());
    let whole = n / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    let blocks = x[..whole].chunks_exact(LANES).zip(y[..whole].chunks_exact(LANES)).zip(z[..whole].chunks_exact(LANES));
    for ((x, y), z) in blocks {
        let (x, y, z): (&[f32; LANES], &[f32; LANES], &[f32; LANES]) =
            (x.try_into().unwrap(), y.try_into().unwrap(), z.try_into().unwrap());
        for l in 0..LANES {
            lanes[l] += f(x[l], y[l], z[l]);
        }
    }
    // The rest in a chain of its own: indexing `lanes` by a variable would
    // keep the lanes in memory instead of one register.
    let mut rest = 0.0f32;
    for i in whole..n {
        rest += f(x[i], y[i], z[i]);
    }
    // Halves added pairwise: four dependent additions, not fifteen.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
    }
    lanes[0] + rest
}

/// Mean and reciprocal standard deviation (`1 / sqrt(var + eps)`) of one
/// row: the rows are scaled by a product, as PyTorch's LayerNorm does, not
/// one division per value.
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len();
    let mean = lane_sum(x, x, x, |v, _, _| v) / c as f32;
    let var = lane_sum(x, x, x, |v, _, _| (v - mean) * (v - mean)) / c as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

// Index loops, not iterator adaptors, so that everything inlines into the
// per-instruction-set builds below (see `gelu_op`).
#[inline(always)]
fn forward_rows_auto(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let c = gamma.len();
    let beta = &beta[..c];
    for (x, out) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let (x, out) = (&x[..c], &mut out[..c]);
        let (mean, inv_std) = moments(x, eps);
        for i in 0..c {
            out[i] = MaybeUninit::new((x[i] - mean) * inv_std * gamma[i] + beta[i]);
        }
    }
}

#[inline(always)]
fn backward_rows_auto(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f32,
    dx: &mut [MaybeUninit<f32>],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let c = gamma.len();
    let (dgamma, dbeta) = (&mut dgamma[..c], &mut dbeta[..c]);
    let per_row = x.chunks_exact(c).zip(grad.chunks_exact(c)).zip(dx.chunks_exact_mut(c));
    for ((x, grad), dx) in per_row {
        let (x, grad, dx) = (&x[..c], &grad[..c], &mut dx[..c]);
        let (mean, inv_std) = moments(x, eps);
        let normed = |i: usize| (x[i] - mean) * inv_std;
        let mean_g = lane_sum(grad, gamma, x, |g, w, _| g * w) / c as f32;
        let mean_gn = lane_sum(grad, gamma, x, |g, w, v| g * w * ((v - mean) * inv_std)) / c as f32;
        for i in 0..c {
            dgamma[i] += grad[i] * normed(i);
            dbeta[i] += grad[i];
            dx[i] = MaybeUninit::new((grad[i] * gamma[i] - mean_g - normed(i) * mean_gn) * inv_std);
        }
    }
}

/// The row loops built per instruction set.
pub(crate) mod simd {
    use std::mem::MaybeUninit;

    use crate::cpu::per_isa;

    per_isa!(pub(crate) fn forward_rows(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [MaybeUninit<f32>],
    )
        => super::forward_rows_auto, super::forward_rows_auto, super::forward_rows_auto);
    per_isa!(pub(crate) fn backward_rows(
        x: &[f32],
        gamma: &[f32],
        grad: &[f32],
        eps: f32,
        dx: &mut [MaybeUninit<f32>],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) => super::backward_rows_auto, super::backward_rows_auto, super::backward_rows_auto);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad};
    use burn::tensor::ops::FloatTensorOps;
    use masterkey_core::rng::SplitMix;

    /// The fused operation against the composed default (burn's own
    /// operations differentiated by autodiff), rows spanning several tasks.
    #[test]
    fn fused_matches_the_composed_layer_norm_and_its_gradients() {
        let device = Default::default();
        for (rows, c) in [(3, 5), (1100, 64), (2 * ROWS_PER_TASK + 7, 19)] {
            let mut rng = SplitMix::new((rows * c) as u64);
            let mut draw =
                |n: usize, scale: f32, shift: f32| (0..n).map(|_| rng.normal() * scale + shift).collect::<Vec<f32>>();
            let (xs, gs, bs, rs) =
                (draw(rows * c, 3.0, 1.5), draw(c, 1.0, 1.0), draw(c, 1.0, 0.0), draw(rows * c, 1.0, 0.0));
            let matrix = |v: &[f32]| Tensor::<Ad, 2>::from_data(TensorData::new(v.to_vec(), [rows, c]), &device);
            let vector =
                |v: &[f32]| Tensor::<Ad, 1>::from_data(TensorData::new(v.to_vec(), [c]), &device).require_grad();
            let (x, gamma, beta) = (matrix(&xs).require_grad(), vector(&gs), vector(&bs));
            let (x_ref, gamma_ref, beta_ref) = (matrix(&xs).require_grad(), vector(&gs), vector(&bs));
            let r = matrix(&rs);

            let ours = layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-6);
            let mean = x_ref.clone().mean_dim(1);
            let centred = x_ref.clone() - mean;
            let std = (centred.clone().powi_scalar(2).mean_dim(1) + 1e-6).sqrt();
            let theirs = centred / std * gamma_ref.clone().reshape([1, c]) + beta_ref.clone().reshape([1, c]);
            let what = format!("{rows}x{c}");
            close(&to_vec(ours.clone()), &to_vec(theirs.clone()), &format!("{what} forward"));

            let (grads, grads_ref) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(&to_vec(x.grad(&grads).unwrap()), &to_vec(x_ref.grad(&grads_ref).unwrap()), &format!("{what} dx"));
            let dgamma = to_vec(gamma.grad(&grads).unwrap());
            close(&dgamma, &to_vec(gamma_ref.grad(&grads_ref).unwrap()), &format!("{what} dgamma"));
            let dbeta = to_vec(beta.grad(&grads).unwrap());
            close(&dbeta, &to_vec(beta_ref.grad(&grads_ref).unwrap()), &format!("{what} dbeta"));
        }
    }

    /// The composed default bodies (what CUDA runs) against the fused CPU ones.
    #[test]
    fn default_bodies_match_the_fused_cpu_operation() {
        let (rows, c) = (37, 12);
        let mut rng = SplitMix::new(9);
        let mut draw = |n: usize| (0..n).map(|_| rng.normal() * 2.0 + 0.5).collect::<Vec<f32>>();
        let flex = |v: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(v, shape));
        let (xs, gs, bs, rs) = (draw(rows * c), draw(c), draw(c), draw(rows * c));
        let x = || flex(xs.clone(), vec![rows, c]);
        let (gamma, beta, grad) =
            (|| flex(gs.clone(), vec![c]), || flex(bs.clone(), vec![c]), || flex(rs.clone(), vec![rows, c]));
        let values = |t: FlexTensor| values(&t).to_vec();
        let fused = Flex::fused_layer_norm(x(), gamma(), beta(), 1e-6);
        let normed = composed::normalise::<Flex>(x(), 1e-6).0;
        let scaled = Flex::float_mul(normed, Flex::float_reshape(gamma(), [1, c].into()));
        let default = Flex::float_add(scaled, Flex::float_reshape(beta(), [1, c].into()));
        close(&values(fused), &values(default), "forward");
        let fused = Flex::fused_layer_norm_backward(x(), gamma(), grad(), 1e-6);
        let default = composed::backward::<Flex>(x(), gamma(), grad(), 1e-6);
        close(&values(fused.x), &values(default.x), "dx");
        close(&values(fused.gamma), &values(default.gamma), "dgamma");
        close(&values(fused.beta), &values(default.beta), "dbeta");
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }
}
