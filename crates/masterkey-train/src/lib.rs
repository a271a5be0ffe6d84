//! Training depthwise-separable CNNs whose depthwise filters are trainable,
//! frozen to a bank of master keys, initialised from it, or frozen random.
//!
//! Built on burn 0.21 (the version whose CPU `flex` and `cuda` backends both
//! build offline). Models are generic over the backend; the CPU backend is
//! the default, CUDA and wgpu are the `cuda` and `wgpu` cargo features.

/// The burn this crate is built on, for callers that name backends.
pub use burn;

pub mod checkpoint;
pub mod dw;
pub mod experiment;
pub mod layers;
pub mod models;
pub mod optim;
mod record_check;
pub mod scalespace_dw;
pub mod state_dict;
pub mod train;

pub use masterkey_core::rng;
pub use masterkey_data as data;
pub use masterkey_ops::{dw_op, gelu_op, linear_op, mlp_op, norm_op, patch_op};

#[cfg(test)]
mod testing;

use burn::tensor::backend::AutodiffBackend;

/// What the models need of a backend: burn's operations plus those of
/// `masterkey-ops` (backend extensions with fast CPU kernels).
pub use masterkey_ops::OpsBackend as ModelBackend;

/// An autodiff backend whose training and evaluation passes both run
/// [`ModelBackend`] operations.
pub trait ModelAutodiffBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> ModelAutodiffBackend for B
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
}

pub use masterkey_ops::CpuBackend;
/// The CPU backend with autodiff, used for training.
pub type TrainBackend = burn::backend::Autodiff<CpuBackend>;

#[cfg(feature = "cuda")]
pub use masterkey_ops::CudaBackend;
/// An NVIDIA GPU with autodiff.
#[cfg(feature = "cuda")]
pub type CudaTrainBackend = burn::backend::Autodiff<CudaBackend>;

#[cfg(feature = "wgpu")]
pub use masterkey_ops::WgpuBackend;
/// A GPU through wgpu (Vulkan, Metal, DirectX 12) with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuTrainBackend = burn::backend::Autodiff<WgpuBackend>;
