//! Helpers shared by the reader tests (each test binary uses a subset).
#![allow(dead_code)]

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
