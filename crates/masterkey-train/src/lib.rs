//! Training depthwise-separable CNNs whose depthwise filters are trainable,
//! frozen to a bank of master keys, initialised from it, or frozen random.
//!
//! Built on burn 0.21 (the version whose CPU `flex` and `cuda` backends both
//! build offline). Models are generic over the backend; the CPU backend is
//! the default and CUDA is the `cuda` cargo feature.

/// The burn this crate is built on, for callers that name backends.
pub use burn;

pub mod checkpoint;
mod cpu;
pub mod data;
pub mod dw;
pub mod dw_op;
pub mod experiment;
pub mod gelu_op;
pub mod layers;
pub mod linear_op;
pub mod models;
pub mod norm_op;
pub mod optim;
pub mod patch_op;
pub mod rng;
pub mod state_dict;
pub mod train;

#[cfg(test)]
mod testing;

use burn::tensor::backend::AutodiffBackend;

/// What the models need of a backend: burn's operations plus this crate's
/// depthwise convolution, GELU, LayerNorm, linear layer and patch gathering
/// (backend extensions with fast CPU kernels).
pub trait ModelBackend:
    dw_op::DepthwiseBackend
    + gelu_op::GeluBackend
    + norm_op::LayerNormBackend
    + linear_op::LinearBackend
    + patch_op::PatchBackend
{
}

impl<B> ModelBackend for B where
    B: dw_op::DepthwiseBackend
        + gelu_op::GeluBackend
        + norm_op::LayerNormBackend
        + linear_op::LinearBackend
        + patch_op::PatchBackend
{
}

/// An autodiff backend whose training and evaluation passes both run
/// [`ModelBackend`] operations.
pub trait ModelAutodiffBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> ModelAutodiffBackend for B
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
}

/// The CPU backend (burn `flex`).
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with autodiff, used for training.
pub type TrainBackend = burn::backend::Autodiff<CpuBackend>;

#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub type CudaTrainBackend = burn::backend::Autodiff<CudaBackend>;
