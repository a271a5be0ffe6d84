//! A filter set: every filter pulled out of one or more models, grouped by
//! kernel size, each with its provenance.
//!
//! On disk a set is a directory holding
//! - `filters.safetensors`: one f32 tensor `filters_HxW` of shape `[N, H, W]`
//!   per kernel size, the raw weights as read (not normalised, so that fits
//!   keep the model's own scale);
//! - `filters.csv`: one row per filter, in tensor order, with its provenance,
//!   `mean` and `centered_norm` (so `(w - mean) / centered_norm` is its
//!   normalised form) and the `dead` flag; pandas and polars read it as is;
//! - `set.json`: format version and the dead tolerance used.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::{Error, Result};
use crate::kernel::{is_dead, mean_and_centered_norm, KernelSize, DEFAULT_DEAD_TOLERANCE};
use crate::layer::ModelFilters;

pub const FILTERS_FILE: &str = "filters.safetensors";
pub const METADATA_FILE: &str = "filters.csv";
pub const SET_FILE: &str = "set.json";
const SET_FORMAT_VERSION: u32 = 1;

/// Where one filter came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub source_file: String,
    pub format: String,
    pub layer_name: String,
    /// Position of the layer among the model's depthwise layers, from 0.
    pub layer_index: usize,
    /// `layer_index / (layers - 1)`: 0 at the first depthwise layer, 1 at the last.
    pub depth: f64,
    pub channel: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub mean: f32,
    pub centered_norm: f32,
    pub dead: bool,
}

/// All filters of one kernel size.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeGroup {
    pub kernel: KernelSize,
    /// `provenance.len() * kernel.taps()` raw weights.
    pub weights: Vec<f32>,
    pub provenance: Vec<Provenance>,
}

impl SizeGroup {
    pub fn len(&self) -> usize {
        self.provenance.len()
    }
    pub fn is_empty(&self) -> bool {
        self.provenance.is_empty()
    }
    pub fn filter(&self, i: usize) -> &[f32] {
        let t = self.kernel.taps();
        &self.weights[i * t..(i + 1) * t]
    }
    pub fn dead_count(&self) -> usize {
        self.provenance.iter().filter(|p| p.dead).count()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SetInfo {
    format_version: u32,
    dead_tolerance: f32,
}

/// Filters grouped by kernel size (ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSet {
    pub dead_tolerance: f32,
    pub groups: BTreeMap<KernelSize, SizeGroup>,
}

impl Default for FilterSet {
    fn default() -> Self {
        FilterSet { dead_tolerance: DEFAULT_DEAD_TOLERANCE, groups: BTreeMap::new() }
    }
}

impl FilterSet {
    pub fn new(dead_tolerance: f32) -> Self {
        FilterSet { dead_tolerance, groups: BTreeMap::new() }
    }

    /// Adds every filter of a model, with provenance and dead flags.
    pub fn add_model(&mut self, model: &ModelFilters) {
        let last = model.layers.len().saturating_sub(1);
        let source_file = model.source.display().to_string();
        for (layer_index, layer) in model.layers.iter().enumerate() {
            let depth = if last == 0 { 0.0 } else { layer_index as f64 / last as f64 };
            let group = self.groups.entry(layer.kernel).or_insert_with(|| SizeGroup {
                kernel: layer.kernel,
                weights: Vec::new(),
                provenance: Vec::new(),
            });
            group.weights.extend_from_slice(&layer.weights);
            for channel in 0..layer.channels {
                let (mean, centered_norm) = mean_and_centered_norm(layer.filter(channel));
                group.provenance.push(Provenance {
                    source_file: source_file.clone(),
                    format: model.format.clone(),
                    layer_name: layer.name.clone(),
                    layer_index,
                    depth,
                    channel,
                    kernel_h: layer.kernel.h,
                    kernel_w: layer.kernel.w,
                    mean,
                    centered_norm,
                    dead: is_dead(centered_norm, self.dead_tolerance),
                });
            }
        }
    }

    /// Appends another set's filters, re-flagging dead ones with this set's tolerance.
    pub fn merge(&mut self, other: FilterSet) {
        for (kernel, group) in other.groups {
            let target = self.groups.entry(kernel).or_insert_with(|| SizeGroup {
                kernel,
                weights: Vec::new(),
                provenance: Vec::new(),
            });
            target.weights.extend(group.weights);
            target.provenance.extend(group.provenance.into_iter().map(|mut p| {
                p.dead = is_dead(p.centered_norm, self.dead_tolerance);
                p
            }));
        }
    }

    pub fn len(&self) -> usize {
        self.groups.values().map(SizeGroup::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dead_count(&self) -> usize {
        self.groups.values().map(SizeGroup::dead_count).sum()
    }

    /// Count of filters per kernel size, keyed `HxW`.
    pub fn kernel_counts(&self) -> BTreeMap<String, usize> {
        self.groups.iter().map(|(k, g)| (k.to_string(), g.len())).collect()
    }

    /// The distinct source files, in first-seen order.
    pub fn sources(&self) -> Vec<String> {
        let mut seen = Vec::<String>::new();
        for g in self.groups.values() {
            for p in &g.provenance {
                if seen.last() != Some(&p.source_file) && !seen.contains(&p.source_file) {
                    seen.push(p.source_file.clone());
                }
            }
        }
        seen
    }

    /// True if `path` looks like a saved set (a directory with `set.json`).
    pub fn is_saved_set(path: &Path) -> bool {
        path.join(SET_FILE).is_file()
    }

    /// Saves atomically into the directory `dir` (replacing an old set there).
    pub fn save(&self, dir: &Path) -> Result<()> {
        atomic::write_dir_with(dir, |tmp| {
            let info = SetInfo { format_version: SET_FORMAT_VERSION, dead_tolerance: self.dead_tolerance };
            let json = serde_json::to_vec_pretty(&info).expect("set info serialises");
            fs::write(tmp.join(SET_FILE), json).map_err(|e| Error::io(tmp.join(SET_FILE), e))?;

            let names: Vec<String> = self.groups.keys().map(|k| format!("filters_{k}")).collect();
            let bytes: Vec<Vec<u8>> = self.groups.values().map(|g| f32_bytes(&g.weights)).collect();
            let mut views = Vec::new();
            for ((name, g), data) in names.iter().zip(self.groups.values()).zip(&bytes) {
                let view = TensorView::new(Dtype::F32, vec![g.len(), g.kernel.h, g.kernel.w], data)
                    .map_err(|e| Error::Other(format!("building tensor {name}: {e}")))?;
                views.push((name.as_str(), view));
            }
            let path = tmp.join(FILTERS_FILE);
            safetensors::serialize_to_file(views, None, &path)
                .map_err(|e| Error::invalid(&path, format!("writing safetensors: {e}")))?;

            let path = tmp.join(METADATA_FILE);
            let mut w = csv::Writer::from_path(&path).map_err(|e| Error::invalid(&path, e.to_string()))?;
            for (kernel, g) in &self.groups {
                for (index, p) in g.provenance.iter().enumerate() {
                    w.serialize(CsvRow::new(*kernel, index, p)).map_err(|e| Error::invalid(&path, e.to_string()))?;
                }
            }
            w.flush().map_err(|e| Error::io(&path, e))?;
            Ok(())
        })
    }

    /// Loads a set saved by [`FilterSet::save`]; gives back the same set bit for bit.
    pub fn load(dir: &Path) -> Result<Self> {
        let info_path = dir.join(SET_FILE);
        let info_bytes = fs::read(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: SetInfo = serde_json::from_slice(&info_bytes)
            .map_err(|e| Error::invalid(&info_path, format!("expected a filter-set description: {e}")))?;
        if info.format_version != SET_FORMAT_VERSION {
            return Err(Error::invalid(
                &info_path,
                format!("expected set format version {SET_FORMAT_VERSION}, found {}", info.format_version),
            ));
        }

        let meta_path = dir.join(METADATA_FILE);
        let mut reader = csv::Reader::from_path(&meta_path).map_err(|e| Error::invalid(&meta_path, e.to_string()))?;
        let mut provenance: HashMap<KernelSize, Vec<Provenance>> = HashMap::new();
        for (line, row) in reader.deserialize::<CsvRow>().enumerate() {
            let row = row.map_err(|e| Error::invalid(&meta_path, format!("row {}: {e}", line + 1)))?;
            let kernel: KernelSize = row.kernel.parse().map_err(|e: String| Error::invalid(&meta_path, e))?;
            let list = provenance.entry(kernel).or_default();
            if row.index != list.len() {
                return Err(Error::invalid(
                    &meta_path,
                    format!("row {}: expected index {} for kernel {kernel}, found {}", line + 1, list.len(), row.index),
                ));
            }
            list.push(row.provenance());
        }

        let st_path = dir.join(FILTERS_FILE);
        let bytes = fs::read(&st_path).map_err(|e| Error::io(&st_path, e))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::invalid(&st_path, format!("expected a safetensors file: {e}")))?;
        let mut set = FilterSet::new(info.dead_tolerance);
        for (name, view) in tensors.tensors() {
            let kernel: KernelSize = name
                .strip_prefix("filters_")
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| Error::invalid(&st_path, format!("unexpected tensor `{name}`")))?;
            let shape = view.shape();
            if view.dtype() != Dtype::F32 || shape.len() != 3 || shape[1] != kernel.h || shape[2] != kernel.w {
                return Err(Error::invalid(
                    &st_path,
                    format!(
                        "tensor `{name}`: expected f32 [N, {}, {}], found {:?} {:?}",
                        kernel.h,
                        kernel.w,
                        view.dtype(),
                        shape
                    ),
                ));
            }
            let prov = provenance.remove(&kernel).unwrap_or_default();
            if prov.len() != shape[0] {
                return Err(Error::invalid(
                    &meta_path,
                    format!("kernel {kernel}: {} rows but {} filters in {}", prov.len(), shape[0], st_path.display()),
                ));
            }
            let weights = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            set.groups.insert(kernel, SizeGroup { kernel, weights, provenance: prov });
        }
        if let Some(kernel) = provenance.keys().next() {
            return Err(Error::invalid(
                &meta_path,
                format!("rows for kernel {kernel} but no tensor in {}", st_path.display()),
            ));
        }
        Ok(set)
    }
}

/// One row of `filters.csv` (the csv crate cannot flatten nested structs).
#[derive(Serialize, Deserialize)]
struct CsvRow {
    kernel: String,
    index: usize,
    source_file: String,
    format: String,
    layer_name: String,
    layer_index: usize,
    depth: f64,
    channel: usize,
    kernel_h: usize,
    kernel_w: usize,
    mean: f32,
    centered_norm: f32,
    dead: bool,
}

impl CsvRow {
    fn new(kernel: KernelSize, index: usize, p: &Provenance) -> Self {
        CsvRow {
            kernel: kernel.to_string(),
            index,
            source_file: p.source_file.clone(),
            format: p.format.clone(),
            layer_name: p.layer_name.clone(),
            layer_index: p.layer_index,
            depth: p.depth,
            channel: p.channel,
            kernel_h: p.kernel_h,
            kernel_w: p.kernel_w,
            mean: p.mean,
            centered_norm: p.centered_norm,
            dead: p.dead,
        }
    }

    fn provenance(self) -> Provenance {
        Provenance {
            source_file: self.source_file,
            format: self.format,
            layer_name: self.layer_name,
            layer_index: self.layer_index,
            depth: self.depth,
            channel: self.channel,
            kernel_h: self.kernel_h,
            kernel_w: self.kernel_w,
            mean: self.mean,
            centered_norm: self.centered_norm,
            dead: self.dead,
        }
    }
}

pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::DwLayer;

    fn model(name: &str) -> ModelFilters {
        let l0 = DwLayer::new("a", KernelSize::square(3), 2, (0..18).map(|i| i as f32 * 0.1 - 0.7).collect()).unwrap();
        let l1 = DwLayer::new("b.c", KernelSize::new(3, 5), 1, (0..15).map(|i| (i as f32).sin()).collect()).unwrap();
        let l2 = DwLayer::new("dead", KernelSize::square(3), 1, vec![0.25; 9]).unwrap();
        ModelFilters { source: name.into(), format: "test".into(), layers: vec![l0, l1, l2] }
    }

    #[test]
    fn provenance_depth_and_dead_flags() {
        let mut set = FilterSet::default();
        set.add_model(&model("m.onnx"));
        assert_eq!(set.len(), 4);
        assert_eq!(set.dead_count(), 1);
        let g3 = &set.groups[&KernelSize::square(3)];
        assert_eq!(g3.provenance.iter().map(|p| p.depth).collect::<Vec<_>>(), vec![0.0, 0.0, 1.0]);
        assert!(g3.provenance[2].dead);
        assert_eq!(set.groups[&KernelSize::new(3, 5)].provenance[0].depth, 0.5);
        assert_eq!(set.kernel_counts()["3x5"], 1);
    }

    #[test]
    fn save_and_load_round_trip_bit_for_bit() {
        let mut set = FilterSet::default();
        set.add_model(&model("m.onnx"));
        set.add_model(&model("dir with, comma/other \"quoted\".pth"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set");
        set.save(&path).unwrap();
        set.save(&path).unwrap(); // replacing an existing set works
        let back = FilterSet::load(&path).unwrap();
        assert_eq!(back, set);
        for (k, g) in &set.groups {
            let bits: Vec<u32> = g.weights.iter().map(|v| v.to_bits()).collect();
            let back_bits: Vec<u32> = back.groups[k].weights.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, back_bits);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("set")]);
    }

    #[test]
    fn load_rejects_mismatched_metadata() {
        let mut set = FilterSet::default();
        set.add_model(&model("m.onnx"));
        let dir = tempfile::tempdir().unwrap();
        set.save(dir.path().join("s").as_path()).unwrap();
        let csv_path = dir.path().join("s").join(METADATA_FILE);
        let text = fs::read_to_string(&csv_path).unwrap();
        let truncated: Vec<&str> = text.lines().take(2).collect();
        fs::write(&csv_path, truncated.join("\n")).unwrap();
        let err = FilterSet::load(&dir.path().join("s")).unwrap_err().to_string();
        assert!(err.contains("filters.csv") && err.contains("rows"), "{err}");
    }
}
