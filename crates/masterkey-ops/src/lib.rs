//! The operations masterkey's networks are made of, beyond burn's own: the
//! depthwise convolution (with the frozen keys' offset), GELU, LayerNorm, the
//! linear layer, patch gathering and the ConvNeXt block's MLP fused
//! (forward and backward). Each is a burn backend extension: a
//! trait whose default bodies are burn's operations (so every backend has
//! it), implemented with direct kernels where measured speed asked for them,
//! and with a backward step for autodiff.
//!
//! A crate of its own, as burn keeps its backends apart from its models: the
//! models and training loops (`masterkey-train`) only name these traits.

mod cpu;
pub mod dw_op;
pub mod gelu_op;
#[cfg(feature = "gpu")]
mod gpu;
pub mod linear_op;
pub mod mlp_op;
pub mod norm_op;
pub mod patch_op;

#[cfg(test)]
mod testing;

/// Every operation of this crate: what the models need of a backend.
pub trait OpsBackend:
    dw_op::DepthwiseBackend
    + gelu_op::GeluBackend
    + norm_op::LayerNormBackend
    + linear_op::LinearBackend
    + mlp_op::MlpBackend
    + patch_op::PatchBackend
{
}

impl<B> OpsBackend for B where
    B: dw_op::DepthwiseBackend
        + gelu_op::GeluBackend
        + norm_op::LayerNormBackend
        + linear_op::LinearBackend
        + mlp_op::MlpBackend
        + patch_op::PatchBackend
{
}

/// The CPU backend (burn `flex`).
pub type CpuBackend = burn::backend::Flex;

#[cfg(feature = "cuda")]
pub use gpu::CudaBackend;
#[cfg(feature = "wgpu")]
pub use gpu::WgpuBackend;
