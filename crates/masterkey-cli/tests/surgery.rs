//! `masterkey replace`, `probe` and a probe-driven `search` on the real EfficientNet-Lite0
//! weights and the shipped photos.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use masterkey_core::Bank;
use masterkey_formats::read_state_dict;
use serde_json::Value;

fn masterkey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().expect("binary runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn lite0() -> PathBuf {
    masterkey_fetch::ensure(masterkey_fetch::model("efficientnet-lite0").unwrap()).expect("fetch from the registry")
}

#[test]
fn replace_writes_the_state_dict_with_only_depthwise_filters_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lite0-published8.safetensors");
    let v = json_of(&masterkey(&[
        "replace",
        "efficientnet-lite0",
        "--bank",
        "published8",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 16);
    assert_eq!(layers.iter().map(|l| l["channels"].as_u64().unwrap()).sum::<u64>(), 2_624 + 6_336);
    assert_eq!(layers[3]["kernel"], "5x5");
    for layer in layers {
        let (cos, coverage) = (layer["mean_abs_cos"].as_f64().unwrap(), layer["coverage"].as_f64().unwrap());
        assert!(cos > 0.0 && cos <= 1.0 && (0.0..=1.0).contains(&coverage), "{layer}");
    }
    assert_eq!(v["coverage_threshold"].as_f64().unwrap() as f32, 0.8);

    let original: HashMap<String, (Vec<usize>, Vec<f32>)> =
        read_state_dict(&lite0()).unwrap().into_iter().map(|t| (t.name, (t.shape, t.values))).collect();
    let replaced = read_state_dict(&out).unwrap();
    assert_eq!(replaced.len(), original.len());
    let mut changed = Vec::new();
    for t in &replaced {
        let (shape, values) = &original[&t.name];
        assert_eq!(&t.shape, shape, "{}", t.name);
        if &t.values != values {
            changed.push(t.name.as_str());
        }
    }
    changed.sort();
    let mut dw: Vec<&str> = layers.iter().map(|l| l["layer"].as_str().unwrap()).collect();
    dw.sort();
    assert_eq!(changed, dw);
}

#[test]
fn probe_ranks_identity_bank_random_and_layers() {
    let v = json_of(&masterkey(&[
        "probe",
        lite0().to_str().unwrap(),
        "--bank",
        "published8",
        "--views",
        "4",
        "--random",
        "1",
        "--per-layer",
        "--json",
    ]));
    let rows = v["rows"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["identity", "bank", "random"]);
    assert_eq!((rows[0]["top1"].as_f64(), rows[0]["top5_overlap"].as_f64()), (Some(1.0), Some(1.0)));
    assert!(rows[0]["mean_kl"].as_f64().unwrap().abs() < 1e-9);
    assert_eq!((rows[1]["weights"].as_str(), rows[1]["keys"].as_u64()), (Some("published8"), Some(8)));
    assert_eq!((rows[2]["weights"].as_str(), rows[2]["seed"].as_u64()), (Some("random8-seed1"), Some(1)));
    assert!(rows[1]["mean_abs_cos"].as_f64() > rows[2]["mean_abs_cos"].as_f64(), "published8 fits better than random");
    assert_eq!(rows[1]["images"], 4);

    let layers = v["per_layer"].as_array().unwrap();
    assert_eq!(layers.len(), 16);
    let key = |l: &Value| (l["top1"].as_f64().unwrap(), -l["mean_kl"].as_f64().unwrap());
    assert!(layers.windows(2).all(|w| key(&w[0]) <= key(&w[1])), "most sensitive first");
}

#[test]
fn sweep_draws_agreement_versus_k_of_found_and_random_banks() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    let v = json_of(&masterkey(&[
        "probe",
        "efficientnet-lite0",
        "--views",
        "2",
        "--random",
        "1",
        "--sweep",
        svg.to_str().unwrap(),
        "--max-k",
        "2",
        "--json",
    ]));
    let points = v["sweep"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    // One k-means bank per kernel size of the model, K keys each.
    assert_eq!(points[1]["found"]["bank"], "kmeans-k2-3x3 + kmeans-k2-5x5");
    assert_eq!(points[1]["random"][0]["bank"], "random2-seed1");
    for p in points {
        let found = p["found"]["mean_abs_cos"].as_f64().unwrap();
        assert!(found > p["random"][0]["mean_abs_cos"].as_f64().unwrap(), "keys found in the filters fit them better");
    }
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("k-means banks, top-1") && drawn.contains("published8"));
}

#[test]
fn probe_reads_a_folder_of_images() {
    let dir = tempfile::tempdir().unwrap();
    for id in ["chelsea", "rocket"] {
        let photo = masterkey_fetch::ensure(masterkey_fetch::photo(id).unwrap()).unwrap();
        std::fs::copy(&photo, dir.path().join(photo.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let v = json_of(&masterkey(&[
        "probe",
        "efficientnet-lite0",
        "--images",
        dir.path().to_str().unwrap(),
        "--random",
        "0",
        "--json",
    ]));
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!((v["rows"][0]["images"].as_u64(), v["rows"][0]["top1"].as_f64()), (Some(2), Some(1.0)));
    assert!(v["images"].as_str().unwrap().contains("resize 256, centre crop 224"));
}

#[test]
fn probe_of_a_model_that_is_not_efficientnet_lite0_names_the_file() {
    let ppocr = masterkey_fetch::ensure(masterkey_fetch::model("ppocr-cls").unwrap()).unwrap();
    let out = masterkey(&["probe", ppocr.to_str().unwrap(), "--views", "1", "--random", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ch_ppocr_mobile_v2.0_cls_infer.onnx") && err.contains("expected a state dict"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = masterkey(&["replace", "no-such-model", "-o", dir.path().join("x").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model: no such file, and not a default model id"));
}

#[test]
fn autoencoder_search_can_be_driven_by_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let bank_file = dir.path().join("probed.safetensors");
    let lite0 = lite0();
    let probe_arg = format!("probe:{}", lite0.display());
    let args = [
        "search",
        lite0.to_str().unwrap(),
        "--method",
        "autoencoder",
        "--score",
        &probe_arg,
        "-k",
        "2",
        "--max-k",
        "2",
        "--candidates",
        "5",
        "--steps",
        "200",
        "--refine-rounds",
        "0",
        "--probe-views",
        "2",
        "-o",
        bank_file.to_str().unwrap(),
        "--json",
    ];
    let v = json_of(&masterkey(&args));
    assert_eq!((v["kernel"].as_str(), v["k"].as_u64()), (Some("5x5"), Some(2)));
    let source = v["bank"]["source"].as_str().unwrap();
    assert!(source.contains("mean KL(original || replaced)") && source.contains("9 5x5 depthwise layers"), "{source}");
    assert_eq!(Bank::load(&bank_file).unwrap().len(), 2);

    let out = masterkey(&["search", lite0.to_str().unwrap(), "--score", &probe_arg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--score applies to --method autoencoder only"));
}

#[test]
fn model_ids_are_accepted_where_model_files_are() {
    lite0();
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    let v = json_of(&masterkey(&["extract", "efficientnet-lite0", "-o", set.to_str().unwrap(), "--json"]));
    assert_eq!(v["filters"].as_u64(), Some(2_624 + 6_336), "{v}");
    let out = masterkey(&["extract", "no-such-model-id", "-o", set.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model-id"));
}

/// Options that apply only with another are refused without it, not ignored.
#[test]
fn probe_refuses_options_that_do_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().to_str().unwrap();
    for (args, says) in [
        (vec!["probe", "efficientnet-lite0", "--max-k", "3"], "--sweep"),
        (vec!["probe", "efficientnet-lite0", "--images", images, "--views", "3"], "cannot be used with"),
        (vec!["probe", "efficientnet-lite0", "--images", images, "--seed", "3"], "cannot be used with"),
    ] {
        let out = masterkey(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{}: {err}", args.join(" "));
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
