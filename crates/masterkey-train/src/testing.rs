//! Helpers shared by the unit tests.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub type Cpu = crate::CpuBackend;
pub type Ad = crate::TrainBackend;

pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

/// Asserts `|got - want| <= tol * max(1, |want|)` elementwise.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * w.abs().max(1.0), "{what}[{i}]: got {g}, want {w}");
    }
}
