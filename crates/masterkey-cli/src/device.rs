//! `--device`: the burn backend that training, evaluation and the timing
//! benchmarks run on.

use anyhow::{bail, Result};
use masterkey_train::ModelAutodiffBackend;

/// Where the networks run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The CPU: burn's flex backend with masterkey's kernels.
    #[default]
    Cpu,
    /// An NVIDIA GPU through CubeCL's CUDA runtime (a build with `--features cuda`).
    Cuda,
    /// A GPU through wgpu: Vulkan, Metal or DirectX 12 (a build with `--features wgpu`).
    Wgpu,
}

/// Work generic over the autodiff backend it runs on.
pub trait OnDevice {
    type Output;
    fn run<B: ModelAutodiffBackend>(self) -> Result<Self::Output>;
}

impl Device {
    /// An error naming the cargo feature where this build has no backend for
    /// the device: checked before any data is loaded.
    pub fn ensure_built(self) -> Result<()> {
        let missing = match self {
            Device::Cpu => None,
            Device::Cuda => cfg!(not(feature = "cuda")).then_some("cuda"),
            Device::Wgpu => cfg!(not(feature = "wgpu")).then_some("wgpu"),
        };
        if let Some(feature) = missing {
            bail!(
                "--device {feature}: this masterkey was built without the `{feature}` feature (cargo build --release -p \
                 masterkey-cli --features {feature})"
            );
        }
        Ok(())
    }

    pub fn run<J: OnDevice>(self, job: J) -> Result<J::Output> {
        match self {
            Device::Cpu => job.run::<masterkey_train::TrainBackend>(),
            #[cfg(feature = "cuda")]
            Device::Cuda => job.run::<masterkey_train::CudaTrainBackend>(),
            #[cfg(feature = "wgpu")]
            Device::Wgpu => job.run::<masterkey_train::WgpuTrainBackend>(),
            // The devices this build has no backend for.
            #[allow(unreachable_patterns)]
            _ => {
                self.ensure_built()?;
                bail!("--device {self:?}: no backend")
            }
        }
    }
}
