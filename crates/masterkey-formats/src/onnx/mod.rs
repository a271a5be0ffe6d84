//! ONNX models: a depthwise layer is a `Conv` node with `group > 1` whose
//! weight (input 1) has the shape `[C_out, 1, kh, kw]` — one input channel per
//! group — with `C_out` a multiple of `group`. ONNX's weight layout is already
//! the project's, so the filters are taken as they are.
//!
//! Weights are constant tensors found in graph initializers or in `Constant`
//! nodes (PaddleOCR's exports keep every weight in Constant nodes), possibly
//! behind `Identity` nodes. Subgraphs (the `If` / `Loop` bodies held in node
//! attributes) are searched too.

mod proto;

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use masterkey_core::{DwLayer, Error, KernelSize, Result};
use prost::Message;

use crate::dtype::{self, ElemType};
use proto::{GraphProto, ModelProto, NodeProto, TensorProto};

/// `TensorProto.DataType` codes of the element types DW weights come in.
const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Longest chain of `Identity` nodes followed from a weight to its constant;
/// a longer one can only be a cycle in a corrupt graph.
const MAX_IDENTITY_HOPS: usize = 64;

pub fn read(path: &Path) -> Result<Vec<DwLayer>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::invalid(path, format!("expected an ONNX ModelProto, found undecodable protobuf: {e}")))?;
    let graph = model.graph.ok_or_else(|| Error::invalid(path, "expected an ONNX model with a graph, found none"))?;
    dw_layers(&graph).map_err(|message| Error::invalid(path, message))
}

/// Every DW layer of `graph` and its subgraphs, in node order.
fn dw_layers(graph: &GraphProto) -> Result<Vec<DwLayer>, String> {
    let mut constants = Constants::default();
    let mut nodes = Vec::new();
    collect(graph, &mut constants, &mut nodes);
    let mut layers = Vec::new();
    for node in nodes {
        if let Some(layer) = dw_layer(node, &constants)? {
            layers.push(layer);
        }
    }
    Ok(layers)
}

/// The constant tensors of a model by value name, and the `Identity` nodes
/// that rename them. Names from all (sub)graphs share one table: ONNX values
/// are single-assignment, and exporters give nested values distinct names.
#[derive(Default)]
struct Constants<'a> {
    tensors: HashMap<&'a str, &'a TensorProto>,
    /// Output name of an `Identity` node -> its input name.
    aliases: HashMap<&'a str, &'a str>,
}

impl<'a> Constants<'a> {
    fn add_node(&mut self, node: &'a NodeProto) {
        let Some(output) = node.output.first() else { return };
        match node.op_type.as_str() {
            "Constant" => {
                if let Some(tensor) = node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
                    self.tensors.insert(output, tensor);
                }
            }
            "Identity" => {
                if let Some(input) = node.input.first() {
                    self.aliases.insert(output, input);
                }
            }
            _ => {}
        }
    }

    /// The constant that value `name` holds, following `Identity` nodes.
    fn resolve(&self, name: &str) -> Option<&'a TensorProto> {
        let mut name = name;
        for _ in 0..=MAX_IDENTITY_HOPS {
            if let Some(tensor) = self.tensors.get(name) {
                return Some(tensor);
            }
            name = self.aliases.get(name)?;
        }
        None
    }
}

/// Gathers the constants of `graph` and lists its nodes in order, each node
/// followed by the nodes of the subgraphs it holds.
fn collect<'a>(graph: &'a GraphProto, constants: &mut Constants<'a>, nodes: &mut Vec<&'a NodeProto>) {
    for tensor in &graph.initializer {
        constants.tensors.insert(&tensor.name, tensor);
    }
    for node in &graph.node {
        constants.add_node(node);
        nodes.push(node);
        for attribute in &node.attribute {
            for subgraph in attribute.g.iter().chain(&attribute.graphs) {
                collect(subgraph, constants, nodes);
            }
        }
    }
}

/// The node's DW layer, or `None` when the node is not a depthwise `Conv`.
fn dw_layer(node: &NodeProto, constants: &Constants) -> Result<Option<DwLayer>, String> {
    if node.op_type != "Conv" {
        return Ok(None);
    }
    let group = node.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i);
    if group <= 1 {
        return Ok(None);
    }
    let Some(weight_name) = node.input.get(1) else {
        return Err(format!("Conv node `{}` has no weight input", node.name));
    };
    let weight = constants.resolve(weight_name).ok_or_else(|| {
        format!(
            "grouped Conv node `{}`: expected its weight `{weight_name}` to be an initializer or a Constant node output, \
             found neither (computed or DequantizeLinear weights are not supported)",
            node.name
        )
    })?;
    let in_weight = |e: String| format!("Conv node `{}`, weight `{weight_name}`: {e}", node.name);
    let shape = dims(weight).map_err(in_weight)?;
    let (channels, kernel) = match shape[..] {
        [c_out, 1, kh, kw] if c_out as i64 % group == 0 => (c_out, KernelSize::new(kh, kw)),
        _ => return Ok(None),
    };
    // A 1x1 depthwise kernel is a per-channel scale, not a spatial filter.
    if kernel.taps() == 1 {
        return Ok(None);
    }
    if channels == 0 || kernel.taps() == 0 {
        return Err(in_weight(format!("expected a non-empty shape, found {shape:?}")));
    }
    let name = if node.name.is_empty() { weight_name } else { &node.name };
    DwLayer::new(name.as_str(), kernel, channels, values(weight).map_err(in_weight)?).map(Some)
}

fn dims(tensor: &TensorProto) -> Result<Vec<usize>, String> {
    tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("expected non-negative dimensions, found {:?}", tensor.dims)))
        .collect()
}

/// The tensor's elements as f32, checked against its shape.
fn values(tensor: &TensorProto) -> Result<Vec<f32>, String> {
    if tensor.data_location == EXTERNAL || !tensor.external_data.is_empty() {
        return Err("unsupported: external data (the weights are stored in a file next to the model)".into());
    }
    let count = dims(tensor)?
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("element count of shape {:?} overflows", tensor.dims))?;
    let elem = elem_type(tensor)?;
    let values = if tensor.raw_data.is_empty() { typed_values(tensor, elem) } else { raw_values(tensor, elem, count)? };
    if values.len() != count {
        return Err(format!("expected {count} elements for shape {:?}, found {}", tensor.dims, values.len()));
    }
    Ok(values)
}

fn elem_type(tensor: &TensorProto) -> Result<ElemType, String> {
    match tensor.data_type {
        FLOAT => Ok(ElemType::F32),
        FLOAT16 => Ok(ElemType::F16),
        DOUBLE => Ok(ElemType::F64),
        BFLOAT16 => Ok(ElemType::BF16),
        other => Err(format!("expected element type FLOAT, FLOAT16, DOUBLE or BFLOAT16, found data_type {other}")),
    }
}

fn raw_values(tensor: &TensorProto, elem: ElemType, count: usize) -> Result<Vec<f32>, String> {
    let expected =
        count.checked_mul(elem.size()).ok_or_else(|| format!("byte size of shape {:?} overflows", tensor.dims))?;
    if tensor.raw_data.len() != expected {
        return Err(format!(
            "expected {expected} bytes of {elem:?} raw data for shape {:?}, found {}",
            tensor.dims,
            tensor.raw_data.len()
        ));
    }
    dtype::decode(elem, &tensor.raw_data, 0, count)
}

/// Elements stored in the typed field that ONNX assigns to `elem`.
fn typed_values(tensor: &TensorProto, elem: ElemType) -> Vec<f32> {
    // FLOAT16 and BFLOAT16 keep one 16-bit pattern per int32_data entry.
    let low_bits = |v: &i32| *v as u16;
    match elem {
        ElemType::F32 => tensor.float_data.clone(),
        ElemType::F64 => tensor.double_data.iter().map(|&v| v as f32).collect(),
        ElemType::F16 => tensor.int32_data.iter().map(|v| f16::from_bits(low_bits(v)).to_f32()).collect(),
        ElemType::BF16 => tensor.int32_data.iter().map(|v| bf16::from_bits(low_bits(v)).to_f32()).collect(),
    }
}
