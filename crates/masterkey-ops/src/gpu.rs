//! burn's GPU backends as this crate runs them: CubeCL's CUDA and wgpu
//! runtimes, without burn's operation fusion (a backend extension's own
//! operations are implemented on the unfused backend; on the fused one each
//! would need a fusion-aware wrapper). The depthwise convolution runs the
//! kernels of `dw_op::cube`; GELU, LayerNorm, linear, the block MLP and patches
//! run burn's own operations (the traits' default bodies).

use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::gelu_op::GeluBackend;
use crate::linear_op::LinearBackend;
use crate::mlp_op::MlpBackend;
use crate::norm_op::LayerNormBackend;
use crate::patch_op::PatchBackend;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GeluBackend for CubeBackend<R, F, I, BT> {}
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> LayerNormBackend for CubeBackend<R, F, I, BT> {}
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> LinearBackend for CubeBackend<R, F, I, BT> {}
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MlpBackend for CubeBackend<R, F, I, BT> {}
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> PatchBackend for CubeBackend<R, F, I, BT> {}

/// CUDA (NVIDIA GPUs).
#[cfg(feature = "cuda")]
pub type CudaBackend = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// wgpu: Vulkan, Metal or DirectX 12, whichever the machine has (Mesa's
/// lavapipe runs it on a CPU).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
