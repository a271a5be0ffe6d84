//! The block MLP on the CPU backend, fused: each task takes a slab of rows
//! through every step, forward and backward (see the module above).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{TensorData, TensorMetadata};
use rayon::prelude::*;

use super::{MlpBackend, MlpGrads, MlpParams, MlpSaved};
use crate::cpu::{assume_written, values, written, written_all, Isa};
use crate::gelu_op::simd as gelu_simd;
use crate::linear_op::{product, product_on_thread, Matrix};
use crate::norm_op::simd as norm_simd;

/// Rows per forward task: the task's hidden rows (`ROWS_PER_TASK x 4C`
/// values, 128 KiB at C = 64) and its normalised input stay in L2.
pub(super) const ROWS_PER_TASK: usize = 128;

/// Rows per backward task: twice the forward's, so that the weight
/// gradients' products sum over more rows and fewer partial sums are added.
pub(super) const BACKWARD_ROWS_PER_TASK: usize = 256;

/// Parameter gradients per parallel task when the backward tasks' partial
/// sums are added up.
const SUMS_PER_TASK: usize = 4096;

/// The parameters' values, borrowed from their CPU tensors.
struct Weights<'a> {
    gamma: Cow<'a, [f32]>,
    beta: Cow<'a, [f32]>,
    eps: f32,
    w1: Cow<'a, [f32]>,
    b1: Cow<'a, [f32]>,
    w2: Cow<'a, [f32]>,
    b2: Cow<'a, [f32]>,
    /// The block's width `C` and the hidden one `H`.
    c: usize,
    hidden: usize,
}

impl<'a> Weights<'a> {
    fn of(p: &'a MlpParams<Flex>) -> Self {
        let [c, hidden]: [usize; 2] = p.expand_weight.shape().dims();
        Weights {
            gamma: values(&p.norm_gamma),
            beta: values(&p.norm_beta),
            eps: p.eps,
            w1: values(&p.expand_weight),
            b1: values(&p.expand_bias),
            w2: values(&p.project_weight),
            b2: values(&p.project_bias),
            c,
            hidden,
        }
    }

    fn expand(&self) -> Matrix<'_> {
        Matrix::new(&self.w1, self.c, self.hidden)
    }

    fn project(&self) -> Matrix<'_> {
        Matrix::new(&self.w2, self.hidden, self.c)
    }

    /// `LN(y)` of one task's rows.
    fn normed(&self, isa: Isa, y: &[f32]) -> Vec<f32> {
        // SAFETY: `forward_rows` writes every row.
        unsafe { written(y.len(), |out| norm_simd::forward_rows(isa, y, &self.gamma, &self.beta, self.eps, out)) }
    }

    /// One task's rows through the whole MLP: `out = residual + GELU(h) W2 +
    /// b2` with `h = LN(y) W1 + b1`, `GELU(h)` written to `activated` and, where
    /// asked, `GELU'(h)` to `derivative`.
    fn forward_rows(
        &self,
        isa: Isa,
        (y, residual): (&[f32], &[f32]),
        out: &mut [MaybeUninit<f32>],
        activated: &mut [MaybeUninit<f32>],
        derivative: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let (c, n) = (self.c, y.len() / self.c);
        let normed = self.normed(isa, y);
        // SAFETY: the bias fills every row, then the product adds onto it.
        let pre = unsafe {
            written(n * self.hidden, |pre| {
                for row in pre.chunks_exact_mut(self.hidden) {
                    row.iter_mut().zip(self.b1.iter()).for_each(|(p, &b)| {
                        p.write(b);
                    });
                }
                product(&Matrix::new(&normed, n, c), &self.expand(), pre, true, false);
            })
        };
        match derivative {
            Some(derivative) => gelu_simd::gelu_and_derivative_slice(isa, &pre, activated, derivative),
            None => gelu_simd::gelu_slice(isa, &pre, activated),
        }
        // SAFETY: both GELU loops write every value of `activated`.
        let activated = unsafe { assume_written(activated) };
        for (out, residual) in out.chunks_exact_mut(c).zip(residual.chunks_exact(c)) {
            for ((o, r), b) in out.iter_mut().zip(residual).zip(self.b2.iter()) {
                o.write(r + b);
            }
        }
        product(&Matrix::new(activated, n, self.hidden), &self.project(), out, true, false);
    }

    /// One task's rows backward: `y_grad` written, this task's parameter
    /// gradients added onto `partial` (laid out as [`PartialSums`]).
    fn backward_rows(&self, isa: Isa, rows: BackwardRows, y_grad: &mut [MaybeUninit<f32>], partial: &mut [f32]) {
        let BackwardRows { y, grad, activated, derivative } = rows;
        let (c, h, n) = (self.c, self.hidden, y.len() / self.c);
        let sums = PartialSums::split(partial, c, h);
        product_on_thread(&Matrix::new(activated, n, h).transposed(), &Matrix::new(grad, n, c), sums.project_weight);
        add_rows(grad, sums.project_bias);
        let mut hidden_grad = unwritten_product(&Matrix::new(grad, n, c), &self.project().transposed());
        gelu_simd::times_derivative(isa, derivative, &mut hidden_grad);
        add_rows(&hidden_grad, sums.expand_bias);
        let normed = self.normed(isa, y);
        let hidden_matrix = Matrix::new(&hidden_grad, n, h);
        product_on_thread(&Matrix::new(&normed, n, c).transposed(), &hidden_matrix, sums.expand_weight);
        let normed_grad = unwritten_product(&hidden_matrix, &self.expand().transposed());
        norm_simd::backward_rows(isa, y, &self.gamma, &normed_grad, self.eps, y_grad, sums.norm_gamma, sums.norm_beta);
    }
}

/// One backward task's rows of the saved tensors and of the output gradient.
struct BackwardRows<'a> {
    y: &'a [f32],
    grad: &'a [f32],
    activated: &'a [f32],
    derivative: &'a [f32],
}

/// One task's parameter gradients, in one buffer of [`PartialSums::len`] values.
struct PartialSums<'a> {
    project_weight: &'a mut [f32],
    expand_weight: &'a mut [f32],
    expand_bias: &'a mut [f32],
    project_bias: &'a mut [f32],
    norm_gamma: &'a mut [f32],
    norm_beta: &'a mut [f32],
}

impl<'a> PartialSums<'a> {
    fn len(c: usize, h: usize) -> usize {
        2 * c * h + h + 3 * c
    }

    fn split(buffer: &'a mut [f32], c: usize, h: usize) -> Self {
        let (project_weight, rest) = buffer.split_at_mut(h * c);
        let (expand_weight, rest) = rest.split_at_mut(c * h);
        let (expand_bias, rest) = rest.split_at_mut(h);
        let (project_bias, rest) = rest.split_at_mut(c);
        let (norm_gamma, norm_beta) = rest.split_at_mut(c);
        PartialSums { project_weight, expand_weight, expand_bias, project_bias, norm_gamma, norm_beta }
    }
}

/// `lhs rhs` in a fresh buffer, on the calling thread.
fn unwritten_product(lhs: &Matrix, rhs: &Matrix) -> Vec<f32> {
    // SAFETY: the product, not reading `out`, writes all of it.
    unsafe { written(lhs.rows() * rhs.cols(), |out| product(lhs, rhs, out, false, false)) }
}

/// `sums += every row of values`.
fn add_rows(values: &[f32], sums: &mut [f32]) {
    for row in values.chunks_exact(sums.len()) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

pub(super) fn tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl MlpBackend for Flex {
    fn block_mlp(y: FlexTensor, residual: FlexTensor, p: MlpParams<Flex>) -> FlexTensor {
        let shape = y.shape();
        let weights = Weights::of(&p);
        let (y, residual) = (values(&y), values(&residual));
        let (isa, chunk) = (Isa::best(), ROWS_PER_TASK * weights.c.max(1));
        // SAFETY: every task writes all of its output rows.
        let out = unsafe {
            written(y.len(), |out| {
                out.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(residual.par_chunks(chunk))).for_each(
                    |(out, rows)| {
                        // The GELU output, a scratch buffer here: inference keeps nothing.
                        let len = rows.0.len() / weights.c * weights.hidden;
                        let mut activated = Vec::with_capacity(len);
                        weights.forward_rows(isa, rows, out, &mut activated.spare_capacity_mut()[..len], None);
                    },
                );
            })
        };
        tensor(out, shape)
    }

    fn block_mlp_recorded(y: FlexTensor, residual: FlexTensor, p: MlpParams<Flex>) -> (FlexTensor, MlpSaved<Flex>) {
        let shape = y.shape();
        let weights = Weights::of(&p);
        let (c, h) = (weights.c, weights.hidden);
        let (ys, residual) = (values(&y), values(&residual));
        let (isa, rows) = (Isa::best(), ys.len() / c.max(1));
        let (chunk, hidden_chunk) = (ROWS_PER_TASK * c.max(1), ROWS_PER_TASK * h.max(1));
        // SAFETY: every task writes all of its rows of the three buffers.
        let [out, activated, derivative] = unsafe {
            written_all([ys.len(), rows * h, rows * h], |[out, activated, derivative]| {
                let outputs = out
                    .par_chunks_mut(chunk)
                    .zip(activated.par_chunks_mut(hidden_chunk).zip(derivative.par_chunks_mut(hidden_chunk)));
                outputs.zip(ys.par_chunks(chunk).zip(residual.par_chunks(chunk))).for_each(
                    |((out, (activated, derivative)), rows)| {
                        weights.forward_rows(isa, rows, out, activated, Some(derivative));
                    },
                );
            })
        };
        drop(weights);
        let saved =
            MlpSaved { y, activated: tensor(activated, [rows, h]), hidden: tensor(derivative, [rows, h]), params: p };
        (tensor(out, shape), saved)
    }

    fn block_mlp_backward(saved: MlpSaved<Flex>, output_grad: FlexTensor) -> MlpGrads<Flex> {
        let weights = Weights::of(&saved.params);
        let (c, h) = (weights.c, weights.hidden);
        let (y, grad) = (values(&saved.y), values(&output_grad));
        let (activated, derivative) = (values(&saved.activated), values(&saved.hidden));
        let (isa, rows) = (Isa::best(), y.len() / c.max(1));
        let (chunk, hidden_chunk) = (BACKWARD_ROWS_PER_TASK * c.max(1), BACKWARD_ROWS_PER_TASK * h.max(1));
        let per_task = PartialSums::len(c, h);
        let mut partials = vec![0.0f32; rows.div_ceil(BACKWARD_ROWS_PER_TASK) * per_task];
        let inputs = y.par_chunks(chunk).zip(grad.par_chunks(chunk));
        let hidden = activated.par_chunks(hidden_chunk).zip(derivative.par_chunks(hidden_chunk));
        // SAFETY: every task writes all of its rows of the input's gradient.
        let y_grad = unsafe {
            written(y.len(), |y_grad| {
                y_grad.par_chunks_mut(chunk).zip(partials.par_chunks_mut(per_task)).zip(inputs.zip(hidden)).for_each(
                    |((y_grad, partial), ((y, grad), (activated, derivative)))| {
                        let rows = BackwardRows { y, grad, activated, derivative };
                        weights.backward_rows(isa, rows, y_grad, partial);
                    },
                )
            })
        };
        // The tasks' sums added in task order, whatever the thread count.
        let mut total = vec![0.0f32; per_task];
        total.par_chunks_mut(SUMS_PER_TASK).enumerate().for_each(|(i, total)| {
            let start = i * SUMS_PER_TASK;
            for partial in partials.chunks_exact(per_task) {
                add_rows(&partial[start..start + total.len()], total);
            }
        });
        let sums = PartialSums::split(&mut total, c, h);
        MlpGrads {
            y: tensor(y_grad, [rows, c]),
            norm_gamma: tensor(sums.norm_gamma.to_vec(), [c]),
            norm_beta: tensor(sums.norm_beta.to_vec(), [c]),
            expand_weight: tensor(sums.expand_weight.to_vec(), [c, h]),
            expand_bias: tensor(sums.expand_bias.to_vec(), [h]),
            project_weight: tensor(sums.project_weight.to_vec(), [h, c]),
            project_bias: tensor(sums.project_bias.to_vec(), [c]),
        }
    }
}
