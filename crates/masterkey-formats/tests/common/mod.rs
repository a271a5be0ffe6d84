//! Helpers shared by the reader tests (each test binary uses a subset).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use masterkey_core::ModelFilters;
use masterkey_formats::read_model;

/// Filters `[c][r][col]` (the project's layout) with value `100*c + 10*r + col`:
/// any flip, transpose or channel mix-up changes them.
pub fn asymmetric(channels: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(channels * kh * kw);
    for c in 0..channels {
        for r in 0..kh {
            for col in 0..kw {
                out.push((100 * c + 10 * r + col) as f32);
            }
        }
    }
    out
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Reads `bytes` written to a file called `name`; it must succeed.
pub fn read_as(name: &str, bytes: &[u8]) -> ModelFilters {
    let dir = tempfile::tempdir().unwrap();
    read_model(&write(dir.path(), name, bytes)).unwrap()
}

/// The error for `bytes` written to a file called `name`, checked to name the file.
pub fn read_error_as(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, bytes);
    let message = read_model(&path).expect_err("expected an error").to_string();
    assert!(message.contains(name), "error does not name the file: {message}");
    message
}

/// Filter count per kernel size, e.g. `{3x3: 64, 5x5: 800}`.
pub fn filters_per_kernel(model: &ModelFilters) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for layer in &model.layers {
        *counts.entry(layer.kernel.to_string()).or_default() += layer.channels;
    }
    counts
}

pub fn report(model: &ModelFilters) {
    let first = model.layers.first().map_or("", |l| l.name.as_str());
    println!(
        "{}: {} DW layers (first `{first}`), filters per kernel {:?}",
        model.source.display(),
        model.layers.len(),
        filters_per_kernel(model)
    );
}

/// A real model from a pinned registry package, as an independent reading of
/// the file (a standard-library Python script) found it.
pub struct RealModel {
    pub id: &'static str,
    pub format: &'static str,
    pub layers: usize,
    pub filters_per_kernel: &'static [(&'static str, usize)],
    pub first_layer: &'static str,
    pub last_layer: &'static str,
    /// Channel 0 of the first layer, row by row.
    pub first_filter: &'static [f32],
}

/// Fetches the model and checks that the reader finds what `expected` says,
/// and that its filters look trained: bounded, and hardly any constant (a
/// few dead filters are normal in a trained network).
pub fn check_real_model(expected: &RealModel) {
    let id = expected.id;
    let entry = masterkey_fetch::model(id).unwrap_or_else(|| panic!("`{id}` is a default model"));
    let model = read_model(&masterkey_fetch::ensure(entry).expect("fetch from the registry")).unwrap();
    report(&model);
    assert_eq!(model.format, expected.format, "{id}");
    assert_eq!(model.layers.len(), expected.layers, "{id}");
    let counts = expected.filters_per_kernel.iter().map(|&(k, n)| (k.to_string(), n)).collect();
    assert_eq!(filters_per_kernel(&model), counts, "{id}");
    let (first, last) = (&model.layers[0], &model.layers[model.layers.len() - 1]);
    assert_eq!((first.name.as_str(), last.name.as_str()), (expected.first_layer, expected.last_layer), "{id}");
    let first_filter = first.filter(0);
    assert_eq!(first_filter.len(), expected.first_filter.len(), "{id}");
    for (found, wanted) in first_filter.iter().zip(expected.first_filter) {
        assert!((found - wanted).abs() <= 1e-6 * wanted.abs().max(1.0), "{id}: {first_filter:?}");
    }

    let filters: Vec<&[f32]> = model.layers.iter().flat_map(|l| (0..l.channels).map(move |c| l.filter(c))).collect();
    assert!(filters.iter().flat_map(|f| f.iter()).all(|w| w.is_finite() && w.abs() < 1000.0), "{id}");
    let constant = filters.iter().filter(|f| f.iter().all(|&w| w == f[0])).count();
    assert!(constant * 100 <= filters.len(), "{id}: {constant} of {} filters are constant", filters.len());
}
