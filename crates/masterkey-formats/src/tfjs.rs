//! TensorFlow.js models: a `model.json` whose `weightsManifest` lists groups
//! of weights, or a bare weights manifest (that list of groups alone, as
//! face-api.js ships its models). A group's binary shards (paths relative to
//! the JSON file) are one byte stream cut into files, and its weights lie in
//! that stream back to back, in manifest order.
//!
//! Which weights are depthwise kernels is read from the topology: Keras
//! layers models name `DepthwiseConv2D` / `SeparableConv2D` layers, graph
//! models have depthwise convolution nodes whose filter input is a weight.
//! Only without such a topology are weights picked by name. Kernels are
//! `[kh, kw, C, mult]` and are mapped with `layout::from_hwcm`.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use masterkey_core::{DwLayer, Error, KernelSize, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::dtype::{self, ElemType};
use crate::layout;

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "modelTopology", default)]
    topology: Value,
    #[serde(rename = "weightsManifest")]
    manifest: Vec<WeightGroup>,
}

#[derive(Deserialize)]
struct WeightGroup {
    paths: Vec<String>,
    weights: Vec<WeightSpec>,
}

#[derive(Deserialize)]
struct WeightSpec {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

/// Storage of a weight whose logical dtype is kept in fewer bytes: `uint8` and
/// `uint16` hold `(value - min) / scale`, `float16` holds plain halves.
#[derive(Deserialize)]
struct Quantization {
    dtype: String,
    scale: Option<f64>,
    min: Option<f64>,
}

/// A group's shards read and concatenated.
struct LoadedGroup {
    /// The shard paths, for error messages.
    shards: String,
    bytes: Vec<u8>,
}

/// Where one manifest weight lies in its group's bytes.
struct StoredWeight<'m> {
    spec: &'m WeightSpec,
    group: usize,
    range: Range<usize>,
}

pub fn read(path: &Path) -> Result<Vec<DwLayer>> {
    let model = parse_model_json(path)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut groups = Vec::with_capacity(model.manifest.len());
    let mut stored = Vec::new();
    for (index, group) in model.manifest.iter().enumerate() {
        let loaded = load_group(path, dir, group)?;
        let ranges = locate_weights(&group.weights, &loaded.bytes)
            .map_err(|m| Error::invalid(path, format!("weight group with shards [{}]: {m}", loaded.shards)))?;
        stored.extend(group.weights.iter().zip(ranges).map(|(spec, range)| StoredWeight { spec, group: index, range }));
        groups.push(loaded);
    }
    let selector = DwSelector::from_topology(&model.topology).map_err(|m| Error::invalid(path, m))?;
    selector
        .select(&stored)
        .map_err(|m| Error::invalid(path, m))?
        .into_iter()
        .map(|weight| to_layer(path, weight, &groups[weight.group]))
        .collect()
}

fn parse_model_json(path: &Path) -> Result<ModelJson> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(path, format!("expected a TF.js model.json, found invalid JSON: {e}")))?;
    // A bare manifest has no topology: its kernels are then picked by name.
    let model = match value {
        Value::Array(_) => serde_json::from_value(value).map(|manifest| ModelJson { topology: Value::Null, manifest }),
        _ => serde_json::from_value(value),
    };
    model.map_err(|e| {
        Error::invalid(
            path,
            format!(
                "expected a TF.js model.json with a `weightsManifest` of {{paths, weights}} groups, \
                 or a bare list of such groups: {e}"
            ),
        )
    })
}

fn load_group(model_path: &Path, dir: &Path, group: &WeightGroup) -> Result<LoadedGroup> {
    let mut bytes = Vec::new();
    let mut shards = Vec::with_capacity(group.paths.len());
    for shard in &group.paths {
        let shard_path = dir.join(shard);
        let data = std::fs::read(&shard_path).map_err(|e| {
            Error::invalid(&shard_path, format!("weight shard listed in {} cannot be read: {e}", model_path.display()))
        })?;
        bytes.extend_from_slice(&data);
        shards.push(shard_path.display().to_string());
    }
    Ok(LoadedGroup { shards: shards.join(", "), bytes })
}

/// The byte range of each weight of a group, which must cover the group's
/// bytes exactly: any other total means the manifest does not describe them.
fn locate_weights(specs: &[WeightSpec], bytes: &[u8]) -> Result<Vec<Range<usize>>, String> {
    let mut ranges = Vec::with_capacity(specs.len());
    let mut start = 0;
    for spec in specs {
        let len = stored_len(spec, &bytes[start..])?;
        let end = start.checked_add(len).filter(|&end| end <= bytes.len()).ok_or_else(|| {
            format!(
                "weight `{}` needs {len} bytes from byte {start}, but the shards hold {} bytes",
                spec.name,
                bytes.len()
            )
        })?;
        ranges.push(start..end);
        start = end;
    }
    if start != bytes.len() {
        return Err(format!("the manifest accounts for {start} bytes, but the shards hold {} bytes", bytes.len()));
    }
    Ok(ranges)
}

/// Bytes taken by one weight whose data starts at `rest[0]`.
fn stored_len(spec: &WeightSpec, rest: &[u8]) -> Result<usize, String> {
    let count = spec.numel()?;
    let stored = spec.stored_dtype();
    if stored == "string" {
        return string_run_len(rest, count).ok_or_else(|| {
            format!("weight `{}`: its string length prefixes run past the end of the shards", spec.name)
        });
    }
    let size = element_size(stored).ok_or_else(|| format!("weight `{}`: unsupported dtype `{stored}`", spec.name))?;
    count.checked_mul(size).ok_or_else(|| format!("weight `{}`: byte size overflows", spec.name))
}

/// Bytes of `count` TF.js strings, each a little-endian u32 byte length and
/// then the bytes; `None` if a length prefix lies past the end.
fn string_run_len(bytes: &[u8], count: usize) -> Option<usize> {
    let mut pos = 0usize;
    for _ in 0..count {
        let prefix = bytes.get(pos..pos.checked_add(4)?)?;
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        pos = pos.checked_add(4)?.checked_add(len)?;
    }
    Some(pos)
}

fn element_size(stored_dtype: &str) -> Option<usize> {
    match stored_dtype {
        "bool" | "uint8" => Some(1),
        "uint16" | "float16" => Some(2),
        "float32" | "int32" => Some(4),
        "complex64" => Some(8),
        _ => None,
    }
}

impl WeightSpec {
    fn numel(&self) -> Result<usize, String> {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("weight `{}`: shape {:?} overflows", self.name, self.shape))
    }

    fn stored_dtype(&self) -> &str {
        self.quantization.as_ref().map_or(&self.dtype, |q| &q.dtype)
    }

    /// The weight's values as f32, dequantised if stored quantised.
    fn decode_floats(&self, bytes: &[u8]) -> Result<Vec<f32>, String> {
        if self.dtype != "float32" {
            return Err(format!("expected a float32 kernel, found dtype `{}`", self.dtype));
        }
        let count = self.numel()?;
        let Some(quantization) = &self.quantization else {
            return dtype::decode(ElemType::F32, bytes, 0, count);
        };
        match quantization.dtype.as_str() {
            "float16" => dtype::decode(ElemType::F16, bytes, 0, count),
            "uint8" => quantization.dequantise(bytes.iter().map(|&q| q as f64)),
            "uint16" => quantization.dequantise(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as f64)),
            other => Err(format!("unsupported quantisation dtype `{other}`")),
        }
    }
}

impl Quantization {
    fn dequantise(&self, quantised: impl Iterator<Item = f64>) -> Result<Vec<f32>, String> {
        let (Some(scale), Some(min)) = (self.scale, self.min) else {
            return Err(format!("`{}` quantisation without `scale` and `min`", self.dtype));
        };
        Ok(quantised.map(|q| (q * scale + min) as f32).collect())
    }
}

fn to_layer(model_path: &Path, weight: &StoredWeight, group: &LoadedGroup) -> Result<DwLayer> {
    let spec = weight.spec;
    let fail = |m: String| Error::invalid(model_path, format!("weight `{}` (in {}): {m}", spec.name, group.shards));
    let [kh, kw, channels, mult] = spec.shape[..] else {
        return Err(fail(format!("expected a depthwise kernel [kh, kw, C, mult], found shape {:?}", spec.shape)));
    };
    let kernel = KernelSize::new(kh, kw);
    let values = spec.decode_floats(&group.bytes[weight.range.clone()]).map_err(fail)?;
    let filters = layout::from_hwcm(&values, kernel, channels, mult);
    DwLayer::new(&spec.name, kernel, channels * mult, filters)
        .map_err(|m| Error::invalid(model_path, format!("{m} (in {})", group.shards)))
}

/// Graph-model ops that convolve each channel with its own filter (input 1).
const GRAPH_DW_OPS: [&str; 2] = ["DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"];

/// A Keras layer holding a depthwise kernel.
struct KerasDwLayer {
    name: String,
    /// Weight names (last path component) the kernel may carry.
    kernel_names: &'static [&'static str],
}

/// Which manifest weights are depthwise kernels, as the topology says.
struct DwSelector {
    keras_layers: Vec<KerasDwLayer>,
    graph_weights: HashSet<String>,
}

impl DwSelector {
    fn from_topology(topology: &Value) -> Result<Self, String> {
        let mut keras_layers = Vec::new();
        collect_keras_dw_layers(topology, &mut keras_layers);
        Ok(DwSelector { keras_layers, graph_weights: graph_dw_weights(topology)? })
    }

    /// The depthwise kernels among `stored`, in manifest order. Every
    /// depthwise layer of the topology must find its kernel; 1x1 kernels are
    /// per-channel scales, not filters, and are left out.
    fn select<'a, 'm>(&self, stored: &'a [StoredWeight<'m>]) -> Result<Vec<&'a StoredWeight<'m>>, String> {
        if self.keras_layers.is_empty() && self.graph_weights.is_empty() {
            return Ok(stored.iter().filter(|w| named_like_depthwise(w.spec)).collect());
        }
        self.check_every_layer_has_a_kernel(stored)?;
        let chosen = stored.iter().filter(|w| self.is_dw_kernel(&w.spec.name));
        Ok(chosen.filter(|w| !is_1x1(w.spec)).collect())
    }

    fn is_dw_kernel(&self, weight_name: &str) -> bool {
        self.graph_weights.contains(weight_name) || self.keras_layers.iter().any(|l| l.owns(weight_name))
    }

    fn check_every_layer_has_a_kernel(&self, stored: &[StoredWeight]) -> Result<(), String> {
        let names: HashSet<&str> = stored.iter().map(|w| w.spec.name.as_str()).collect();
        if let Some(missing) = self.graph_weights.iter().find(|w| !names.contains(w.as_str())) {
            return Err(format!(
                "a depthwise convolution node takes its filter from `{missing}`, which is not in the weights manifest"
            ));
        }
        if let Some(layer) = self.keras_layers.iter().find(|l| !names.iter().any(|n| l.owns(n))) {
            return Err(format!(
                "depthwise layer `{}` has no weight `{}/{}` in the weights manifest",
                layer.name, layer.name, layer.kernel_names[0]
            ));
        }
        Ok(())
    }
}

impl KerasDwLayer {
    fn from_class(class_name: &str, name: &str) -> Option<Self> {
        // Keras 3 names a DepthwiseConv2D kernel `kernel`; Keras 2 and
        // separable convolutions call it `depthwise_kernel`.
        let kernel_names: &'static [&'static str] = match class_name {
            "DepthwiseConv2D" => &["depthwise_kernel", "kernel"],
            "SeparableConv2D" => &["depthwise_kernel"],
            _ => return None,
        };
        Some(KerasDwLayer { name: name.to_string(), kernel_names })
    }

    /// Whether `weight_name` is this layer's kernel. Weight names may carry
    /// the names of enclosing models as `/`-separated prefixes.
    fn owns(&self, weight_name: &str) -> bool {
        self.kernel_names.iter().any(|kernel| {
            let suffix = format!("{}/{kernel}", self.name);
            weight_name == suffix || weight_name.ends_with(&format!("/{suffix}"))
        })
    }
}

/// Every depthwise layer anywhere in a Keras topology. Searching the whole
/// tree, rather than one `layers` list, covers nested functional models,
/// wrapper layers and the several places converters put `config`.
fn collect_keras_dw_layers(value: &Value, out: &mut Vec<KerasDwLayer>) {
    match value {
        Value::Object(map) => {
            let class_name = map.get("class_name").and_then(Value::as_str);
            let name = map.get("config").and_then(|c| c.get("name")).and_then(Value::as_str);
            if let Some(layer) = class_name.zip(name).and_then(|(c, n)| KerasDwLayer::from_class(c, n)) {
                out.push(layer);
            }
            map.values().for_each(|v| collect_keras_dw_layers(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_keras_dw_layers(v, out)),
        _ => {}
    }
}

/// The weight nodes feeding the depthwise convolutions of a graph model,
/// looking through `Identity` nodes.
fn graph_dw_weights(topology: &Value) -> Result<HashSet<String>, String> {
    let Some(nodes) = topology.get("node").and_then(Value::as_array) else {
        return Ok(HashSet::new());
    };
    let by_name: HashMap<&str, &Value> = nodes.iter().filter_map(|n| Some((n.get("name")?.as_str()?, n))).collect();
    let mut weights = HashSet::new();
    for node in nodes.iter().filter(|n| GRAPH_DW_OPS.contains(&node_op(n))) {
        let filter = node_input(node, 1).ok_or_else(|| {
            format!(
                "{} node `{}` has no filter input",
                node_op(node),
                node.get("name").and_then(Value::as_str).unwrap_or("?")
            )
        })?;
        weights.insert(skip_identities(&by_name, filter).to_string());
    }
    Ok(weights)
}

fn node_op(node: &Value) -> &str {
    node.get("op").and_then(Value::as_str).unwrap_or("")
}

/// The node named by input `index`, without a control-edge `^` or an output
/// port `:n`.
fn node_input(node: &Value, index: usize) -> Option<&str> {
    let input = node.get("input")?.as_array()?.get(index)?.as_str()?;
    input.trim_start_matches('^').split(':').next()
}

fn skip_identities<'a>(by_name: &HashMap<&str, &'a Value>, start: &'a str) -> &'a str {
    let mut name = start;
    // Bounded by the node count so that an Identity cycle cannot loop forever.
    for _ in 0..by_name.len() {
        match by_name.get(name) {
            Some(node) if node_op(node) == "Identity" => match node_input(node, 0) {
                Some(next) => name = next,
                None => break,
            },
            _ => break,
        }
    }
    name
}

/// Fallback without a topology: a 4-D `[kh, kw, C, mult]` weight named
/// `...depthwise...` with a kernel larger than 1x1.
fn named_like_depthwise(spec: &WeightSpec) -> bool {
    spec.shape.len() == 4 && !is_1x1(spec) && spec.name.to_ascii_lowercase().contains("depthwise")
}

fn is_1x1(spec: &WeightSpec) -> bool {
    matches!(spec.shape[..], [1, 1, _, _])
}
