//! The inverted-bottleneck MLP of a ConvNeXt block after its DW
//! convolution, `x + GELU(LN(y) W1 + b1) W2 + b2` per row, as one backend
//! operation with a backward step of its own. The default bodies compose this
//! crate's LayerNorm, linear and GELU operations; the CPU backend runs
//! forward and backward fused.
//!
//! Hand-written because, unfused, the hidden activation (`[rows, 4C]`, four
//! times the block's width) is written by the first product, read and
//! written again by GELU and read by the second product, and backward GELU's
//! gradient reads the pre-activation back long after it left the caches: on
//! the small-data recipe's network, GELU alone (forward and backward, half
//! of it waiting on memory) was a fifth of a training step. Fused, each task
//! takes a slab of rows through every step while its hidden rows stay in the
//! core's L2 cache. Training keeps the GELU output and GELU's derivative per
//! hidden value, computed in the same pass (the norm is recomputed from the
//! input, the pre-activation is not kept), so the backward step multiplies
//! by the derivative instead of evaluating `erf` and `exp` again.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::gelu_op::GeluBackend;
use crate::linear_op::LinearBackend;
use crate::norm_op::LayerNormBackend;

mod cpu;

/// The parameters of the MLP: LayerNorm scale, shift and epsilon, then the
/// expanding product `[C, H]` + `[H]` and the projecting one `[H, C]` + `[C]`.
#[derive(Clone, Debug)]
pub struct MlpParams<B: Backend> {
    pub norm_gamma: FloatTensor<B>,
    pub norm_beta: FloatTensor<B>,
    pub eps: f32,
    pub expand_weight: FloatTensor<B>,
    pub expand_bias: FloatTensor<B>,
    pub project_weight: FloatTensor<B>,
    pub project_bias: FloatTensor<B>,
}

/// What the backward step needs of a recorded forward one.
#[derive(Clone, Debug)]
pub struct MlpSaved<B: Backend> {
    /// The MLP's input, `[rows, C]` (the norm is recomputed from it).
    pub y: FloatTensor<B>,
    /// `GELU(h)` of the hidden pre-activation `h`, `[rows, H]`.
    pub activated: FloatTensor<B>,
    /// What the backend's backward step needs of `h`, `[rows, H]`: `h`
    /// itself in the default bodies, `GELU'(h)` on the CPU.
    pub hidden: FloatTensor<B>,
    pub params: MlpParams<B>,
}

/// The gradients of the MLP's input and parameters (the residual's is the
/// output's own).
pub struct MlpGrads<B: Backend> {
    pub y: FloatTensor<B>,
    pub norm_gamma: FloatTensor<B>,
    pub norm_beta: FloatTensor<B>,
    pub expand_weight: FloatTensor<B>,
    pub expand_bias: FloatTensor<B>,
    pub project_weight: FloatTensor<B>,
    pub project_bias: FloatTensor<B>,
}

/// A backend with the block MLP as one operation; see the module docs.
pub trait MlpBackend: LayerNormBackend + LinearBackend + GeluBackend {
    /// `residual + GELU(LN(y) W1 + b1) W2 + b2` on `y`, `residual` `[rows, C]`.
    fn block_mlp(y: FloatTensor<Self>, residual: FloatTensor<Self>, p: MlpParams<Self>) -> FloatTensor<Self> {
        composed::recorded::<Self>(y, residual, p).0
    }

    /// [`MlpBackend::block_mlp`], keeping what its backward step needs.
    fn block_mlp_recorded(
        y: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        p: MlpParams<Self>,
    ) -> (FloatTensor<Self>, MlpSaved<Self>) {
        composed::recorded::<Self>(y, residual, p)
    }

    fn block_mlp_backward(saved: MlpSaved<Self>, output_grad: FloatTensor<Self>) -> MlpGrads<Self> {
        composed::backward::<Self>(saved, output_grad)
    }
}

/// The default bodies, in this crate's LayerNorm, linear and GELU operations.
mod composed {
    use super::*;

    pub(super) fn recorded<B: MlpBackend>(
        y: FloatTensor<B>,
        residual: FloatTensor<B>,
        p: MlpParams<B>,
    ) -> (FloatTensor<B>, MlpSaved<B>) {
        let normed = B::fused_layer_norm(y.clone(), p.norm_gamma.clone(), p.norm_beta.clone(), p.eps);
        let hidden = B::fused_linear(normed, p.expand_weight.clone(), p.expand_bias.clone());
        let activated = B::gelu_op(hidden.clone());
        let projected = B::fused_linear(activated.clone(), p.project_weight.clone(), p.project_bias.clone());
        (B::float_add(residual, projected), MlpSaved { y, activated, hidden, params: p })
    }

    pub(super) fn backward<B: MlpBackend>(saved: MlpSaved<B>, grad: FloatTensor<B>) -> MlpGrads<B> {
        let MlpSaved { y, activated, hidden, params: p } = saved;
        let project_weight = B::fused_linear_weight_backward(activated, grad.clone());
        let project_bias = B::fused_linear_bias_backward(grad.clone());
        let hidden_grad = B::gelu_op_backward(hidden, B::fused_linear_x_backward(p.project_weight, grad));
        let normed = B::fused_layer_norm(y.clone(), p.norm_gamma.clone(), p.norm_beta, p.eps);
        let expand_weight = B::fused_linear_weight_backward(normed, hidden_grad.clone());
        let expand_bias = B::fused_linear_bias_backward(hidden_grad.clone());
        let normed_grad = B::fused_linear_x_backward(p.expand_weight, hidden_grad);
        let norm = B::fused_layer_norm_backward(y, p.norm_gamma, normed_grad, p.eps);
        MlpGrads {
            y: norm.x,
            norm_gamma: norm.gamma,
            norm_beta: norm.beta,
            expand_weight,
            expand_bias,
            project_weight,
            project_bias,
        }
    }
}

/// `residual + GELU(LN(y) W1 + b1) W2 + b2` over the last axis of `y` and
/// `residual` (any rank, the same shape), differentiable in all of them.
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

#[derive(Debug)]
struct MlpBackward;

impl<B: MlpBackend> Backward<B, 8> for MlpBackward {
    type State = MlpSaved<B>;

    fn backward(self, ops: Ops<Self::State, 8>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [y, residual, norm_gamma, norm_beta, expand_weight, expand_bias, project_weight, project_bias] =
            ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let g = B::block_mlp_backward(ops.state, grad.clone());
        for (node, value) in [
            (residual, grad),
            (y, g.y),
            (norm_gamma, g.norm_gamma),
            (norm_beta, g.norm_beta),
            (expand_weight, g.expand_weight),
            (expand_bias, g.expand_bias),
            (project_weight, g.project_weight),
            (project_bias, g.project_bias),
        ] {
            if let Some(node) = node {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: MlpBackend, C: CheckpointStrategy> MlpBackend for Autodiff<B, C> {
    fn block_mlp(y: FloatTensor<Self>, residual: FloatTensor<Self>, p: MlpParams<Self>) -> FloatTensor<Self> {
        let parents = [
            &y,
            &residual,
            &p.norm_gamma,
            &p.norm_beta,
            &p.expand_weight,
            &p.expand_bias,
            &p.project_weight,
            &p.project_bias,
        ]
        .map(|t| t.node.clone());
        let inner = MlpParams {
            norm_gamma: p.norm_gamma.primitive,
            norm_beta: p.norm_beta.primitive,
            eps: p.eps,
            expand_weight: p.expand_weight.primitive,
            expand_bias: p.expand_bias.primitive,
            project_weight: p.project_weight.primitive,
            project_bias: p.project_bias.primitive,
        };
        match MlpBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, saved) = B::block_mlp_recorded(y.primitive, residual.primitive, inner);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::block_mlp(y.primitive, residual.primitive, inner)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cpu::{tensor, BACKWARD_ROWS_PER_TASK, ROWS_PER_TASK};
    use super::*;
    use crate::cpu::values;
    use crate::gelu_op::gelu;
    use crate::linear_op::linear;
    use crate::norm_op::layer_norm;
    use crate::testing::{to_vec, Ad, Cpu};
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;
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

    /// Inputs, parameters and an output gradient of the given sizes, drawn from a seed made of them.
    struct Case {
        y: Vec<f32>,
        residual: Vec<f32>,
        output_grad: Vec<f32>,
        params: [Vec<f32>; 6],
        rows: usize,
        c: usize,
        hidden: usize,
    }

    impl Case {
        fn new(rows: usize, c: usize, hidden: usize) -> Self {
            let mut rng = SplitMix::new((rows * c + hidden) as u64);
            let mut draw = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (y, residual, output_grad) = (draw(rows * c), draw(rows * c), draw(rows * c));
            let params = [draw(c), draw(c), draw(c * hidden), draw(hidden), draw(hidden * c), draw(c)];
            Case { y, residual, output_grad, params, rows, c, hidden }
        }

        fn shapes(&self) -> [Vec<usize>; 6] {
            let (c, h) = (self.c, self.hidden);
            [vec![c], vec![c], vec![c, h], vec![h], vec![h, c], vec![c]]
        }

        fn flex_params(&self) -> MlpParams<Cpu> {
            let [g, b, w1, b1, w2, b2] =
                std::array::from_fn(|i| tensor(self.params[i].clone(), self.shapes()[i].clone()));
            MlpParams {
                norm_gamma: g,
                norm_beta: b,
                eps: 1e-6,
                expand_weight: w1,
                expand_bias: b1,
                project_weight: w2,
                project_bias: b2,
            }
        }

        fn flex(&self, values: &[f32]) -> FlexTensor {
            tensor(values.to_vec(), [self.rows, self.c])
        }
    }

    fn flex_values(t: FlexTensor) -> Vec<f32> {
        values(&t).to_vec()
    }

    /// The CPU's recorded forward and fused backward steps against the
    /// default bodies (what the GPU backends run), row counts filling and
    /// not filling the last task of either.
    #[test]
    fn fused_backward_matches_the_default_bodies() {
        for (rows, c, hidden) in [(5, 8, 32), (BACKWARD_ROWS_PER_TASK * 2 + 37, 32, 128), (2 * 7 * 7 * 4, 64, 256)] {
            let case = Case::new(rows, c, hidden);
            let what = format!("{rows}x{c}x{hidden}");
            let (y, residual) = (case.flex(&case.y), case.flex(&case.residual));
            let (out, saved) = Cpu::block_mlp_recorded(y.clone(), residual.clone(), case.flex_params());
            let (want_out, want_saved) = composed::recorded::<Cpu>(y, residual, case.flex_params());
            close(&flex_values(out), &flex_values(want_out), &format!("{what} output"));
            let got = Cpu::block_mlp_backward(saved, case.flex(&case.output_grad));
            let want = composed::backward::<Cpu>(want_saved, case.flex(&case.output_grad));
            for (name, got, want) in [
                ("y", got.y, want.y),
                ("norm scale", got.norm_gamma, want.norm_gamma),
                ("norm shift", got.norm_beta, want.norm_beta),
                ("expand weight", got.expand_weight, want.expand_weight),
                ("expand bias", got.expand_bias, want.expand_bias),
                ("project weight", got.project_weight, want.project_weight),
                ("project bias", got.project_bias, want.project_bias),
            ] {
                close(&flex_values(got), &flex_values(want), &format!("{what} {name} gradient"));
            }
        }
    }

    /// On autodiff, every input and parameter gets the gradient the three
    /// operations the MLP is made of give it (which catches a gradient
    /// registered to the wrong parent).
    #[test]
    fn autodiff_gradients_match_the_composed_operations() {
        let case = Case::new(ROWS_PER_TASK + 9, 16, 64);
        let device = Default::default();
        let tensors = |seed: &Case| {
            let t2 = |v: &[f32], d: [usize; 2]| {
                Tensor::<Ad, 2>::from_data(TensorData::new(v.to_vec(), d), &device).require_grad()
            };
            let t1 =
                |v: &[f32]| Tensor::<Ad, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device).require_grad();
            let (c, h, rows) = (seed.c, seed.hidden, seed.rows);
            let p = &seed.params;
            (
                [t2(&seed.y, [rows, c]), t2(&seed.residual, [rows, c]), t2(&p[2], [c, h]), t2(&p[4], [h, c])],
                [t1(&p[0]), t1(&p[1]), t1(&p[3]), t1(&p[5])],
            )
        };
        let output_grad =
            Tensor::<Ad, 2>::from_data(TensorData::new(case.output_grad.clone(), [case.rows, case.c]), &device);
        let ([y, residual, w1, w2], [gamma, beta, b1, b2]) = tensors(&case);
        let out = block_mlp(
            y.clone(),
            residual.clone(),
            (gamma.clone(), beta.clone(), 1e-6),
            (w1.clone(), b1.clone()),
            (w2.clone(), b2.clone()),
        );
        let grads = (out * output_grad.clone()).sum().backward();
        let ([y_ref, residual_ref, w1_ref, w2_ref], [gamma_ref, beta_ref, b1_ref, b2_ref]) = tensors(&case);
        let normed = layer_norm(y_ref.clone(), gamma_ref.clone(), beta_ref.clone(), 1e-6);
        let hidden = gelu(linear(normed, w1_ref.clone(), b1_ref.clone()));
        let want = residual_ref.clone() + linear(hidden, w2_ref.clone(), b2_ref.clone());
        let grads_ref = (want * output_grad).sum().backward();
        let pairs2 =
            [("y", &y, &y_ref), ("residual", &residual, &residual_ref), ("W1", &w1, &w1_ref), ("W2", &w2, &w2_ref)];
        for (name, got, want) in pairs2 {
            close(&to_vec(got.grad(&grads).unwrap()), &to_vec(want.grad(&grads_ref).unwrap()), name);
        }
        let pairs1 = [
            ("norm scale", &gamma, &gamma_ref),
            ("norm shift", &beta, &beta_ref),
            ("b1", &b1, &b1_ref),
            ("b2", &b2, &b2_ref),
        ];
        for (name, got, want) in pairs1 {
            close(&to_vec(got.grad(&grads).unwrap()), &to_vec(want.grad(&grads_ref).unwrap()), name);
        }
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }
}
