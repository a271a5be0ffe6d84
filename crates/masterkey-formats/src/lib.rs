//! Readers that pull every depthwise (DW) filter out of a model file and map
//! it to the project's one layout (see `masterkey_core`).
//!
//! The format is detected from the content (magic bytes, structure), never
//! from the file name. DW layers are found by shape and group count; layer
//! names are only hints.

mod detect;
mod dtype;
mod layout;
mod named;
mod onnx;
mod pickle;
mod safetensors_reader;
mod tfjs;
mod tflite;
mod torch;

use std::path::Path;

pub use detect::{detect, Format};
use masterkey_core::{ModelFilters, Result};
pub use named::dw_shape;

/// Reads every depthwise layer of the model at `path`.
pub fn read_model(path: &Path) -> Result<ModelFilters> {
    let format = detect(path)?;
    let layers = match format {
        Format::Safetensors => safetensors_reader::read_single(path)?,
        Format::SafetensorsIndex => safetensors_reader::read_sharded(path)?,
        Format::PytorchZip => torch::read_zip(path)?,
        Format::PytorchLegacy => torch::read_legacy(path)?,
        Format::Onnx => onnx::read(path)?,
        Format::Tflite => tflite::read(path)?,
        Format::Tfjs => tfjs::read(path)?,
    };
    Ok(ModelFilters { source: path.to_path_buf(), format: format.name().to_string(), layers })
}

/// One float tensor of a state dict, converted to f32 and laid out row-major
/// (PyTorch's contiguous order), whatever its dtype and strides in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Reads every float tensor of the state dict at `path` — weights, biases,
/// normalisation statistics, not only depthwise layers — in the file's order
/// (PyTorch) or in natural name order (safetensors, whose header keeps none).
/// Integer buffers are left out. Formats that hold a graph rather than a
/// state dict (ONNX, TFLite, TF.js) and sharded safetensors are refused.
pub fn read_state_dict(path: &Path) -> Result<Vec<NamedTensor>> {
    match detect(path)? {
        Format::Safetensors => safetensors_reader::read_single_state_dict(path),
        Format::PytorchZip => torch::read_zip_state_dict(path),
        Format::PytorchLegacy => torch::read_legacy_state_dict(path),
        other => Err(masterkey_core::Error::invalid(
            path,
            format!("expected a state dict (PyTorch checkpoint or single safetensors file), found {}", other.name()),
        )),
    }
}

/// Builds one filter set from inputs that are model files or saved sets
/// (directories written by `FilterSet::save`). `on_model` sees each model as
/// it is read (for progress and per-model tables).
pub fn read_inputs(
    inputs: &[std::path::PathBuf],
    dead_tolerance: f32,
    mut on_model: impl FnMut(&Path, Option<&ModelFilters>),
) -> Result<masterkey_core::FilterSet> {
    let mut set = masterkey_core::FilterSet::new(dead_tolerance);
    for input in inputs {
        if masterkey_core::FilterSet::is_saved_set(input) {
            set.merge(masterkey_core::FilterSet::load(input)?);
            on_model(input, None);
        } else {
            let model = read_model(input)?;
            set.add_model(&model);
            on_model(input, Some(&model));
        }
    }
    Ok(set)
}
