use std::fs::File;
use std::io::Read;
use std::path::Path;

use masterkey_core::{Error, Result};

/// A model file format, as recognised from the file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// A `*.safetensors.index.json` naming the shards of one model.
    SafetensorsIndex,
    PytorchZip,
    /// PyTorch's pre-1.6 format: consecutive pickles, then raw storages.
    PytorchLegacy,
    Onnx,
    Tflite,
    /// TensorFlow.js `model.json` with a weights manifest, or a bare weights
    /// manifest (a JSON list of `{paths, weights}` groups).
    Tfjs,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::SafetensorsIndex => "safetensors-sharded",
            Format::PytorchZip => "pytorch-zip",
            Format::PytorchLegacy => "pytorch-legacy",
            Format::Onnx => "onnx",
            Format::Tflite => "tflite",
            Format::Tfjs => "tfjs",
        }
    }
}

/// The first pickle of a legacy PyTorch file: protocol 2, then the magic
/// number 0x1950a86a20f9469cfc6c as a LONG1.
const TORCH_LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

pub fn detect(path: &Path) -> Result<Format> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = vec![0u8; 64.min(len as usize)];
    file.read_exact(&mut head).map_err(|e| Error::io(path, e))?;

    if head.len() >= 8 && &head[4..8] == b"TFL3" {
        return Ok(Format::Tflite);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::PytorchZip);
    }
    if head.starts_with(TORCH_LEGACY_MAGIC) {
        return Ok(Format::PytorchLegacy);
    }
    let first_non_space = head.iter().find(|b| !b.is_ascii_whitespace());
    let starts_like_json = matches!(first_non_space, Some(b'{' | b'['));
    // An indented JSON list can have its first `{` at byte 8 too; its first
    // 8 bytes, read as a header length, then run past any file.
    if head.len() >= 9 && head[8] == b'{' {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if header_len.checked_add(8).is_some_and(|end| end <= len) {
            return Ok(Format::Safetensors);
        }
        if !starts_like_json {
            return Err(Error::invalid(
                path,
                format!(
                    "looks like safetensors, but its header of {header_len} bytes runs past the end of the {len}-byte file"
                ),
            ));
        }
    }
    if starts_like_json {
        return detect_json(path);
    }
    // ONNX has no magic: a ModelProto starts with field 1 (ir_version, a varint).
    if head.first() == Some(&0x08) {
        return Ok(Format::Onnx);
    }
    let shown: String = head.iter().take(16).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    Err(Error::invalid(
        path,
        format!(
            "unsupported file: expected safetensors, a PyTorch checkpoint, ONNX, TFLite or a TF.js/safetensors-index JSON, \
             found bytes [{shown}]"
        ),
    ))
}

fn detect_json(path: &Path) -> Result<Format> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(path, format!("expected JSON, found invalid JSON: {e}")))?;
    if value.get("weightsManifest").is_some() || is_weights_manifest(&value) {
        Ok(Format::Tfjs)
    } else if value.get("weight_map").is_some() {
        Ok(Format::SafetensorsIndex)
    } else {
        Err(Error::invalid(
            path,
            "unsupported JSON: expected a TF.js model.json (`weightsManifest`), a TF.js weights manifest \
             (a list of {paths, weights} groups) or a safetensors index (`weight_map`)",
        ))
    }
}

/// A non-empty JSON list of objects that each have `paths` and `weights`.
fn is_weights_manifest(value: &serde_json::Value) -> bool {
    value.as_array().is_some_and(|groups| {
        !groups.is_empty() && groups.iter().all(|g| g.get("paths").is_some() && g.get("weights").is_some())
    })
}
