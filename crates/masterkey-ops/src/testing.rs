//! Helpers shared by the unit tests.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub type Cpu = crate::CpuBackend;
pub type Ad = burn::backend::Autodiff<Cpu>;

pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}
