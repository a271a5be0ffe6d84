//! Helpers shared by the unit tests.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::data::{synthetic, DataKind, DataSpec, Dataset, Normalisation, Split};
use crate::dw::{AssignmentKind, DwMode};
use crate::models::ModelSpec;
use crate::train::{DwSettings, TrainConfig};

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

/// The reference model at width 16 with one block, on 16 px synthetic stripes.
pub fn tiny_config(mode: DwMode, assignment: AssignmentKind) -> TrainConfig {
    let mut model = ModelSpec::named("reference", 1, synthetic::CLASSES, true).unwrap();
    model.depths = vec![1];
    model.dims = vec![16];
    TrainConfig {
        model,
        data: DataSpec::whole(DataKind::Idx),
        dw: DwSettings { assignment, ..DwSettings::new(mode) },
        epochs: 6,
        batch_size: 16,
        lr: 1e-2,
        min_lr: 1e-4,
        weight_decay: 0.05,
        warmup_epochs: 0.5,
        label_smoothing: 0.1,
        seed: 7,
        eval_every: 1,
    }
}

pub fn tiny_data(train: usize) -> Dataset {
    let train = synthetic::make(train, 16, 1);
    let test = synthetic::make(180, 16, 2);
    Dataset {
        name: "synthetic".into(),
        classes: synthetic::CLASSES,
        shape: train.shape,
        normalisation: Normalisation::of(&train),
        train: Split::Memory(train),
        test: Split::Memory(test),
    }
}
