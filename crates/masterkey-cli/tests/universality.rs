//! End-to-end test of `masterkey experiment universality` on the real LFW
//! face / non-face subset of the pinned scikit-image wheel (fetched into the
//! cache on first use, as the photos of the surgery tests are).

use std::process::Command;

use serde_json::Value;

fn masterkey(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().unwrap()
}

#[test]
fn universality_trains_on_lfw_snapshots_every_epoch_and_writes_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("universality");
    let args = [
        "experiment",
        "universality",
        "--sets",
        "lfw-subset:2",
        "--seeds",
        "5",
        "--depths",
        "1,1,1,1",
        "--dims",
        "16,32,64,128",
        "--batch-size",
        "32",
        "--autoencoder-steps",
        "50",
        "-o",
        results.to_str().unwrap(),
        "--json",
    ];
    let out = masterkey(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["kernel"], "7x7");
    assert_eq!(v["datasets"][0]["label"], "lfw-subset");
    assert_eq!(v["datasets"][0]["train_images"], 160, "a fifth of each class is the test split");
    let run = &v["runs"][0];
    assert_eq!(run["epochs"].as_array().unwrap().len(), 3, "initialisation and two epochs");
    assert!(run["test_accuracy"].as_f64().unwrap() > 0.5, "faces against non-faces: {}", run["test_accuracy"]);
    // 16 + 32 + 64 + 128 DW filters of 7x7.
    assert_eq!(run["epochs"][2]["stats"]["filters"], 240);
    assert_eq!(v["pooled"].as_array().unwrap().len(), 2, "initialisation and trained, one set");
    for file in ["results.md", "results.json", "banks-lfw-subset.png", "matched-per-epoch.svg"] {
        assert!(results.join(file).is_file(), "{file}");
    }
    assert!(results.join("runs/lfw-subset/seed-5/dw-snapshots/epoch-0/set.json").is_file());
    // The snapshots are filter sets the other commands read.
    let snapshot = results.join("runs/lfw-subset/seed-5/dw-snapshots/epoch-2");
    let fit = masterkey(&["fit", snapshot.to_str().unwrap(), "--json"]);
    assert!(fit.status.success(), "{}", String::from_utf8_lossy(&fit.stderr));

    let bad = masterkey(&["experiment", "universality", "--sets", "cifar10", "--results", results.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KIND=FOLDER"), "{}", String::from_utf8_lossy(&bad.stderr));
}
