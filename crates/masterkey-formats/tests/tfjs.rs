//! TF.js models, written here by hand (a `model.json` or a bare weights
//! manifest, and the binary shards), and real ones fetched from their pinned
//! npm packages.

use std::path::{Path, PathBuf};

use masterkey_core::KernelSize;
use masterkey_formats::read_model;

mod common;
use common::{asymmetric, check_real_model, RealModel};
use serde_json::{json, Value};

/// One manifest entry and the bytes it occupies in its group.
struct Weight {
    spec: Value,
    bytes: Vec<u8>,
}

/// A TF.js depthwise kernel `[kh, kw, C, 1]` whose channel `c` holds
/// `100*c + 10*r + col` at row `r`, column `col`.
fn hwc_values(kh: usize, kw: usize, channels: usize) -> Vec<f32> {
    let mut values = vec![0.0; kh * kw * channels];
    for r in 0..kh {
        for col in 0..kw {
            for c in 0..channels {
                values[(r * kw + col) * channels + c] = (100 * c + 10 * r + col) as f32;
            }
        }
    }
    values
}

fn f32_weight(name: &str, shape: &[usize], values: &[f32]) -> Weight {
    Weight {
        spec: json!({ "name": name, "shape": shape, "dtype": "float32" }),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn dw_weight(name: &str, kh: usize, kw: usize, channels: usize) -> Weight {
    f32_weight(name, &[kh, kw, channels, 1], &hwc_values(kh, kw, channels))
}

fn f16_weight(name: &str, shape: &[usize], values: &[f32]) -> Weight {
    Weight {
        spec: json!({ "name": name, "shape": shape, "dtype": "float32", "quantization": { "dtype": "float16" } }),
        bytes: values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
    }
}

fn u8_weight(name: &str, shape: &[usize], quantised: &[u8], scale: f64, min: f64) -> Weight {
    Weight {
        spec: json!({ "name": name, "shape": shape, "dtype": "float32",
                      "quantization": { "dtype": "uint8", "scale": scale, "min": min, "original_dtype": "float32" } }),
        bytes: quantised.to_vec(),
    }
}

fn u16_weight(name: &str, shape: &[usize], quantised: &[u16], scale: f64, min: f64) -> Weight {
    Weight {
        spec: json!({ "name": name, "shape": shape, "dtype": "float32",
                      "quantization": { "dtype": "uint16", "scale": scale, "min": min } }),
        bytes: quantised.iter().flat_map(|q| q.to_le_bytes()).collect(),
    }
}

/// TF.js strings: each a little-endian u32 byte length, then the bytes.
fn string_weight(name: &str, strings: &[&str]) -> Weight {
    let mut bytes = Vec::new();
    for s in strings {
        bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
        bytes.extend_from_slice(s.as_bytes());
    }
    Weight { spec: json!({ "name": name, "shape": [strings.len()], "dtype": "string" }), bytes }
}

/// Writes a group's bytes cut into `shard_count` files of about equal size
/// (cuts fall inside weights) and returns its manifest entry.
fn write_group(dir: &Path, prefix: &str, weights: &[Weight], shard_count: usize) -> Value {
    let bytes: Vec<u8> = weights.iter().flat_map(|w| w.bytes.iter().copied()).collect();
    let shard_len = bytes.len().div_ceil(shard_count).max(1);
    let paths: Vec<String> = (0..shard_count)
        .map(|i| {
            let name = format!("{prefix}-shard{}of{shard_count}.bin", i + 1);
            let start = (i * shard_len).min(bytes.len());
            let end = ((i + 1) * shard_len).min(bytes.len());
            std::fs::write(dir.join(&name), &bytes[start..end]).unwrap();
            name
        })
        .collect();
    let specs: Vec<&Value> = weights.iter().map(|w| &w.spec).collect();
    json!({ "paths": paths, "weights": specs })
}

fn write_model_json(dir: &Path, topology: Value, manifest: Vec<Value>) -> PathBuf {
    let path = dir.join("model.json");
    let model = json!({ "format": "layers-model", "modelTopology": topology, "weightsManifest": manifest });
    std::fs::write(&path, serde_json::to_vec_pretty(&model).unwrap()).unwrap();
    path
}

/// A model with one group in one shard.
fn write_model(dir: &Path, topology: Value, weights: &[Weight]) -> PathBuf {
    let group = write_group(dir, "group1", weights, 1);
    write_model_json(dir, topology, vec![group])
}

fn keras_layer(class_name: &str, name: &str) -> Value {
    json!({ "class_name": class_name, "config": { "name": name, "trainable": true } })
}

/// A Keras functional model as the TF.js converter writes it.
fn keras_topology(layers: Vec<Value>) -> Value {
    json!({
        "keras_version": "2.15.0",
        "backend": "tensorflow",
        "model_config": { "class_name": "Functional", "config": { "name": "model", "layers": layers } }
    })
}

fn graph_node(name: &str, op: &str, inputs: &[&str]) -> Value {
    json!({ "name": name, "op": op, "input": inputs, "attr": {} })
}

fn graph_topology(nodes: Vec<Value>) -> Value {
    json!({ "node": nodes, "library": {}, "versions": { "producer": 1482 } })
}

fn read_error(path: &Path) -> String {
    read_model(path).expect_err("the model is broken and must be rejected").to_string()
}

#[test]
fn layers_model_keeps_non_square_filter_orientation_and_skips_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![
        keras_layer("InputLayer", "input_1"),
        keras_layer("DepthwiseConv2D", "dw1"),
        keras_layer("Conv2D", "pw1"),
    ]);
    let path = write_model(
        dir.path(),
        topology,
        &[
            dw_weight("dw1/depthwise_kernel", 3, 5, 2),
            f32_weight("dw1/bias", &[2], &[0.1, 0.2]),
            f32_weight("pw1/kernel", &[3, 3, 2, 4], &[1.0; 72]),
        ],
    );

    let model = read_model(&path).unwrap();
    assert_eq!(model.format, "tfjs");
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    assert_eq!(layer.name, "dw1/depthwise_kernel");
    assert_eq!(layer.kernel, KernelSize::new(3, 5));
    assert_eq!(layer.channels, 2);
    assert_eq!(layer.weights, asymmetric(2, 3, 5));
}

#[test]
fn layers_model_finds_kernels_of_nested_models_under_prefixed_names() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = json!({
        "class_name": "Functional",
        "config": { "name": "backbone", "layers": [keras_layer("DepthwiseConv2D", "block_dw"), keras_layer("SeparableConv2D", "sep")] }
    });
    // The `config.layers` form, without `model_config`.
    let topology = json!({ "class_name": "Sequential", "config": { "name": "outer", "layers": [backbone, keras_layer("Dense", "head")] } });
    let path = write_model(
        dir.path(),
        topology,
        &[
            dw_weight("backbone/block_dw/depthwise_kernel", 3, 3, 4),
            dw_weight("backbone/sep/depthwise_kernel", 5, 5, 2),
            f32_weight("backbone/sep/pointwise_kernel", &[1, 1, 2, 3], &[1.0; 6]),
            f32_weight("head/kernel", &[4, 2], &[0.0; 8]),
        ],
    );

    let layers = read_model(&path).unwrap().layers;
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["backbone/block_dw/depthwise_kernel", "backbone/sep/depthwise_kernel"]);
    assert_eq!(layers[1].weights, asymmetric(2, 5, 5));
}

#[test]
fn graph_model_takes_filters_from_depthwise_nodes_through_identities() {
    let dir = tempfile::tempdir().unwrap();
    let topology = graph_topology(vec![
        graph_node("input", "Placeholder", &[]),
        graph_node("w1", "Const", &[]),
        graph_node("w1/read", "Identity", &["w1"]),
        graph_node("dw1", "DepthwiseConv2dNative", &["input", "w1/read:0"]),
        graph_node("w2", "Const", &[]),
        graph_node("b2", "Const", &[]),
        graph_node("dw2", "FusedDepthwiseConv2dNative", &["dw1", "w2", "b2", "^input"]),
        graph_node("decoy_depthwise", "Const", &[]),
        graph_node("pw", "Conv2D", &["dw2", "decoy_depthwise"]),
    ]);
    let path = write_model(
        dir.path(),
        topology,
        &[
            dw_weight("w1", 3, 5, 2),
            dw_weight("w2", 5, 3, 3),
            f32_weight("b2", &[3], &[0.0; 3]),
            dw_weight("decoy_depthwise", 3, 3, 3),
        ],
    );

    let layers = read_model(&path).unwrap().layers;
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(layers[0].weights, asymmetric(2, 3, 5));
    assert_eq!(layers[1].kernel, KernelSize::new(5, 3));
    assert_eq!(layers[1].weights, asymmetric(3, 5, 3));
}

#[test]
fn float16_weights_decode_to_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    let path =
        write_model(dir.path(), topology, &[f16_weight("dw/depthwise_kernel", &[3, 5, 2, 1], &hwc_values(3, 5, 2))]);

    let layers = read_model(&path).unwrap().layers;
    assert_eq!(layers[0].weights, asymmetric(2, 3, 5));
}

#[test]
fn uint8_and_uint16_weights_are_dequantised_with_scale_and_min() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "a"), keras_layer("DepthwiseConv2D", "b")]);
    // [3, 3, 1, 1]: one channel, row-major already.
    let q8: Vec<u8> = vec![0, 1, 2, 10, 20, 30, 100, 200, 255];
    let q16: Vec<u16> = vec![0, 1, 2, 300, 400, 500, 1000, 40000, 65535];
    let path = write_model(
        dir.path(),
        topology,
        &[
            u8_weight("a/depthwise_kernel", &[3, 3, 1, 1], &q8, 0.5, -3.0),
            u16_weight("b/depthwise_kernel", &[3, 3, 1, 1], &q16, 0.25, 1.0),
        ],
    );

    let layers = read_model(&path).unwrap().layers;
    let expected_a: Vec<f32> = q8.iter().map(|&q| q as f32 * 0.5 - 3.0).collect();
    let expected_b: Vec<f32> = q16.iter().map(|&q| q as f32 * 0.25 + 1.0).collect();
    assert_eq!(layers[0].weights, expected_a);
    assert_eq!(layers[1].weights, expected_b);
}

#[test]
fn depth_multiplier_gives_each_input_channel_mult_filters() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    // [1, 2, C=2, mult=2]: value = 10*c + m + 100*col.
    let mut values = vec![0.0; 8];
    for col in 0..2 {
        for c in 0..2 {
            for m in 0..2 {
                values[(col * 2 + c) * 2 + m] = (100 * col + 10 * c + m) as f32;
            }
        }
    }
    let path = write_model(dir.path(), topology, &[f32_weight("dw/depthwise_kernel", &[1, 2, 2, 2], &values)]);

    let layer = &read_model(&path).unwrap().layers[0];
    assert_eq!(layer.channels, 4);
    assert_eq!(layer.weights, [0.0, 100.0, 1.0, 101.0, 10.0, 110.0, 11.0, 111.0]);
}

#[test]
fn a_groups_shards_are_one_stream_and_groups_keep_manifest_order() {
    let dir = tempfile::tempdir().unwrap();
    let topology =
        keras_topology(vec![keras_layer("DepthwiseConv2D", "first"), keras_layer("DepthwiseConv2D", "second")]);
    let group1 = write_group(
        dir.path(),
        "group1",
        &[f32_weight("stem/kernel", &[3], &[1.0, 2.0, 3.0]), dw_weight("first/depthwise_kernel", 3, 5, 2)],
        3,
    );
    let group2 = write_group(dir.path(), "group2", &[dw_weight("second/depthwise_kernel", 5, 5, 3)], 2);
    let path = write_model_json(dir.path(), topology, vec![group1, group2]);

    let layers = read_model(&path).unwrap().layers;
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].weights, asymmetric(2, 3, 5));
    assert_eq!(layers[1].weights, asymmetric(3, 5, 5));
}

#[test]
fn string_and_other_typed_weights_before_a_kernel_are_stepped_over() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    let flags = Weight { spec: json!({ "name": "flags", "shape": [3], "dtype": "bool" }), bytes: vec![1, 0, 1] };
    let path = write_model(
        dir.path(),
        topology,
        &[string_weight("vocab", &["depthwise", "", "filters"]), flags, dw_weight("dw/depthwise_kernel", 3, 3, 2)],
    );

    let layers = read_model(&path).unwrap().layers;
    assert_eq!(layers[0].weights, asymmetric(2, 3, 3));
}

#[test]
fn without_a_topology_weights_named_depthwise_are_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(
        dir.path(),
        Value::Null,
        &[
            dw_weight("MobilenetV1/Conv2d_1_depthwise/depthwise_weights", 3, 5, 2),
            f32_weight("MobilenetV1/Conv2d_1_pointwise/weights", &[1, 1, 2, 4], &[1.0; 8]),
            f32_weight("MobilenetV1/Conv2d_2_depthwise/depthwise_1x1", &[1, 1, 2, 1], &[1.0; 2]),
            f32_weight("MobilenetV1/Conv2d_2_depthwise/bias", &[2], &[0.0; 2]),
        ],
    );

    let layers = read_model(&path).unwrap().layers;
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].name, "MobilenetV1/Conv2d_1_depthwise/depthwise_weights");
    assert_eq!(layers[0].weights, asymmetric(2, 3, 5));
}

#[test]
fn missing_shard_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    let group = write_group(dir.path(), "group1", &[dw_weight("dw/depthwise_kernel", 3, 3, 2)], 2);
    let path = write_model_json(dir.path(), topology, vec![group]);
    std::fs::remove_file(dir.path().join("group1-shard2of2.bin")).unwrap();

    let err = read_error(&path);
    assert!(err.contains("group1-shard2of2.bin"), "{err}");
}

#[test]
fn truncated_shard_is_an_error_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    let path = write_model(dir.path(), topology, &[dw_weight("dw/depthwise_kernel", 3, 3, 2)]);
    let shard = dir.path().join("group1-shard1of1.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();

    let err = read_error(&path);
    assert!(err.contains("model.json") && err.contains("group1-shard1of1.bin"), "{err}");
}

#[test]
fn manifest_shapes_that_do_not_cover_the_data_are_errors() {
    for lying_shape in [[3, 3, 4, 1], [3, 3, 1, 1]] {
        let dir = tempfile::tempdir().unwrap();
        let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
        let mut weight = dw_weight("dw/depthwise_kernel", 3, 3, 2);
        weight.spec["shape"] = json!(lying_shape);
        let path = write_model(dir.path(), topology, &[weight]);

        let err = read_error(&path);
        assert!(err.contains("model.json") && err.contains("group1-shard1of1.bin"), "{lying_shape:?}: {err}");
    }
}

#[test]
fn corrupt_model_json_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, br#"{"weightsManifest": [{"paths": ["a.bin"], "weights": [{"name": "#).unwrap();
    let err = read_error(&path);
    assert!(err.contains("model.json"), "{err}");

    std::fs::write(&path, br#"{"weightsManifest": [{"paths": "a.bin", "weights": 7}]}"#).unwrap();
    let err = read_error(&path);
    assert!(err.contains("model.json") && err.contains("weightsManifest"), "{err}");
}

#[test]
fn nan_weight_is_an_error_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    let mut values = hwc_values(3, 3, 2);
    values[5] = f32::NAN;
    let path = write_model(dir.path(), topology, &[f32_weight("dw/depthwise_kernel", &[3, 3, 2, 1], &values)]);

    let err = read_error(&path);
    assert!(err.contains("model.json") && err.contains("group1-shard1of1.bin") && err.contains("non-finite"), "{err}");
}

#[test]
fn depthwise_layer_without_its_kernel_in_the_manifest_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw"), keras_layer("DepthwiseConv2D", "lost")]);
    let path = write_model(dir.path(), topology, &[dw_weight("dw/depthwise_kernel", 3, 3, 2)]);

    let err = read_error(&path);
    assert!(err.contains("model.json") && err.contains("lost"), "{err}");
}

#[test]
fn unsupported_stored_dtype_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let topology = keras_topology(vec![keras_layer("DepthwiseConv2D", "dw")]);
    let mut weight = dw_weight("dw/depthwise_kernel", 3, 3, 2);
    weight.spec["dtype"] = json!("float64");
    let path = write_model(dir.path(), topology, &[weight]);

    let err = read_error(&path);
    assert!(err.contains("model.json") && err.contains("float64"), "{err}");
}

/// A bare weights manifest as face-api.js ships it: the list of groups alone,
/// in a file named like none of the other formats.
fn write_bare_manifest(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tiny_model-weights_manifest.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bare_weights_manifest_is_read_with_kernels_picked_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let group = write_group(
        dir.path(),
        "tiny_model",
        &[
            f32_weight("conv0/filters", &[3, 3, 3, 4], &[0.5; 108]),
            dw_weight("conv1/depthwise_filter", 3, 5, 2),
            u8_weight("conv1/pointwise_filter", &[1, 1, 2, 4], &[7; 8], 0.1, -0.4),
            f32_weight("conv1/bias", &[4], &[0.0; 4]),
        ],
        2,
    );
    let path = write_bare_manifest(dir.path(), &serde_json::to_string_pretty(&json!([group])).unwrap());

    let model = read_model(&path).unwrap();
    assert_eq!(model.format, "tfjs");
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    assert_eq!(
        (layer.name.as_str(), layer.kernel, layer.channels),
        ("conv1/depthwise_filter", KernelSize::new(3, 5), 2)
    );
    assert_eq!(layer.weights, asymmetric(2, 3, 5));
}

#[test]
fn bare_manifest_indented_so_that_its_first_brace_is_byte_8_is_still_tfjs() {
    let dir = tempfile::tempdir().unwrap();
    let group = write_group(dir.path(), "g", &[dw_weight("dw/depthwise_filter", 3, 3, 2)], 1);
    // `[`, a newline, six spaces: the `{` lands where a safetensors header starts.
    let path = write_bare_manifest(dir.path(), &format!("[\n      {group}]"));
    assert_eq!(std::fs::read(&path).unwrap()[8], b'{');

    assert_eq!(masterkey_formats::detect(&path).unwrap(), masterkey_formats::Format::Tfjs);
    assert_eq!(read_model(&path).unwrap().layers[0].weights, asymmetric(2, 3, 3));
}

#[test]
fn json_lists_that_are_not_weights_manifests_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["[]", "[1, 2]", r#"[{"paths": ["a.bin"]}]"#] {
        let path = write_bare_manifest(dir.path(), text);
        let err = read_error(&path);
        assert!(err.contains("tiny_model-weights_manifest.json") && err.contains("unsupported JSON"), "{text}: {err}");
    }
}

#[test]
fn bare_manifest_with_wrong_types_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_bare_manifest(dir.path(), r#"[{"paths": "a.bin", "weights": 7}]"#);
    let err = read_error(&path);
    assert!(err.contains("tiny_model-weights_manifest.json") && err.contains("list of such groups"), "{err}");
}

/// Real TF.js models: face-api's SSD MobileNetV1 is a bare weights manifest
/// of uint8 weights, picked by name; MoveNet Lightning is a graph model with
/// fp16 weights, picked through its depthwise nodes. The expected numbers
/// come from a standard-library Python reading of the JSON and shards, not
/// from this reader.
#[test]
fn real_face_api_and_movenet_models() {
    check_real_model(&RealModel {
        id: "ssd-mobilenetv1-tfjs",
        format: "tfjs",
        layers: 13,
        filters_per_kernel: &[("3x3", 4960)],
        first_layer: "MobilenetV1/Conv2d_1_depthwise/depthwise_weights",
        last_layer: "MobilenetV1/Conv2d_13_depthwise/depthwise_weights",
        first_filter: &[
            0.0,
            0.257834797,
            0.0,
            -0.0368335425,
            1.32600753,
            -0.0736670849,
            -0.0368335425,
            -1.39967461,
            -0.0736670849,
        ],
    });
    check_real_model(&RealModel {
        id: "movenet-lightning-tfjs",
        format: "tfjs",
        layers: 24,
        filters_per_kernel: &[("3x3", 7352)],
        first_layer: "StatefulPartitionedCall/kpt_offset_0/separable_conv2d_6/separable_conv2d/ReadVariableOp",
        last_layer: "StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/model/\
                     block_16_depthwise/depthwise_weights",
        first_filter: &[
            -0.743652344,
            0.178466797,
            0.634277344,
            -0.878417969,
            0.326904297,
            0.946777344,
            -0.921875,
            0.111022949,
            0.760253906,
        ],
    });
}
