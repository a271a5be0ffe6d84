//! safetensors files, single or sharded behind a `*.safetensors.index.json`.
//!
//! Tensors are named state-dict entries in PyTorch layout, so depthwise
//! weights are recognised by `named::dw_shape` and need no reordering. The
//! header is a JSON map and keeps no model order: layers are sorted by
//! `named::natural_cmp` on their names, which restores the order of the
//! numbered blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;

use masterkey_core::{DwLayer, Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::dtype::{self, ElemType};
use crate::named;
use crate::NamedTensor;

pub fn read_single(path: &Path) -> Result<Vec<DwLayer>> {
    let mmap = map_file(path).map_err(|e| Error::io(path, e))?;
    let tensors = parse(path, &mmap)?;
    let mut layers = dw_layers(path, &tensors)?;
    sort_in_model_order(&mut layers);
    Ok(layers)
}

/// Every float tensor of a single safetensors file, in natural name order.
pub fn read_single_state_dict(path: &Path) -> Result<Vec<NamedTensor>> {
    let mmap = map_file(path).map_err(|e| Error::io(path, e))?;
    let tensors = parse(path, &mmap)?;
    let mut out = Vec::new();
    for (name, view) in tensors.iter() {
        let Some(elem) = elem_type(view.dtype()) else { continue };
        let count = view.shape().iter().product();
        let values = dtype::decode(elem, view.data(), 0, count)
            .map_err(|m| Error::invalid(path, format!("tensor `{name}`: {m}")))?;
        out.push(NamedTensor { name: name.to_string(), shape: view.shape().to_vec(), values });
    }
    out.sort_by(|a, b| named::natural_cmp(&a.name, &b.name));
    Ok(out)
}

/// Reads every shard named by the index at `index_path` once and gathers the
/// depthwise layers of all of them.
pub fn read_sharded(index_path: &Path) -> Result<Vec<DwLayer>> {
    let tensors_by_shard = read_index(index_path)?;
    let dir = index_path.parent().unwrap_or(Path::new(""));
    let mut layers = Vec::new();
    for (shard, listed) in &tensors_by_shard {
        let shard_path = dir.join(shard);
        let mmap = map_file(&shard_path).map_err(|e| {
            Error::invalid(&shard_path, format!("shard listed in {} cannot be read: {e}", index_path.display()))
        })?;
        let tensors = parse(&shard_path, &mmap)?;
        check_listed_tensors_present(&shard_path, index_path, &tensors, listed)?;
        layers.extend(dw_layers(&shard_path, &tensors)?);
    }
    sort_in_model_order(&mut layers);
    Ok(layers)
}

fn map_file(path: &Path) -> std::io::Result<Mmap> {
    let file = File::open(path)?;
    // SAFETY: the map is read-only and we never write the file. Another
    // process truncating or rewriting it while we read would be undefined
    // behaviour; model files are not edited in place while being analysed,
    // and mapping avoids copying multi-gigabyte checkpoints into memory.
    unsafe { Mmap::map(&file) }
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| Error::invalid(path, format!("expected a valid safetensors file, found: {e}")))
}

/// The index's `weight_map` turned around: for each shard file name, the
/// tensors the index says it holds. Sorted, so shards are read in a fixed order.
fn read_index(index_path: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, e))?;
    let index: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(index_path, format!("expected a safetensors index, found invalid JSON: {e}")))?;
    let weight_map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        Error::invalid(index_path, "expected a `weight_map` object mapping tensor names to shard files")
    })?;
    let mut tensors_by_shard: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, shard) in weight_map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::invalid(
                index_path,
                format!("`weight_map` entry `{tensor}`: expected a shard file name, found {shard}"),
            )
        })?;
        tensors_by_shard.entry(shard.to_string()).or_default().insert(tensor.clone());
    }
    Ok(tensors_by_shard)
}

fn check_listed_tensors_present(
    shard_path: &Path,
    index_path: &Path,
    tensors: &SafeTensors,
    listed: &BTreeSet<String>,
) -> Result<()> {
    let present: BTreeSet<&str> = tensors.names().into_iter().collect();
    match listed.iter().find(|name| !present.contains(name.as_str())) {
        Some(missing) => Err(Error::invalid(
            shard_path,
            format!("{} lists tensor `{missing}` in this shard, but the shard does not hold it", index_path.display()),
        )),
        None => Ok(()),
    }
}

fn dw_layers(path: &Path, tensors: &SafeTensors) -> Result<Vec<DwLayer>> {
    let mut layers = Vec::new();
    for (name, view) in tensors.iter() {
        let Some((channels, kernel)) = named::dw_shape(name, view.shape()) else {
            continue;
        };
        let elem = elem_type(view.dtype()).ok_or_else(|| {
            Error::invalid(
                path,
                format!(
                    "tensor `{name}` has a depthwise shape but is stored as {:?}; expected F32, F16, BF16 or F64",
                    view.dtype()
                ),
            )
        })?;
        let weights = dtype::decode(elem, view.data(), 0, channels * kernel.taps())
            .map_err(|m| Error::invalid(path, format!("tensor `{name}`: {m}")))?;
        layers.push(DwLayer::new(name, kernel, channels, weights).map_err(|m| Error::invalid(path, m))?);
    }
    Ok(layers)
}

fn elem_type(dtype: Dtype) -> Option<ElemType> {
    match dtype {
        Dtype::F32 => Some(ElemType::F32),
        Dtype::F16 => Some(ElemType::F16),
        Dtype::BF16 => Some(ElemType::BF16),
        Dtype::F64 => Some(ElemType::F64),
        _ => None,
    }
}

fn sort_in_model_order(layers: &mut [DwLayer]) {
    layers.sort_by(|a, b| named::natural_cmp(&a.name, &b.name));
}
