//! End-to-end tests of `masterkey search` and `masterkey compare` on a small
//! saved set made here from the published keys.

use std::path::Path;
use std::process::{Command, Output};

use masterkey_core::{Bank, DwLayer, FilterSet, KernelSize, ModelFilters};
use serde_json::Value;

fn masterkey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().expect("binary runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// Uniform in [-1, 1) from a 64-bit LCG.
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// A saved set of `per_key` shifted copies `a*key + b + noise` of every
/// published key (|a| in [0.5, 1.5] of either sign, 5% noise), plus a
/// dead filter and a few 3x3 filters in a smaller group.
fn write_set(dir: &Path, per_key: usize) {
    let bank = Bank::published8();
    let mut state = 42;
    let mut weights = Vec::new();
    for i in 0..8 * per_key {
        let key = bank.key(i % 8);
        let a = 1.0 + 0.5 * uniform(&mut state);
        let a = if uniform(&mut state) < 0.0 { -a } else { a };
        let b = 0.3 * uniform(&mut state);
        let noise: Vec<f32> = (0..49).map(|_| uniform(&mut state)).collect();
        let norm = noise.iter().map(|v| v * v).sum::<f32>().sqrt();
        weights.extend(key.iter().zip(&noise).map(|(x, e)| a * x + b + 0.05 * a.abs() * e / norm));
    }
    weights.extend([0.25f32; 49]);
    let dw7 = DwLayer::new("blocks.0.conv_dw.weight", KernelSize::square(7), 8 * per_key + 1, weights).unwrap();
    let small: Vec<f32> = (0..9 * 4).map(|_| uniform(&mut state)).collect();
    let dw3 = DwLayer::new("blocks.1.conv_dw.weight", KernelSize::square(3), 4, small).unwrap();
    let mut set = FilterSet::default();
    set.add_model(&ModelFilters {
        source: "made-here.safetensors".into(),
        format: "test".into(),
        layers: vec![dw7, dw3],
    });
    set.save(dir).unwrap();
}

#[test]
fn kmeans_search_finds_the_published_keys_and_compare_matches_them() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set, 40);
    let bank_file = dir.path().join("found.safetensors");
    let v = json_of(&masterkey(&[
        "search",
        set.to_str().unwrap(),
        "-k",
        "auto",
        "--method",
        "kmeans",
        "--max-k",
        "10",
        "-o",
        bank_file.to_str().unwrap(),
        "--json",
    ]));
    // The largest group (7x7) is searched; the dead filter is left out.
    assert_eq!((v["kernel"].as_str(), v["k"].as_u64(), v["k_rule"].as_str()), (Some("7x7"), Some(8), Some("elbow")));
    assert_eq!(v["bank"]["name"], "kmeans-k8-seed1");
    assert_eq!(v["bank"]["licence"], "derived from the input models");
    assert_eq!(v["curve"]["dead"], 1);
    assert_eq!(v["curve"]["points"].as_array().unwrap().len(), 10);
    let usage: Vec<u64> = v["usage"].as_array().unwrap().iter().map(|u| u["filters"].as_u64().unwrap()).collect();
    assert_eq!(usage, vec![40; 8]);
    let curve_file = dir.path().join("found.curve.json");
    assert_eq!(v["curve_file"].as_str(), curve_file.to_str());
    let curve: Value = serde_json::from_slice(&std::fs::read(&curve_file).unwrap()).unwrap();
    assert_eq!(curve, v["curve"]);
    assert_eq!(Bank::load(&bank_file).unwrap().len(), 8);

    let cmp = json_of(&masterkey(&["compare", "published8", bank_file.to_str().unwrap(), "--json"]));
    let pairs = cmp["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 8);
    for p in pairs {
        assert!(p["abs_cos"].as_f64().unwrap() >= 0.98, "{p}");
        assert_eq!(p["symmetry"], "identity");
    }
    assert!(cmp["mean_abs_cos"].as_f64().unwrap() >= 0.99);

    let text = masterkey(&["compare", "published8", bank_file.to_str().unwrap(), "--symmetries"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("mean matched |cos|"));
}

#[test]
fn autoencoder_and_pca_searches_write_banks_of_the_asked_size() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set, 10);
    for (method, extra) in [("autoencoder", &["--steps", "200", "--candidates", "12"][..]), ("pca", &[][..])] {
        let bank_file = dir.path().join(format!("{method}.safetensors"));
        let v = json_of(&masterkey(
            &[
                &[
                    "search",
                    set.to_str().unwrap(),
                    "-k",
                    "3",
                    "--method",
                    method,
                    "--max-k",
                    "4",
                    "-o",
                    bank_file.to_str().unwrap(),
                ][..],
                extra,
                &["--json"],
            ]
            .concat(),
        ));
        assert_eq!((v["k"].as_u64(), v["k_rule"].as_str()), (Some(3), Some("fixed")), "{method}");
        assert_eq!(v["curve"]["points"].as_array().unwrap().len(), 4, "{method}");
        assert!(v["bank"]["source"].as_str().unwrap().starts_with(method), "{method}");
        assert_eq!(Bank::load(&bank_file).unwrap().len(), 3, "{method}");
    }
    // Options of another method are refused, not ignored.
    for option in [["--seed", "1"], ["--restarts", "1"], ["--steps", "5"]] {
        let out =
            masterkey(&[&["search", set.to_str().unwrap(), "-k", "3", "--method", "pca"][..], &option[..]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.trim_end().lines().count() == 1 && err.contains(option[0]), "{err}");
    }
}

#[test]
fn search_of_a_missing_kernel_or_zero_keys_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    write_set(&set, 2);
    let out = masterkey(&["search", set.to_str().unwrap(), "--kernel", "5x5"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("5x5") && stderr.contains("3x3, 7x7"), "{stderr}");
    let out = masterkey(&["search", set.to_str().unwrap(), "-k", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`auto`"));
}
