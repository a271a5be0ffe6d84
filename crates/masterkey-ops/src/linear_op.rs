//! `y = x W + b` on `x [rows, in]`, `W [in, out]` as one backend operation,
//! through burn's backend extension like [`crate::dw_op`]: the default bodies
//! are burn's own linear and its gradients, the CPU backend calls the `gemm`
//! kernels burn's CPU backend uses, autodiff gets a backward step.
//!
//! Hand-written because burn 0.21's CPU linear zero-fills every output
//! before the product writes it, then adds the bias in another full pass:
//! on the reference model's MLP (hidden `[131072, 256]` per block) those
//! passes were a tenth of a step. Here the bias is written first and the
//! product accumulates onto it; gradients are written by the product alone.

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

use crate::cpu::{values, written};

/// A backend with a linear operation of its own; see the module docs.
pub trait LinearBackend: Backend {
    /// `x [rows, in]`, `weight [in, out]`, `bias [out]`: `[rows, out]`.
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear(x, weight, Some(bias))
    }

    /// `output_grad W^T`.
    fn fused_linear_x_backward(weight: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_x_backward(weight, output_grad)
    }

    /// `x^T output_grad`.
    fn fused_linear_weight_backward(x: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_weight_backward(x, output_grad)
    }

    /// `output_grad` summed over rows.
    fn fused_linear_bias_backward(output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_bias_backward(output_grad)
    }
}

/// `x W + b` over the last axis of `x` (any rank), differentiable in all three.
pub fn linear<B: LinearBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = x.shape().num_elements() / d_in.max(1);
    let float = |t: TensorPrimitive<B>| t.tensor();
    let y = B::fused_linear(
        float(x.reshape([rows, d_in]).into_primitive()),
        float(weight.into_primitive()),
        float(bias.into_primitive()),
    );
    dims[D - 1] = d_out;
    Tensor::<B, 2>::new(TensorPrimitive::Float(y)).reshape(dims)
}

#[derive(Debug)]
struct LinearBackward;

impl<B: LinearBackend> Backward<B, 3> for LinearBackward {
    /// Input and weight nodes.
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::fused_linear_x_backward(weight, grad.clone()));
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::fused_linear_weight_backward(x, grad.clone()));
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, B::fused_linear_bias_backward(grad));
        }
    }
}

impl<B: LinearBackend, C: CheckpointStrategy> LinearBackend for Autodiff<B, C> {
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
                prep.finish(state, B::fused_linear(x.primitive, weight.primitive, bias.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_linear(x.primitive, weight.primitive, bias.primitive)),
        }
    }
}

/// Rows per parallel task of the bias gradient; the partial sums are added
/// in task order, so the result does not depend on the thread count.
const ROWS_PER_TASK: usize = 1024;

/// A matrix: values, rows, columns, and the strides of a row and a column
/// (a transposed view swaps them).
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    pub(crate) fn new(values: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "matrix of {rows}x{cols}");
        Matrix { values, rows, cols, row_stride: cols, col_stride: 1 }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn transposed(self) -> Self {
        Matrix { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `lhs rhs`, added onto `out` (`lhs.rows x rhs.cols`, row-major) if
/// `accumulate`, else written over whatever `out` holds; split across cores
/// where `parallel` and the product is large enough to gain from it.
pub(crate) fn product(
    lhs: &Matrix,
    rhs: &Matrix,
    out: &mut [std::mem::MaybeUninit<f32>],
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(rhs.rows == k && out.len() == m * n, "product of {m}x{k} by {}x{n}", rhs.rows);
    let parallelism =
        if parallel && m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let stride = |s: usize| s as isize;
    // SAFETY: the asserts above and in `Matrix::new` keep every index gemm
    // forms (row * row_stride + col * col_stride) inside its slice; `out`
    // is only read when `accumulate`, and then the caller has written it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr().cast::<f32>(),
            1,
            stride(n),
            accumulate,
            lhs.values.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.values.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `lhs rhs` written over `out`, on the calling thread (for callers that
/// are parallel tasks themselves).
pub(crate) fn product_on_thread(lhs: &Matrix, rhs: &Matrix, out: &mut [f32]) {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and `product`
    // writes only initialised values into it.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
    product(lhs, rhs, out, false, false);
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    t.shape().dims()
}

impl LinearBackend for Flex {
    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let ([rows, d_in], [_, d_out]) = (dims2(&x), dims2(&weight));
        let (x, weight, bias) = (values(&x), values(&weight), values(&bias));
        // SAFETY: the bias fills every row, then the product accumulates onto it.
        let out = unsafe {
            written(rows * d_out, |out| {
                out.par_chunks_mut(d_out.max(1)).for_each(|row| {
                    row.iter_mut().zip(bias.iter()).for_each(|(o, &b)| {
                        o.write(b);
                    })
                });
                product(&Matrix::new(&x, rows, d_in), &Matrix::new(&weight, d_in, d_out), out, true, true);
            })
        };
        FlexTensor::from_data(TensorData::new(out, [rows, d_out]))
    }

    fn fused_linear_x_backward(weight: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        let ([d_in, d_out], [rows, _]) = (dims2(&weight), dims2(&output_grad));
        let (weight, grad) = (values(&weight), values(&output_grad));
        // SAFETY: the product, not reading `out`, writes all of it.
        let out = unsafe {
            written(rows * d_in, |out| {
                product(
                    &Matrix::new(&grad, rows, d_out),
                    &Matrix::new(&weight, d_in, d_out).transposed(),
                    out,
                    false,
                    true,
                );
            })
        };
        FlexTensor::from_data(TensorData::new(out, [rows, d_in]))
    }

    fn fused_linear_weight_backward(x: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        let ([rows, d_in], [_, d_out]) = (dims2(&x), dims2(&output_grad));
        let (x, grad) = (values(&x), values(&output_grad));
        // SAFETY: as above.
        let out = unsafe {
            written(d_in * d_out, |out| {
                product(&Matrix::new(&x, rows, d_in).transposed(), &Matrix::new(&grad, rows, d_out), out, false, true);
            })
        };
        FlexTensor::from_data(TensorData::new(out, [d_in, d_out]))
    }

    fn fused_linear_bias_backward(output_grad: FlexTensor) -> FlexTensor {
        let [_, d_out] = dims2(&output_grad);
        let grad = values(&output_grad);
        let partials: Vec<Vec<f64>> = grad
            .par_chunks(ROWS_PER_TASK * d_out.max(1))
            .map(|rows| {
                let mut sums = vec![0.0f64; d_out];
                for row in rows.chunks_exact(d_out) {
                    sums.iter_mut().zip(row).for_each(|(s, &g)| *s += g as f64);
                }
                sums
            })
            .collect();
        let total: Vec<f32> = (0..d_out).map(|j| partials.iter().map(|p| p[j]).sum::<f64>() as f32).collect();
        FlexTensor::from_data(TensorData::new(total, [d_out]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad};
    use masterkey_core::rng::SplitMix;

    /// Forward and every gradient against burn's own linear, on a 4-d input
    /// (flattened to rows) and on one large enough to run in parallel.
    #[test]
    fn matches_burns_linear_and_its_gradients() {
        let device = Default::default();
        for ([n, h, w], d_in, d_out) in [([2, 3, 5], 7, 11), ([4, 16, 16], 64, 96)] {
            let mut rng = SplitMix::new((d_in * d_out) as u64);
            let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (xs, ws, bs, rs) = (draw(n * h * w * d_in), draw(d_in * d_out), draw(d_out), draw(n * h * w * d_out));
            let x = || Tensor::<Ad, 4>::from_data(TensorData::new(xs.clone(), [n, h, w, d_in]), &device).require_grad();
            let weight =
                || Tensor::<Ad, 2>::from_data(TensorData::new(ws.clone(), [d_in, d_out]), &device).require_grad();
            let bias = || Tensor::<Ad, 1>::from_data(TensorData::new(bs.clone(), [d_out]), &device).require_grad();
            let r = Tensor::<Ad, 4>::from_data(TensorData::new(rs.clone(), [n, h, w, d_out]), &device);
            let (x1, w1, b1, x2, w2, b2) = (x(), weight(), bias(), x(), weight(), bias());
            let ours = linear(x1.clone(), w1.clone(), b1.clone());
            let theirs = burn::tensor::module::linear(x2.clone(), w2.clone(), Some(b2.clone()));
            let what = format!("{n}x{h}x{w}x{d_in} -> {d_out}");
            close(&to_vec(ours.clone()), &to_vec(theirs.clone()), &format!("{what} forward"));
            let (grads, grads_ref) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(&to_vec(x1.grad(&grads).unwrap()), &to_vec(x2.grad(&grads_ref).unwrap()), &format!("{what} dx"));
            close(&to_vec(w1.grad(&grads).unwrap()), &to_vec(w2.grad(&grads_ref).unwrap()), &format!("{what} dW"));
            close(&to_vec(b1.grad(&grads).unwrap()), &to_vec(b2.grad(&grads_ref).unwrap()), &format!("{what} db"));
        }
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }
}
