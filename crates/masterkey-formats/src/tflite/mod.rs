//! TFLite models: a depthwise layer is a `DEPTHWISE_CONV_2D` operator; its
//! filter (input 1) has the shape `[1, kh, kw, C]`.
//!
//! The filter is a constant tensor in FLOAT32 or FLOAT16, or quantized INT8 /
//! UINT8 (per-tensor or per-channel `scale` and `zero_point`). Converters that
//! keep weights in a compact type feed the filter through a `DEQUANTIZE`
//! operator: a filter with no data of its own is traced back to the input of
//! the `DEQUANTIZE` that produces it.

mod schema;

use std::path::Path;

use flatbuffers::Follow;
use masterkey_core::{DwLayer, Error, KernelSize, Result};
use schema::{Buffer, Model, Operator, QuantizationParameters, Tables, Tensor};

use crate::dtype::{self, ElemType};
use crate::layout;

/// `BuiltinOperator` codes.
const DEPTHWISE_CONV_2D: i32 = 4;
const DEQUANTIZE: i32 = 6;

/// `TensorType` codes of the types DW filters are stored in.
const FLOAT32: i8 = 0;
const FLOAT16: i8 = 1;
const UINT8: i8 = 3;
const INT8: i8 = 9;

pub fn read(path: &Path) -> Result<Vec<DwLayer>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = schema::root(&bytes)
        .map_err(|e| Error::invalid(path, format!("expected a valid TFLite flatbuffer, found a corrupt one: {e}")))?;
    dw_layers(&bytes, model).map_err(|message| Error::invalid(path, message))
}

/// Every DW layer of every subgraph, subgraph 0 (the main model) first, each
/// in operator order.
fn dw_layers(file: &[u8], model: Model) -> Result<Vec<DwLayer>, String> {
    let op_codes: Vec<i32> = model.operator_codes().into_iter().flatten().map(|code| code.builtin()).collect();
    let mut layers = Vec::new();
    for (index, subgraph) in model.subgraphs().into_iter().flatten().enumerate() {
        let graph = Graph {
            file,
            op_codes: &op_codes,
            buffers: model.buffers(),
            tensors: subgraph.tensors(),
            operators: subgraph.operators().into_iter().flatten().collect(),
        };
        graph.dw_layers(&mut layers).map_err(|e| format!("subgraph {index}: {e}"))?;
    }
    Ok(layers)
}

/// One subgraph with what its tensors refer to.
struct Graph<'a> {
    /// The whole file: buffers may lie past the flatbuffer.
    file: &'a [u8],
    /// The builtin operator code of each of the model's operator codes.
    op_codes: &'a [i32],
    buffers: Option<Tables<'a, Buffer<'a>>>,
    tensors: Option<Tables<'a, Tensor<'a>>>,
    operators: Vec<Operator<'a>>,
}

impl<'a> Graph<'a> {
    fn dw_layers(&self, layers: &mut Vec<DwLayer>) -> Result<(), String> {
        for (index, op) in self.operators.iter().enumerate() {
            if self.builtin(op)? == DEPTHWISE_CONV_2D {
                let layer = self.dw_layer(op).map_err(|e| format!("operator {index} (DEPTHWISE_CONV_2D): {e}"))?;
                // A 1x1 depthwise kernel is a per-channel scale, not a spatial filter.
                if layer.kernel.taps() > 1 {
                    layers.push(layer);
                }
            }
        }
        Ok(())
    }

    fn builtin(&self, op: &Operator) -> Result<i32, String> {
        let index = op.opcode_index() as usize;
        self.op_codes
            .get(index)
            .copied()
            .ok_or_else(|| format!("an operator uses operator code {index}, but the model has {}", self.op_codes.len()))
    }

    fn dw_layer(&self, op: &Operator) -> Result<DwLayer, String> {
        let filter_index = input(op, 1)?;
        let filter = self.tensor(filter_index)?;
        let shape = tensor_shape(&filter)?;
        let (kernel, channels) = match shape[..] {
            [1, kh, kw, c] if kh > 0 && kw > 0 && c > 0 => (KernelSize::new(kh, kw), c),
            _ => return Err(format!("filter `{}`: expected shape [1, kh, kw, C], found {shape:?}", filter.name())),
        };
        let source = self.weight_source(filter_index, filter)?;
        let source_shape = tensor_shape(&source)?;
        if source_shape != shape {
            return Err(format!(
                "filter `{}` has shape {shape:?}, but its DEQUANTIZE input `{}` has shape {source_shape:?}",
                filter.name(),
                source.name()
            ));
        }
        let values = self.values(&source, &shape)?;
        DwLayer::new(filter.name(), kernel, channels, layout::from_1hwc(&values, kernel, channels))
    }

    /// The tensor holding the filter's data: the filter itself, or, when it
    /// has no data, the input of the DEQUANTIZE operator that produces it.
    fn weight_source(&self, filter_index: usize, filter: Tensor<'a>) -> Result<Tensor<'a>, String> {
        if !self.buffer_bytes(&filter)?.is_empty() {
            return Ok(filter);
        }
        let producer = self.dequantize_producing(filter_index)?.ok_or_else(|| {
            format!("filter `{}` holds no data and is not the output of a DEQUANTIZE operator", filter.name())
        })?;
        self.tensor(input(&producer, 0)?)
    }

    fn dequantize_producing(&self, tensor_index: usize) -> Result<Option<Operator<'a>>, String> {
        for op in &self.operators {
            let produces = op.outputs().into_iter().flatten().any(|out| usize::try_from(out) == Ok(tensor_index));
            if produces && self.builtin(op)? == DEQUANTIZE {
                return Ok(Some(*op));
            }
        }
        Ok(None)
    }

    fn tensor(&self, index: usize) -> Result<Tensor<'a>, String> {
        let tensors = self.tensors.ok_or("an operator refers to a tensor, but the subgraph has no tensors")?;
        element(tensors, index)
            .ok_or_else(|| format!("tensor index {index} is out of range ({} tensors)", tensors.len()))
    }

    /// The tensor's bytes: inline in its buffer, or at the buffer's offset in
    /// the file (models over 2 GB keep data past the flatbuffer).
    fn buffer_bytes(&self, tensor: &Tensor) -> Result<&'a [u8], String> {
        let index = tensor.buffer() as usize;
        let buffers = self.buffers.ok_or_else(|| {
            format!("tensor `{}` refers to buffer {index}, but the model has no buffers", tensor.name())
        })?;
        let buffer = element(buffers, index).ok_or_else(|| {
            format!("tensor `{}` refers to buffer {index}, but the model has {}", tensor.name(), buffers.len())
        })?;
        if !buffer.data().is_empty() || buffer.offset() <= 1 {
            return Ok(buffer.data());
        }
        let (offset, size) = (buffer.offset(), buffer.size());
        offset
            .checked_add(size)
            .filter(|&end| end <= self.file.len() as u64)
            .map(|end| &self.file[offset as usize..end as usize])
            .ok_or_else(|| {
                format!(
                    "tensor `{}`: buffer {index} expects {size} bytes at offset {offset}, past the end of the {}-byte file",
                    tensor.name(),
                    self.file.len()
                )
            })
    }

    /// The tensor's elements as f32, in its own layout.
    fn values(&self, tensor: &Tensor, shape: &[usize]) -> Result<Vec<f32>, String> {
        let bytes = self.buffer_bytes(tensor)?;
        let count = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("tensor `{}`: element count of shape {shape:?} overflows", tensor.name()))?;
        match tensor.element_type() {
            FLOAT32 => float_values(tensor, bytes, ElemType::F32, count),
            FLOAT16 => float_values(tensor, bytes, ElemType::F16, count),
            INT8 => quantized_values(tensor, bytes, count, shape, |b| i64::from(b as i8)),
            UINT8 => quantized_values(tensor, bytes, count, shape, i64::from),
            other => Err(format!(
                "tensor `{}`: expected type FLOAT32, FLOAT16, INT8 or UINT8, found TensorType {other}",
                tensor.name()
            )),
        }
    }
}

fn float_values(tensor: &Tensor, bytes: &[u8], elem: ElemType, count: usize) -> Result<Vec<f32>, String> {
    let name = tensor.name();
    let expected = count.checked_mul(elem.size()).ok_or_else(|| format!("tensor `{name}`: byte size overflows"))?;
    if bytes.len() != expected {
        return Err(format!(
            "tensor `{name}`: expected {expected} bytes of {elem:?} for its shape, found {}",
            bytes.len()
        ));
    }
    dtype::decode(elem, bytes, 0, count).map_err(|e| format!("tensor `{name}`: {e}"))
}

/// Decodes one byte per element with `level` (signed or unsigned), then dequantizes.
fn quantized_values(
    tensor: &Tensor,
    bytes: &[u8],
    count: usize,
    shape: &[usize],
    level: fn(u8) -> i64,
) -> Result<Vec<f32>, String> {
    let name = tensor.name();
    if bytes.len() != count {
        return Err(format!(
            "tensor `{name}`: expected {count} bytes of 8-bit data for its shape, found {}",
            bytes.len()
        ));
    }
    let params =
        tensor.quantization().ok_or_else(|| format!("quantized tensor `{name}` has no quantization parameters"))?;
    let levels: Vec<i64> = bytes.iter().map(|&b| level(b)).collect();
    dequantize(&levels, shape, params).map_err(|e| format!("quantized tensor `{name}`: {e}"))
}

/// `f = scale * (q - zero_point)`, with one scale (and zero point) for the
/// whole tensor or one per index along `quantized_dimension`.
fn dequantize(levels: &[i64], shape: &[usize], params: QuantizationParameters) -> Result<Vec<f32>, String> {
    let scales: Vec<f32> = params.scale().into_iter().flatten().collect();
    let zero_points: Vec<i64> = params.zero_point().into_iter().flatten().collect();
    if scales.is_empty() {
        return Err("expected a scale, found none".into());
    }
    let dim = usize::try_from(params.quantized_dimension()).ok().filter(|&d| d < shape.len());
    // Per-channel: element i belongs to channel (i / stride) % channels.
    let (channels, stride) = match dim {
        Some(d) if scales.len() > 1 => (shape[d], shape[d + 1..].iter().product::<usize>()),
        _ => (1, 1),
    };
    if scales.len() != channels || !(zero_points.len() <= 1 || zero_points.len() == channels) {
        return Err(format!(
            "expected 1 or {channels} scales and at most as many zero points for shape {shape:?} \
             (quantized_dimension {}), found {} scales and {} zero points",
            params.quantized_dimension(),
            scales.len(),
            zero_points.len()
        ));
    }
    Ok(levels
        .iter()
        .enumerate()
        .map(|(i, &level)| {
            let channel = i / stride % channels;
            let zero_point = zero_points.get(channel).or(zero_points.first()).copied().unwrap_or(0);
            level.saturating_sub(zero_point) as f32 * scales[channel]
        })
        .collect())
}

/// Input `slot` of the operator, as a tensor index.
fn input(op: &Operator, slot: usize) -> Result<usize, String> {
    let inputs = op.inputs().ok_or("the operator has no inputs")?;
    let index =
        element(inputs, slot).ok_or_else(|| format!("expected an input {slot}, found {} inputs", inputs.len()))?;
    usize::try_from(index).map_err(|_| format!("input {slot} is omitted (tensor index {index})"))
}

fn tensor_shape(tensor: &Tensor) -> Result<Vec<usize>, String> {
    tensor
        .shape()
        .into_iter()
        .flatten()
        .map(|d| usize::try_from(d).map_err(|_| format!("tensor `{}` has a negative dimension {d}", tensor.name())))
        .collect()
}

/// Element `index` of a verified vector, or `None` past its end (the crate's
/// `Vector::get` panics there instead).
fn element<'a, T: Follow<'a> + 'a>(vector: flatbuffers::Vector<'a, T>, index: usize) -> Option<T::Inner> {
    (index < vector.len()).then(|| vector.get(index))
}
