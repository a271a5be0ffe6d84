//! safetensors files, single and sharded, written here with the `safetensors`
//! crate's own serializer (or by hand where the file must be broken).

use std::path::{Path, PathBuf};

use masterkey_core::KernelSize;
use masterkey_formats::{read_model, read_state_dict};

mod common;
use common::asymmetric;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// One tensor to write: name, dtype, shape, little-endian bytes.
type Tensor = (&'static str, Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_tensor(name: &'static str, shape: &[usize], values: &[f32]) -> Tensor {
    (name, Dtype::F32, shape.to_vec(), f32_bytes(values))
}

fn dw_tensor(name: &'static str, channels: usize, kh: usize, kw: usize) -> Tensor {
    f32_tensor(name, &[channels, 1, kh, kw], &asymmetric(channels, kh, kw))
}

fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| (*name, TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A safetensors file with a hand-written header, for files that are wrong.
fn write_raw(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn write_index(path: &Path, weight_map: &[(&str, &str)]) {
    let map: serde_json::Map<String, serde_json::Value> =
        weight_map.iter().map(|(tensor, shard)| (tensor.to_string(), (*shard).into())).collect();
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

fn read_error(path: &Path) -> String {
    read_model(path).expect_err("the file is broken and must be rejected").to_string()
}

fn temp_file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn single_file_keeps_non_square_filter_orientation_and_skips_other_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "model.safetensors");
    write_safetensors(
        &path,
        &[
            dw_tensor("blocks.0.conv_dw.weight", 2, 3, 5),
            f32_tensor("blocks.0.conv_pw.weight", &[4, 2, 1, 1], &[1.0; 8]),
            f32_tensor("blocks.0.conv_dw.bias", &[2], &[0.5, 0.5]),
            dw_tensor("conv_stem.weight", 8, 3, 3),
        ],
    );

    let model = read_model(&path).unwrap();
    assert_eq!(model.format, "safetensors");
    assert_eq!(model.layers.len(), 1);
    let layer = &model.layers[0];
    assert_eq!(layer.name, "blocks.0.conv_dw.weight");
    assert_eq!(layer.kernel, KernelSize::new(3, 5));
    assert_eq!(layer.channels, 2);
    assert_eq!(layer.filter(0)[..5], [0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(layer.filter(1)[5..10], [110.0, 111.0, 112.0, 113.0, 114.0]);
    assert_eq!(layer.filter(1)[14], 124.0);
}

#[test]
fn single_file_orders_layers_by_number_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "ordered.safetensors");
    write_safetensors(
        &path,
        &[dw_tensor("blocks.10.conv_dw.weight", 2, 3, 3), dw_tensor("blocks.2.conv_dw.weight", 2, 5, 5)],
    );

    let names: Vec<String> = read_model(&path).unwrap().layers.into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["blocks.2.conv_dw.weight", "blocks.10.conv_dw.weight"]);
}

#[test]
fn half_bfloat_and_double_storage_decode_to_the_same_filters() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "mixed.safetensors");
    let values = asymmetric(2, 3, 5);
    let f16: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    let f64: Vec<u8> = values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect();
    write_safetensors(
        &path,
        &[
            ("a.dw.weight", Dtype::F16, vec![2, 1, 3, 5], f16),
            ("b.dw.weight", Dtype::BF16, vec![2, 1, 3, 5], bf16),
            ("c.dw.weight", Dtype::F64, vec![2, 1, 3, 5], f64),
        ],
    );

    let layers = read_model(&path).unwrap().layers;
    assert_eq!(layers.len(), 3);
    for layer in &layers {
        assert_eq!(layer.weights, values, "{}", layer.name);
    }
}

#[test]
fn state_dict_has_every_float_tensor_in_name_order_and_leaves_integers_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "state.safetensors");
    let f16: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    write_safetensors(
        &path,
        &[
            dw_tensor("blocks.10.conv_dw.weight", 2, 3, 3),
            f32_tensor("blocks.2.conv_pw.weight", &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
            ("blocks.2.bn.bias", Dtype::F16, vec![2], f16),
            ("blocks.2.bn.num_batches_tracked", Dtype::I64, vec![], 3i64.to_le_bytes().to_vec()),
        ],
    );
    let tensors = read_state_dict(&path).unwrap();
    let summary: Vec<(&str, &[usize])> = tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    assert_eq!(
        summary,
        [
            ("blocks.2.bn.bias", [2].as_slice()),
            ("blocks.2.conv_pw.weight", [2, 3].as_slice()),
            ("blocks.10.conv_dw.weight", [2, 1, 3, 3].as_slice())
        ]
    );
    assert_eq!(tensors[0].values, [1.5, -2.0]);
    assert_eq!(tensors[1].values, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(tensors[2].values, asymmetric(2, 3, 3));
}

#[test]
fn sharded_model_gathers_layers_of_all_shards_in_model_order() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &temp_file(&dir, "model-00001-of-00002.safetensors"),
        &[dw_tensor("blocks.10.conv_dw.weight", 2, 3, 5), f32_tensor("blocks.10.bn.weight", &[2], &[1.0, 1.0])],
    );
    write_safetensors(
        &temp_file(&dir, "model-00002-of-00002.safetensors"),
        &[dw_tensor("blocks.2.conv_dw.weight", 3, 3, 3), f32_tensor("head.weight", &[10, 3], &[0.0; 30])],
    );
    let index = temp_file(&dir, "model.safetensors.index.json");
    write_index(
        &index,
        &[
            ("blocks.10.conv_dw.weight", "model-00001-of-00002.safetensors"),
            ("blocks.10.bn.weight", "model-00001-of-00002.safetensors"),
            ("blocks.2.conv_dw.weight", "model-00002-of-00002.safetensors"),
            ("head.weight", "model-00002-of-00002.safetensors"),
        ],
    );

    let model = read_model(&index).unwrap();
    assert_eq!(model.format, "safetensors-sharded");
    let names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["blocks.2.conv_dw.weight", "blocks.10.conv_dw.weight"]);
    assert_eq!(model.layers[0].channels, 3);
    assert_eq!(model.layers[1].kernel, KernelSize::new(3, 5));
    assert_eq!(model.layers[1].filter(1)[9], 114.0);
}

#[test]
fn sharded_model_with_a_missing_shard_names_it() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(&temp_file(&dir, "present.safetensors"), &[dw_tensor("a.dw.weight", 2, 3, 3)]);
    let index = temp_file(&dir, "model.safetensors.index.json");
    write_index(&index, &[("a.dw.weight", "present.safetensors"), ("b.dw.weight", "absent.safetensors")]);

    let err = read_error(&index);
    assert!(err.contains("absent.safetensors"), "{err}");
}

#[test]
fn sharded_model_whose_shard_lacks_a_listed_tensor_names_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(&temp_file(&dir, "shard-a.safetensors"), &[dw_tensor("a.dw.weight", 2, 3, 3)]);
    let index = temp_file(&dir, "model.safetensors.index.json");
    write_index(&index, &[("a.dw.weight", "shard-a.safetensors"), ("b.dw.weight", "shard-a.safetensors")]);

    let err = read_error(&index);
    assert!(err.contains("shard-a.safetensors") && err.contains("b.dw.weight"), "{err}");
}

#[test]
fn truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "truncated.safetensors");
    write_safetensors(&path, &[dw_tensor("a.dw.weight", 2, 3, 3)]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();

    let err = read_error(&path);
    assert!(err.contains("truncated.safetensors"), "{err}");
}

#[test]
fn corrupt_header_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "corrupt.safetensors");
    write_raw(&path, "{\"a.dw.weight\": {\"dtype\": \"F32\", \"shape\": [2, 1, 3", &[0; 72]);

    let err = read_error(&path);
    assert!(err.contains("corrupt.safetensors"), "{err}");
}

#[test]
fn header_length_past_the_end_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "short-header.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();

    let err = read_error(&path);
    assert!(err.contains("short-header.safetensors"), "{err}");
}

#[test]
fn shape_that_does_not_match_the_data_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "mismatch.safetensors");
    write_raw(&path, r#"{"a.dw.weight":{"dtype":"F32","shape":[2,1,3,3],"data_offsets":[0,40]}}"#, &[0; 40]);

    let err = read_error(&path);
    assert!(err.contains("mismatch.safetensors"), "{err}");
}

#[test]
fn data_offsets_past_the_end_are_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "offsets.safetensors");
    write_raw(&path, r#"{"a.dw.weight":{"dtype":"F32","shape":[2,1,3,3],"data_offsets":[0,72]}}"#, &[0; 40]);

    let err = read_error(&path);
    assert!(err.contains("offsets.safetensors"), "{err}");
}

#[test]
fn nan_weight_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "nan.safetensors");
    let mut values = asymmetric(2, 3, 3);
    values[12] = f32::NAN;
    write_safetensors(&path, &[f32_tensor("a.dw.weight", &[2, 1, 3, 3], &values)]);

    let err = read_error(&path);
    assert!(err.contains("nan.safetensors") && err.contains("non-finite"), "{err}");
}

#[test]
fn integer_tensor_of_depthwise_shape_is_rejected_rather_than_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "int8.safetensors");
    write_safetensors(&path, &[("a.dw.weight", Dtype::I8, vec![2, 1, 3, 3], vec![1; 18])]);

    let err = read_error(&path);
    assert!(err.contains("int8.safetensors") && err.contains("I8"), "{err}");
}
