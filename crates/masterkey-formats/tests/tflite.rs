//! The TFLite reader, on fixtures built here field by field with
//! `FlatBufferBuilder` (field ids from `tensorflow/lite/schema/schema.fbs`,
//! written independently of the reader's), and on real MediaPipe models
//! fetched from their pinned PyPI wheel.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use masterkey_core::{KernelSize, ModelFilters};
use masterkey_formats::read_model;

mod common;
use common::{asymmetric, check_real_model, RealModel};

const CONV_2D: i32 = 3;
const DEPTHWISE_CONV_2D: i32 = 4;
const DEQUANTIZE: i32 = 6;

const FLOAT32: i8 = 0;
const FLOAT16: i8 = 1;
const UINT8: i8 = 3;
const INT8: i8 = 9;

/// Byte offset of field `id` in a vtable.
const fn slot(id: u16) -> u16 {
    4 + 2 * id
}

/// Where a buffer's bytes are.
enum Data {
    /// The sentinel buffer 0, and buffers of non-constant tensors.
    Empty,
    Inline(Vec<u8>),
    /// Appended after the flatbuffer, found through `offset` / `size`.
    Appended(Vec<u8>),
    /// `offset` / `size` given as they are.
    At {
        offset: u64,
        size: u64,
    },
}

struct Quantization {
    scale: Vec<f32>,
    zero_point: Vec<i64>,
    dimension: i32,
}

struct TensorSpec {
    name: &'static str,
    shape: Vec<i32>,
    element_type: i8,
    buffer: u32,
    quantization: Option<Quantization>,
}

fn tensor(name: &'static str, shape: &[i32], element_type: i8, buffer: u32) -> TensorSpec {
    TensorSpec { name, shape: shape.to_vec(), element_type, buffer, quantization: None }
}

struct OpSpec {
    builtin: i32,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
}

fn op(builtin: i32, inputs: &[i32], outputs: &[i32]) -> OpSpec {
    OpSpec { builtin, inputs: inputs.to_vec(), outputs: outputs.to_vec() }
}

struct ModelSpec {
    tensors: Vec<TensorSpec>,
    ops: Vec<OpSpec>,
    buffers: Vec<Data>,
}

impl ModelSpec {
    /// The file: the flatbuffer, then the `Appended` buffers, each 16-aligned.
    fn file(&self) -> Vec<u8> {
        // Offsets are u64 fields always written, so the flatbuffer's length
        // does not depend on their values: build once to learn it.
        let flatbuffer_len = self.flatbuffer(0).len();
        let mut file = self.flatbuffer(flatbuffer_len);
        for data in &self.buffers {
            if let Data::Appended(bytes) = data {
                file.resize(file.len().next_multiple_of(16), 0);
                file.extend_from_slice(bytes);
            }
        }
        file
    }

    /// The flatbuffer, with appended data laid out from `appended_start` on.
    fn flatbuffer(&self, appended_start: usize) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let buffers = self.buffer_tables(&mut fbb, appended_start);
        let tensors: Vec<_> = self.tensors.iter().map(|t| tensor_table(&mut fbb, t)).collect();
        let ops: Vec<_> = self.ops.iter().enumerate().map(|(i, o)| operator_table(&mut fbb, i as u32, o)).collect();
        let codes: Vec<_> = self.ops.iter().map(|o| opcode_table(&mut fbb, o.builtin)).collect();

        let (tensors, ops) = (fbb.create_vector(&tensors), fbb.create_vector(&ops));
        let start = fbb.start_table();
        fbb.push_slot_always(slot(0), tensors);
        fbb.push_slot_always(slot(3), ops);
        let subgraph = fbb.end_table(start);

        let (codes, subgraphs, buffers) =
            (fbb.create_vector(&codes), fbb.create_vector(&[subgraph]), fbb.create_vector(&buffers));
        let start = fbb.start_table();
        fbb.push_slot_always(slot(0), 3u32);
        fbb.push_slot_always(slot(1), codes);
        fbb.push_slot_always(slot(2), subgraphs);
        fbb.push_slot_always(slot(4), buffers);
        let model = fbb.end_table(start);
        fbb.finish(model, Some("TFL3"));
        fbb.finished_data().to_vec()
    }

    fn buffer_tables<'f>(
        &self,
        fbb: &mut FlatBufferBuilder<'f>,
        appended_start: usize,
    ) -> Vec<WIPOffset<flatbuffers::TableFinishedWIPOffset>> {
        let mut next_appended = appended_start;
        let mut tables = Vec::new();
        for data in &self.buffers {
            let inline = match data {
                Data::Inline(bytes) => Some(fbb.create_vector(bytes)),
                _ => None,
            };
            let location = match data {
                Data::Appended(bytes) => {
                    let offset = next_appended.next_multiple_of(16);
                    next_appended = offset + bytes.len();
                    Some((offset as u64, bytes.len() as u64))
                }
                Data::At { offset, size } => Some((*offset, *size)),
                Data::Empty | Data::Inline(_) => None,
            };
            let start = fbb.start_table();
            if let Some(inline) = inline {
                fbb.push_slot_always(slot(0), inline);
            }
            if let Some((offset, size)) = location {
                fbb.push_slot_always(slot(1), offset);
                fbb.push_slot_always(slot(2), size);
            }
            tables.push(fbb.end_table(start));
        }
        tables
    }
}

fn tensor_table<'f>(
    fbb: &mut FlatBufferBuilder<'f>,
    spec: &TensorSpec,
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let shape = fbb.create_vector(&spec.shape);
    let name = fbb.create_string(spec.name);
    let quantization = spec.quantization.as_ref().map(|q| {
        let (scale, zero_point) = (fbb.create_vector(&q.scale), fbb.create_vector(&q.zero_point));
        let start = fbb.start_table();
        fbb.push_slot_always(slot(2), scale);
        fbb.push_slot_always(slot(3), zero_point);
        fbb.push_slot_always(slot(6), q.dimension);
        fbb.end_table(start)
    });
    let start = fbb.start_table();
    fbb.push_slot_always(slot(0), shape);
    fbb.push_slot_always(slot(1), spec.element_type);
    fbb.push_slot_always(slot(2), spec.buffer);
    fbb.push_slot_always(slot(3), name);
    if let Some(quantization) = quantization {
        fbb.push_slot_always(slot(4), quantization);
    }
    fbb.end_table(start)
}

fn operator_table<'f>(
    fbb: &mut FlatBufferBuilder<'f>,
    opcode_index: u32,
    spec: &OpSpec,
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let (inputs, outputs) = (fbb.create_vector(&spec.inputs), fbb.create_vector(&spec.outputs));
    let start = fbb.start_table();
    fbb.push_slot_always(slot(0), opcode_index);
    fbb.push_slot_always(slot(1), inputs);
    fbb.push_slot_always(slot(2), outputs);
    fbb.end_table(start)
}

/// As current converters write it: the code in both the old 8-bit field and
/// the 32-bit one.
fn opcode_table<'f>(fbb: &mut FlatBufferBuilder<'f>, builtin: i32) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let start = fbb.start_table();
    fbb.push_slot_always(slot(0), builtin.min(127) as i8);
    fbb.push_slot_always(slot(2), 1i32);
    fbb.push_slot_always(slot(3), builtin);
    fbb.end_table(start)
}

/// `[c][r][col]` filters to TFLite's `[1, kh, kw, C]`.
fn to_1hwc<T: Copy>(filters: &[T], channels: usize, kh: usize, kw: usize) -> Vec<T> {
    let mut out = Vec::new();
    for r in 0..kh {
        for col in 0..kw {
            for c in 0..channels {
                out.push(filters[(c * kh + r) * kw + col]);
            }
        }
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One DW operator on input tensor 0 with filter tensor 1 (buffer 1) and
/// output tensor 2.
fn single_dw(filter: TensorSpec, data: Data) -> ModelSpec {
    ModelSpec {
        tensors: vec![
            tensor("input", &[1, 16, 16, 2], FLOAT32, 0),
            filter,
            tensor("output", &[1, 16, 16, 2], FLOAT32, 0),
        ],
        ops: vec![op(DEPTHWISE_CONV_2D, &[0, 1, -1], &[2])],
        buffers: vec![Data::Empty, data],
    }
}

fn asymmetric_f32_model() -> ModelSpec {
    let data = f32_bytes(&to_1hwc(&asymmetric(2, 3, 5), 2, 3, 5));
    single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 1), Data::Inline(data))
}

#[test]
fn float32_filter_keeps_orientation_of_asymmetric_filters() {
    let model = read(&asymmetric_f32_model().file());
    assert_eq!(model.format, "tflite");
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    assert_eq!((layer.name.as_str(), layer.kernel, layer.channels), ("dw/filter", KernelSize::new(3, 5), 2));
    assert_eq!(layer.weights, asymmetric(2, 3, 5));
    // Channel 1, row 2 (bottom), column 4 (right).
    assert_eq!(layer.filter(1)[2 * 5 + 4], 124.0);
}

#[test]
fn fp16_filter_behind_dequantize_is_followed() {
    let halves =
        to_1hwc(&asymmetric(2, 5, 3), 2, 5, 3).iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let spec = ModelSpec {
        tensors: vec![
            tensor("input", &[1, 16, 16, 2], FLOAT32, 0),
            tensor("dw/filter_fp16", &[1, 5, 3, 2], FLOAT16, 1),
            tensor("dw/filter", &[1, 5, 3, 2], FLOAT32, 0),
            tensor("output", &[1, 16, 16, 2], FLOAT32, 0),
        ],
        ops: vec![op(DEQUANTIZE, &[1], &[2]), op(DEPTHWISE_CONV_2D, &[0, 2, -1], &[3])],
        buffers: vec![Data::Empty, Data::Inline(halves)],
    };
    let model = read(&spec.file());
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    assert_eq!((layer.name.as_str(), layer.kernel, layer.channels), ("dw/filter", KernelSize::new(5, 3), 2));
    assert_eq!(layer.weights, asymmetric(2, 5, 3));
}

#[test]
fn int8_filter_with_per_channel_scale_is_dequantized() {
    // Levels 10*r + col - 12 in every channel; channel c: scale[c], zero point[c].
    let (scale, zero_point) = ([0.5f32, 2.0, 0.25], [0i64, 3, -4]);
    let levels: Vec<i8> = (0..3).flat_map(|_| (0..3).flat_map(|r| (0..5).map(move |col| 10 * r + col - 12))).collect();
    let expected: Vec<f32> =
        levels.iter().enumerate().map(|(i, &q)| (i64::from(q) - zero_point[i / 15]) as f32 * scale[i / 15]).collect();
    let data = to_1hwc(&levels, 3, 3, 5).iter().map(|&q| q as u8).collect();
    let mut filter = tensor("dw/filter_int8", &[1, 3, 5, 3], INT8, 1);
    filter.quantization = Some(Quantization { scale: scale.to_vec(), zero_point: zero_point.to_vec(), dimension: 3 });
    let model = read(&single_dw(filter, Data::Inline(data)).file());
    assert_eq!(model.layers.len(), 1);
    assert_eq!((model.layers[0].kernel, model.layers[0].channels), (KernelSize::new(3, 5), 3));
    assert_eq!(model.layers[0].weights, expected);
}

#[test]
fn uint8_filter_with_per_tensor_scale_is_dequantized() {
    let levels: Vec<u8> = (0..2).flat_map(|c| (0..9).map(move |i| 120 + 3 * c + i)).collect();
    let expected: Vec<f32> = levels.iter().map(|&q| (i64::from(q) - 128) as f32 * 0.125).collect();
    let mut filter = tensor("dw/filter_uint8", &[1, 3, 3, 2], UINT8, 1);
    filter.quantization = Some(Quantization { scale: vec![0.125], zero_point: vec![128], dimension: 0 });
    let model = read(&single_dw(filter, Data::Inline(to_1hwc(&levels, 2, 3, 3))).file());
    assert_eq!(model.layers[0].weights, expected);
}

#[test]
fn buffer_past_the_flatbuffer_is_read_by_offset() {
    let data = f32_bytes(&to_1hwc(&asymmetric(2, 3, 5), 2, 3, 5));
    let model = read(&single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 1), Data::Appended(data)).file());
    assert_eq!(model.layers[0].weights, asymmetric(2, 3, 5));
}

#[test]
fn conv_2d_is_ignored_and_layers_keep_operator_order() {
    let dw = || Data::Inline(f32_bytes(&to_1hwc(&asymmetric(2, 3, 3), 2, 3, 3)));
    let spec = ModelSpec {
        tensors: vec![
            tensor("input", &[1, 16, 16, 2], FLOAT32, 0),
            tensor("conv/filter", &[2, 3, 3, 2], FLOAT32, 1),
            tensor("z_dw/filter", &[1, 3, 3, 2], FLOAT32, 2),
            tensor("a_dw/filter", &[1, 3, 3, 2], FLOAT32, 3),
            tensor("t0", &[1, 16, 16, 2], FLOAT32, 0),
            tensor("t1", &[1, 16, 16, 2], FLOAT32, 0),
            tensor("t2", &[1, 16, 16, 2], FLOAT32, 0),
        ],
        ops: vec![
            op(CONV_2D, &[0, 1, -1], &[4]),
            op(DEPTHWISE_CONV_2D, &[4, 2, -1], &[5]),
            op(DEPTHWISE_CONV_2D, &[5, 3, -1], &[6]),
        ],
        buffers: vec![Data::Empty, Data::Inline(f32_bytes(&[0.5; 36])), dw(), dw()],
    };
    let model = read(&spec.file());
    let names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["z_dw/filter", "a_dw/filter"]);
}

#[test]
fn truncated_file_is_an_error() {
    let bytes = asymmetric_f32_model().file();
    for len in [bytes.len() - 1, bytes.len() / 2, 12] {
        let message = read_error(&bytes[..len]);
        assert!(message.contains("corrupt"), "{message}");
    }
}

#[test]
fn corrupt_bytes_are_an_error() {
    let mut bytes = asymmetric_f32_model().file();
    // The root table offset, pointed past the end.
    bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let message = read_error(&bytes);
    assert!(message.contains("corrupt"), "{message}");
}

#[test]
fn any_single_corrupt_byte_gives_a_result_not_a_panic() {
    let bytes = asymmetric_f32_model().file();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= mask;
            // Either outcome is fine; reaching the next byte means no panic.
            let _ = read_model(&common::write(dir.path(), "flipped.tflite", &corrupt));
        }
    }
}

#[test]
fn shape_that_does_not_match_the_data_is_an_error() {
    let data = f32_bytes(&to_1hwc(&asymmetric(2, 3, 5), 2, 3, 5)[..29]);
    let message = read_error(&single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 1), Data::Inline(data)).file());
    assert!(message.contains("expected 120 bytes"), "{message}");

    let data = f32_bytes(&[1.0; 30]);
    let message = read_error(&single_dw(tensor("dw/filter", &[3, 5, 2], FLOAT32, 1), Data::Inline(data)).file());
    assert!(message.contains("expected shape [1, kh, kw, C]"), "{message}");
}

#[test]
fn buffer_offset_past_the_end_is_an_error() {
    let spec = single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 1), Data::At { offset: 1 << 20, size: 120 });
    let message = read_error(&spec.file());
    assert!(message.contains("past the end"), "{message}");

    let overflowing =
        single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 1), Data::At { offset: u64::MAX - 8, size: 120 });
    let message = read_error(&overflowing.file());
    assert!(message.contains("past the end"), "{message}");
}

#[test]
fn nan_weight_is_an_error() {
    let mut values = to_1hwc(&asymmetric(2, 3, 5), 2, 3, 5);
    values[7] = f32::NAN;
    let message =
        read_error(&single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 1), Data::Inline(f32_bytes(&values))).file());
    assert!(message.contains("non-finite"), "{message}");
}

#[test]
fn dw_filter_without_data_or_dequantize_is_an_error() {
    let message = read_error(&single_dw(tensor("dw/filter", &[1, 3, 5, 2], FLOAT32, 0), Data::Empty).file());
    assert!(message.contains("holds no data"), "{message}");
}

/// Real MediaPipe models: two keep fp16 filters behind DEQUANTIZE, one keeps
/// float32 filters in their own buffers. The expected numbers come from a
/// standard-library Python reading of the flatbuffers (TFLite schema field
/// ids, DW filter = input 1 of each DEPTHWISE_CONV_2D, traced back through
/// DEQUANTIZE), not from this reader.
#[test]
fn real_mediapipe_models() {
    check_real_model(&RealModel {
        id: "blazeface-tflite",
        format: "tflite",
        layers: 16,
        filters_per_kernel: &[("3x3", 978)],
        first_layer: "depthwise_conv2d/Kernel_dequantize",
        last_layer: "depthwise_conv2d_15/Kernel_dequantize",
        first_filter: &[
            -0.208862305,
            -0.831054688,
            -1.00683594,
            -0.227050781,
            -0.479736328,
            -0.793945312,
            0.548339844,
            0.321044922,
            -0.712890625,
        ],
    });
    check_real_model(&RealModel {
        id: "selfie-segmentation-tflite",
        format: "tflite",
        layers: 11,
        filters_per_kernel: &[("3x3", 232), ("5x5", 544)],
        first_layer: "depthwise_conv2d/Kernel_dequantize",
        last_layer: "depthwise_conv2d_10/Kernel_dequantize",
        first_filter: &[
            -0.0259399414,
            -0.0297851562,
            -0.0144119263,
            -0.0289916992,
            -0.0422363281,
            -0.0236053467,
            -0.0122070312,
            -0.0209960938,
            -0.0137634277,
        ],
    });
    check_real_model(&RealModel {
        id: "iris-landmark-tflite",
        format: "tflite",
        layers: 26,
        filters_per_kernel: &[("3x3", 1536)],
        first_layer: "depthwise_conv2d/Kernel",
        last_layer: "depthwise_conv2d_25/Kernel",
        first_filter: &[
            -0.225660652,
            0.491569728,
            -0.307952523,
            -1.17396533,
            0.274591535,
            -0.286732078,
            -0.785027802,
            -0.641765296,
            -0.584837258,
        ],
    });
}

fn read(bytes: &[u8]) -> ModelFilters {
    common::read_as("model.tflite", bytes)
}

fn read_error(bytes: &[u8]) -> String {
    common::read_error_as("broken-model.tflite", bytes)
}
