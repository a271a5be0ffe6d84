//! End-to-end tests of the `masterkey` binary: real models fetched from the
//! registry, fixtures written here, and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use masterkey_core::{FilterSet, KernelSize};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

fn masterkey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().expect("binary runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn real_model(id: &str) -> PathBuf {
    masterkey_fetch::ensure(masterkey_fetch::model(id).expect("known id"))
        .expect("fetch the real model from the registry")
}

fn kernels(v: &Value) -> HashMap<String, u64> {
    v["kernels"].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
}

#[test]
fn real_efficientnet_lite0_has_2624_3x3_and_6336_5x5_filters() {
    let model = real_model("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let v = json_of(&masterkey(&["extract", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(kernels(&v), HashMap::from([("3x3".into(), 2624), ("5x5".into(), 6336)]));
    assert_eq!(v["models"][0]["layers"], 16);
    assert_eq!(v["models"][0]["format"], "pytorch-legacy");
    let set = FilterSet::load(&out).unwrap();
    assert_eq!(set.len(), 2624 + 6336);
}

#[test]
fn real_ppocr_classifier_has_64_3x3_and_800_5x5_filters() {
    let model = real_model("ppocr-cls");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let v = json_of(&masterkey(&["extract", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(kernels(&v), HashMap::from([("3x3".into(), 64), ("5x5".into(), 800)]));
    assert_eq!(v["models"][0]["format"], "onnx");
}

#[test]
fn fit_of_real_filters_reports_coverage_by_threshold() {
    let model = real_model("ppocr-cls");
    let dir = tempfile::tempdir().unwrap();
    let v = json_of(&masterkey(&[
        "fit",
        "--bank",
        "published8",
        model.to_str().unwrap(),
        "-o",
        dir.path().to_str().unwrap(),
        "--json",
    ]));
    let coverage = v["coverage"].as_object().unwrap();
    for t in ["0.5", "0.6", "0.7", "0.8", "0.9", "0.95"] {
        let c = coverage[t].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c), "coverage at {t}: {c}");
    }
    // Coverage can only fall as the threshold rises.
    assert!(coverage["0.5"].as_f64() >= coverage["0.95"].as_f64());
    let mean = v["mean_abs_cos"].as_f64().unwrap();
    assert!(mean > 0.0 && mean <= 1.0);
    assert_eq!(v["filters"], 864);
    assert!(v["resize_rule"].as_str().unwrap().starts_with("centre-crop"));
    let csv = std::fs::read_to_string(dir.path().join("fits.csv")).unwrap();
    assert_eq!(csv.lines().count(), 865);
}

/// A safetensors model with one DW layer of two 3x5 filters holding
/// `100*c + 10*r + col`, so orientation mistakes show.
fn write_asymmetric_model(path: &Path) {
    let values: Vec<f32> =
        (0..2).flat_map(|c| (0..3).flat_map(move |r| (0..5).map(move |col| (100 * c + 10 * r + col) as f32))).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let pw: Vec<u8> = [1.0f32; 8].iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        ("blocks.0.conv_dw.weight", TensorView::new(Dtype::F32, vec![2, 1, 3, 5], &bytes).unwrap()),
        ("blocks.0.conv_pw.weight", TensorView::new(Dtype::F32, vec![4, 2, 1, 1], &pw).unwrap()),
    ];
    safetensors::serialize_to_file(tensors, None, path).unwrap();
}

#[test]
fn extract_keeps_orientation_and_fit_accepts_a_saved_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bin");
    write_asymmetric_model(&model);
    let set_dir = dir.path().join("set");
    let v = json_of(&masterkey(&["extract", model.to_str().unwrap(), "-o", set_dir.to_str().unwrap(), "--json"]));
    assert_eq!(kernels(&v), HashMap::from([("3x5".into(), 2)]));
    let set = FilterSet::load(&set_dir).unwrap();
    let g = &set.groups[&KernelSize::new(3, 5)];
    assert_eq!(g.filter(1)[5 + 3], 113.0); // channel 1, row 1, column 3
    assert_eq!(g.provenance[1].layer_name, "blocks.0.conv_dw.weight");

    let v = json_of(&masterkey(&["fit", set_dir.to_str().unwrap(), "--json"]));
    assert_eq!(v["filters"], 2);
    assert_eq!(v["per_kernel"]["3x5"]["filters"], 2);
}

#[test]
fn bad_input_names_the_file_exits_non_zero_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    write_asymmetric_model(&model);
    let bytes = std::fs::read(&model).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    let garbage = dir.path().join("garbage.pth");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();
    for bad in [&truncated, &garbage] {
        let out_dir = dir.path().join("out");
        let out =
            masterkey(&["extract", model.to_str().unwrap(), bad.to_str().unwrap(), "-o", out_dir.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(bad.file_name().unwrap().to_str().unwrap()), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
        assert!(!out_dir.exists(), "no partial output for {}", bad.display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 3, "{leftovers:?}");
}

#[test]
fn bank_show_draws_a_png_and_banks_round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("p8.png");
    let v = json_of(&masterkey(&["bank", "show", "published8", "-o", png.to_str().unwrap(), "--json"]));
    assert_eq!(v["keys"].as_array().unwrap().len(), 8);
    assert_eq!(v["licence"], "CC BY 4.0");
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");

    let bank_file = dir.path().join("p8.safetensors");
    assert!(masterkey(&["bank", "save", "published8", "-o", bank_file.to_str().unwrap()]).status.success());
    let model = dir.path().join("m.safetensors");
    write_asymmetric_model(&model);
    let a = json_of(&masterkey(&["fit", "--bank", bank_file.to_str().unwrap(), model.to_str().unwrap(), "--json"]));
    let b = json_of(&masterkey(&["fit", "--bank", "published8", model.to_str().unwrap(), "--json"]));
    assert_eq!(a["coverage"], b["coverage"]);
    assert_eq!(a["usage"], b["usage"]);
}

/// Real models of three formats (PyTorch zip, ONNX, TFLite), truncated or
/// with bytes overwritten at seeded places: every run that fails exits with
/// status 1 (no panic), prints one line naming the file and leaves no output.
#[test]
fn corrupt_real_models_fail_on_one_line_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let mut failures = 0;
    for id in ["efficientnet-lite0", "ppocr-cls", "blazeface-tflite"] {
        let model = real_model(id);
        let original = std::fs::read(&model).unwrap();
        for m in 0..30 {
            let mut bytes = original.clone();
            if m % 3 == 0 {
                bytes.truncate(next() % bytes.len());
            } else {
                for _ in 0..8 {
                    let at = next() % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            let file = dir.path().join(format!("{id}-mutant-{m}.{}", model.extension().unwrap().to_str().unwrap()));
            std::fs::write(&file, &bytes).unwrap();
            let out_dir = dir.path().join("out");
            let out = masterkey(&["extract", file.to_str().unwrap(), "-o", out_dir.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                std::fs::remove_dir_all(&out_dir).unwrap();
                continue;
            }
            failures += 1;
            assert_eq!(out.status.code(), Some(1), "{}: {stderr}", file.display());
            assert_eq!(stderr.trim_end().lines().count(), 1, "one-line error: {stderr}");
            assert!(stderr.contains(file.file_name().unwrap().to_str().unwrap()), "{stderr}");
            assert!(!out_dir.exists(), "no partial output for {}", file.display());
        }
    }
    assert!(failures >= 30, "most mutants are refused ({failures} of 90)");
}

/// Small files that declare huge tensors (safetensors, ONNX, IDX): the
/// readers compare the declared sizes with the file before allocating, so
/// under a 512 MiB address-space limit each run ends with its one-line error,
/// not an allocation failure.
#[test]
fn small_files_declaring_huge_tensors_fail_cleanly_under_512_mib() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let header = br#"{"blocks.0.conv_dw.weight":{"dtype":"F32","shape":[268435456,1,7,7],"data_offsets":[0,16]}}"#;
    let mut header = header.to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut safetensors = (header.len() as u64).to_le_bytes().to_vec();
    safetensors.extend(&header);
    safetensors.extend([0u8; 16]);
    std::fs::write(at("huge.safetensors"), safetensors).unwrap();
    std::fs::write(at("huge.onnx"), onnx_with_huge_depthwise_weight()).unwrap();
    let idx = at("idx");
    std::fs::create_dir(&idx).unwrap();
    let mut images = [0x803u32, 1 << 30, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
    images.extend([0u8; 784]);
    std::fs::write(idx.join("train-images-idx3-ubyte"), &images).unwrap();
    // The other three files are well-formed, holding one image.
    let labels = [[0x801u32, 1].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>(), vec![0]].concat();
    let one = [[0x803u32, 1, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>(), vec![0; 784]].concat();
    std::fs::write(idx.join("train-labels-idx1-ubyte"), &labels).unwrap();
    std::fs::write(idx.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    std::fs::write(idx.join("t10k-images-idx3-ubyte"), &one).unwrap();

    let limited = |args: &[&str]| {
        let out = Command::new("prlimit")
            .arg(format!("--as={}", 512 << 20))
            .arg(env!("CARGO_BIN_EXE_masterkey"))
            .args(args)
            .output()
            .expect("prlimit (util-linux) runs the command");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        stderr
    };
    let out = at("out");
    for (file, says) in [("huge.safetensors", "invalid shape"), ("huge.onnx", "52613349376 bytes")] {
        let err = limited(&["extract", at(file).to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(err.contains(file) && err.contains(says), "{err}");
    }
    let err = limited(&["train", "--dataset", "idx", "--data", idx.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("841813590016 bytes"), "{err}");
    assert!(!out.exists());
}

/// An ONNX model (protobuf written by hand) with one depthwise Conv whose
/// weight declares 2^28 x 1 x 7 x 7 floats and holds 16 bytes.
fn onnx_with_huge_depthwise_weight() -> Vec<u8> {
    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }
    let number = |field: u64, n: u64| [varint(field << 3), varint(n)].concat();
    let bytes = |field: u64, b: &[u8]| [varint((field << 3) | 2), varint(b.len() as u64), b.to_vec()].concat();
    let dims: Vec<u8> = [1u64 << 28, 1, 7, 7].iter().flat_map(|&d| number(1, d)).collect();
    let tensor = [dims, number(2, 1), bytes(8, b"w"), bytes(9, &[0; 16])].concat();
    let group = [bytes(1, b"group"), number(3, 1 << 28), number(20, 2)].concat();
    let node = [bytes(1, b"x"), bytes(1, b"w"), bytes(2, b"y"), bytes(4, b"Conv"), bytes(5, &group)].concat();
    let graph = [bytes(1, &node), bytes(5, &tensor)].concat();
    [number(1, 7), bytes(7, &graph)].concat()
}

/// Two `masterkey fetch` processes started at once on an empty cache both
/// succeed and leave one verified copy (each downloads into a private
/// folder and renames; extraction writes a temporary file and renames).
#[test]
fn two_fetches_at_once_on_an_empty_cache_both_succeed() {
    let cache = tempfile::tempdir().unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_masterkey"))
            .args(["fetch", "ppocr-cls", "--json"])
            .env("MASTERKEY_CACHE", cache.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let mut paths = Vec::new();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        paths.push(json_of(&out)[0]["path"].as_str().map(String::from));
    }
    assert!(paths[0].is_some() && paths[0] == paths[1], "{paths:?}");
    // What the cache holds is the verified file, and a later run finds it.
    let again = Command::new(env!("CARGO_BIN_EXE_masterkey"))
        .args(["extract", "ppocr-cls", "-o", cache.path().join("set").to_str().unwrap(), "--json"])
        .env("MASTERKEY_CACHE", cache.path())
        .output()
        .unwrap();
    assert_eq!(json_of(&again)["filters"], 864);
    let partial: Vec<_> =
        walk(cache.path()).into_iter().filter(|p| p.to_string_lossy().contains(".partial-")).collect();
    assert!(partial.is_empty(), "staging folders left behind: {partial:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            let mut found = vec![path.clone()];
            if path.is_dir() {
                found.extend(walk(&path));
            }
            found
        })
        .collect()
}

/// Outputs that cannot be written whole (a file-size limit stands in for a
/// full disk) end with a one-line error and leave the previous outputs as
/// they were.
#[test]
fn a_write_that_fails_part_way_leaves_the_previous_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (set, fit) = (dir.path().join("set"), dir.path().join("fit"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    json_of(&masterkey(&["extract", "efficientnet-lite0", "-o", &s(&set), "--json"]));
    json_of(&masterkey(&["fit", &s(&set), "-o", &s(&fit), "--json"]));
    let before: Vec<(PathBuf, Vec<u8>)> =
        walk(dir.path()).into_iter().filter(|p| p.is_file()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    for args in [vec!["extract", "efficientnet-lite0", "-o", &s(&set)], vec!["fit", &s(&set), "-o", &s(&fit)]] {
        let out = Command::new("prlimit")
            .arg("--fsize=65536")
            .arg(env!("CARGO_BIN_EXE_masterkey"))
            .args(&args)
            .output()
            .expect("prlimit (util-linux) runs the command");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains("File too large"), "{err}");
    }
    let after: Vec<(PathBuf, Vec<u8>)> =
        walk(dir.path()).into_iter().filter(|p| p.is_file()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert!(before == after, "the outputs of the first runs are unchanged and nothing else is left");
}

/// A command line clap refuses ends in one line too (clap's error and tip,
/// without its usage block), with exit status 2; help is still shown whole.
#[test]
fn usage_errors_are_one_line() {
    for (args, says) in [
        (&["train", "--epochs", "abc"][..], "invalid value 'abc' for '--epochs <EPOCHS>'"),
        (&["experiment", "small-data", "--fraction", "0.1"], "tip: a similar argument exists: '--fractions'"),
        (&["search"], "required arguments were not provided: <INPUTS>"),
        (&["bogus"], "unrecognized subcommand 'bogus'"),
    ] {
        let out = masterkey(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", args.join(" "));
        assert!(err.trim_end().lines().count() == 1 && err.contains(says), "{}: {err}", args.join(" "));
    }
    let help = masterkey(&["train", "--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).lines().count() > 20);
}
