//! The non-overlapping `k x k` patches of a channels-last image batch as the
//! rows of a matrix (`[N, H, W, C]` to `[N * H/k * W/k, k*k*C]`, patch
//! order `(ky, kx, c)`), and back for the gradient, as a backend operation
//! like [`crate::gelu_op`]: the default bodies are burn's reshape and permute,
//! the CPU backend copies whole patch rows (`k*C` contiguous values) on all
//! cores, autodiff gets a backward step.
//!
//! Hand-written because burn 0.21's CPU backend copies this permutation
//! (six axes that merge to no fewer than four) element by element on one
//! thread: on the small-data recipe those copies, forward and backward, were
//! the largest serial part of a step. Rows and columns past the last whole
//! patch are dropped (their gradient is zero), as a stride-`k` convolution
//! drops them.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use crate::cpu::{values, written};

/// A backend with the patch operations of this module.
pub trait PatchBackend: Backend {
    /// `[N, H, W, C]` to `[N * (H/k) * (W/k), k*k*C]`.
    fn patches(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        let x = Tensor::<Self, 4>::new(TensorPrimitive::Float(x));
        let [n, h, w, c] = x.dims();
        let (oh, ow) = (h / k, w / k);
        let x = if (oh * k, ow * k) == (h, w) { x } else { x.slice([0..n, 0..oh * k, 0..ow * k, 0..c]) };
        let rows = x.reshape([n, oh, k, ow, k, c]).permute([0, 1, 3, 2, 4, 5]).reshape([n * oh * ow, k * k * c]);
        rows.into_primitive().tensor()
    }

    /// The inverse: patch rows back to an `[N, H, W, C]` image batch, zero
    /// where no patch reaches.
    fn unpatches(rows: FloatTensor<Self>, shape: [usize; 4], k: usize) -> FloatTensor<Self> {
        let [n, h, w, c] = shape;
        let (oh, ow) = (h / k, w / k);
        let rows = Tensor::<Self, 2>::new(TensorPrimitive::Float(rows));
        let device = rows.device();
        let image = rows.reshape([n, oh, ow, k, k, c]).permute([0, 1, 3, 2, 4, 5]).reshape([n, oh * k, ow * k, c]);
        let image = if (oh * k, ow * k) == (h, w) {
            image
        } else {
            Tensor::zeros([n, h, w, c], &device).slice_assign([0..n, 0..oh * k, 0..ow * k, 0..c], image)
        };
        image.into_primitive().tensor()
    }
}

/// The patches of `x` (`[N, H, W, C]`) as rows, differentiable on an autodiff backend.
pub fn patches<B: PatchBackend>(x: Tensor<B, 4>, k: usize) -> Tensor<B, 2> {
    Tensor::new(TensorPrimitive::Float(B::patches(x.into_primitive().tensor(), k)))
}

#[derive(Debug)]
struct PatchesBackward;

impl<B: PatchBackend> Backward<B, 1> for PatchesBackward {
    type State = ([usize; 4], usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let (shape, k) = ops.state;
            grads.register::<B>(node.id, B::unpatches(grad, shape, k));
        }
    }
}

impl<B: PatchBackend, C: CheckpointStrategy> PatchBackend for Autodiff<B, C> {
    fn patches(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        let shape = x.shape().dims::<4>();
        match PatchesBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((shape, k), B::patches(x.primitive, k)),
            OpsKind::UnTracked(prep) => prep.finish(B::patches(x.primitive, k)),
        }
    }
}

impl PatchBackend for Flex {
    fn patches(x: FlexTensor, k: usize) -> FlexTensor {
        let [n, h, w, c] = x.shape().dims::<4>();
        let (oh, ow, run) = (h / k, w / k, k * c);
        let x = values(&x);
        let per_image = oh * ow * k * run;
        // SAFETY: every (ox, ky) run of every patch row of every image is written.
        let out = unsafe {
            written(n * per_image, |out| {
                out.par_chunks_mut(per_image).enumerate().for_each(|(b, out)| {
                    for (r, row) in out.chunks_exact_mut(k * run).enumerate() {
                        let (oy, ox) = (r / ow, r % ow);
                        for (ky, dst) in row.chunks_exact_mut(run).enumerate() {
                            let src = &x[((b * h + oy * k + ky) * w + ox * k) * c..][..run];
                            dst.iter_mut().zip(src).for_each(|(d, &s)| {
                                d.write(s);
                            });
                        }
                    }
                });
            })
        };
        FlexTensor::from_data(TensorData::new(out, [n * oh * ow, k * run]))
    }

    fn unpatches(rows: FlexTensor, [n, h, w, c]: [usize; 4], k: usize) -> FlexTensor {
        let (oh, ow, run) = (h / k, w / k, k * c);
        let rows = values(&rows);
        // Zeroed: rows and columns past the last whole patch get no gradient.
        let mut out = vec![0.0f32; n * h * w * c];
        out.par_chunks_mut(h * w * c).enumerate().for_each(|(b, image)| {
            let patch_rows = &rows[b * oh * ow * k * run..][..oh * ow * k * run];
            for (r, row) in patch_rows.chunks_exact(k * run).enumerate() {
                let (oy, ox) = (r / ow, r % ow);
                for (ky, src) in row.chunks_exact(run).enumerate() {
                    image[((oy * k + ky) * w + ox * k) * c..][..run].copy_from_slice(src);
                }
            }
        });
        FlexTensor::from_data(TensorData::new(out, [n, h, w, c]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_vec, Ad, Cpu};

    /// burn's own reshape-and-permute bodies, run on the CPU backend.
    struct Reference;
    impl Reference {
        fn patches(x: Tensor<Cpu, 4>, k: usize) -> Vec<f32> {
            let [n, h, w, c] = x.dims();
            let (oh, ow) = (h / k, w / k);
            let x = x.slice([0..n, 0..oh * k, 0..ow * k, 0..c]);
            to_vec(x.reshape([n, oh, k, ow, k, c]).permute([0, 1, 3, 2, 4, 5]).reshape([n * oh * ow, k * k * c]))
        }
    }

    #[test]
    fn patches_and_their_gradient_match_burns_permutation() {
        let device = Default::default();
        // Whole patches, a dropped row and column, one channel (the stem).
        for [n, h, w, c, k] in [[2, 4, 6, 3, 2], [3, 7, 5, 4, 2], [2, 12, 8, 1, 4]] {
            let values: Vec<f32> = (0..n * h * w * c).map(|v| v as f32 * 0.5 - 7.0).collect();
            let x = Tensor::<Cpu, 4>::from_data(TensorData::new(values.clone(), [n, h, w, c]), &device);
            let want = Reference::patches(x.clone(), k);
            assert_eq!(to_vec(patches(x, k)), want, "[{n}, {h}, {w}, {c}] k {k}");

            // d(sum(patches * r))/dx: r routed back to the pixel each value came from.
            let x = Tensor::<Ad, 4>::from_data(TensorData::new(values, [n, h, w, c]), &device).require_grad();
            let rows = patches(x.clone(), k);
            let r: Vec<f32> = (0..rows.dims().iter().product::<usize>()).map(|v| (v % 11) as f32 - 5.0).collect();
            let weights = Tensor::<Ad, 2>::from_data(TensorData::new(r.clone(), rows.dims()), &device);
            let grads = (rows * weights).sum().backward();
            let got = to_vec(x.grad(&grads).unwrap());
            let index = Tensor::<Cpu, 4>::from_data(
                TensorData::new((0..n * h * w * c).map(|v| v as f32).collect::<Vec<_>>(), [n, h, w, c]),
                &device,
            );
            let mut want = vec![0.0f32; n * h * w * c];
            for (source, &g) in Reference::patches(index, k).iter().zip(&r) {
                want[*source as usize] = g;
            }
            assert_eq!(got, want, "gradient of [{n}, {h}, {w}, {c}] k {k}");
        }
    }
}
