//! End-to-end tests of `masterkey scalespace`.

use std::process::{Command, Output};

use masterkey_core::{Bank, KernelSize};
use serde_json::Value;

fn masterkey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().expect("binary runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn fit_of_published8_gives_every_key_a_family_params_and_abs_cos() {
    let v = json_of(&masterkey(&["scalespace", "fit", "--bank", "published8", "--json"]));
    let keys = v["keys"].as_array().expect("a keys list");
    assert_eq!(keys.len(), 8);
    for key in keys {
        assert!(key["family"].as_str().is_some_and(|f| !f.is_empty()), "{key}");
        assert!(key["params"]["sigma_x"].as_f64().is_some() && key["params"]["sigma_y"].as_f64().is_some(), "{key}");
        let abs_cos = key["abs_cos"].as_f64().expect("abs_cos");
        assert!((0.8..=1.0).contains(&abs_cos), "{key}");
    }
    assert_eq!(keys[6]["family"], "sharpen");
    assert!(keys[6]["params"]["alpha"].as_f64().is_some());
    assert_eq!(v["criterion"], "l2");
}

#[test]
fn bank_writes_an_idealised_bank_and_its_picture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ideal.safetensors");
    let png = dir.path().join("ideal.png");
    let run =
        masterkey(&["scalespace", "bank", "--size", "9", "-o", out.to_str().unwrap(), "--png", png.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bank = Bank::load(&out).unwrap();
    assert_eq!((bank.len(), bank.kernel), (8, KernelSize::square(9)));
    assert!(bank.labels[0].contains("offset-down"), "{:?}", bank.labels);
    assert!(png.exists());
    let bad = masterkey(&["scalespace", "bank", "--size", "8", "-o", out.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("odd"));
}

#[test]
fn kernel_prints_the_model_and_refuses_bad_parameters() {
    let v = json_of(&masterkey(&[
        "scalespace",
        "kernel",
        "gauss",
        "--sigma-x",
        "0.8",
        "--sigma-y",
        "1.1",
        "--size",
        "5",
        "--json",
    ]));
    let rows = v["taps"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(v["family"], "gauss");
    assert_eq!(v["discretisation"], "discrete");
    // A 5x5 window of a unit-mass Gaussian holds most, not all, of the mass.
    let sum = v["sum"].as_f64().unwrap();
    assert!(sum > 0.9 && sum < 1.0, "{sum}");
    let bad = masterkey(&["scalespace", "kernel", "sharpen", "--sigma-x", "0.8", "--size", "5"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs alpha"));
}
