//! End-to-end tests of `masterkey train` and `masterkey eval` on a small
//! synthetic data set written as IDX files: JSON output, checkpoints, a real
//! SIGKILL in the middle of a run followed by `--resume`, and bad input.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use masterkey_train::data::synthetic;
use serde_json::Value;

fn masterkey(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_masterkey"));
    c.args(args);
    c
}

/// The last stdout line, parsed.
fn last_json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a line on stdout")).expect("last line is one JSON object")
}

/// A tiny ConvNeXt V2 (2 stages) on 16 px synthetic stripes, 4 epochs.
fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--dataset",
        "idx",
        "--data",
        data,
        "--model",
        "convnextv2-atto",
        "--depths",
        "1,1",
        "--dims",
        "16,32",
        "--dw-mode",
        "frozen",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--lr",
        "5e-3",
        "--seed",
        "3",
        "--output",
        out,
        "--json",
    ]
}

fn eval(checkpoint: &Path) -> Value {
    last_json(&masterkey(&["eval", "--checkpoint", checkpoint.to_str().unwrap(), "--json"]).output().unwrap())
}

#[test]
fn train_prints_settings_and_a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic::write_idx_folder(&data, 270, 90, 16, 5).unwrap();
    let data = data.to_str().unwrap();

    let whole = dir.path().join("whole");
    let v = last_json(&masterkey(&train_args(data, whole.to_str().unwrap())).output().unwrap());
    for key in ["test_accuracy", "train_images_per_s", "initial_dw_filter_norm", "layer_scale_init"] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    assert_eq!(
        (v["mode"].as_str(), v["bank"].as_str(), v["assignment"].as_str()),
        (Some("frozen"), Some("published8"), Some("round-robin"))
    );
    assert!(v["layer_scale_init"].is_null(), "ConvNeXt V2 has no layer scale");
    assert!(v["train_images_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap().lines().count(), 4);
    let evaluated = eval(&whole.join("checkpoint"));
    assert_eq!(evaluated["test_accuracy"], v["test_accuracy"]);
    for result in [&v, &evaluated] {
        assert!(result["backend"].as_str().is_some_and(|b| !b.is_empty()), "no backend named in {result}");
    }

    // Kill the same run for real once its first checkpoint exists (so
    // somewhere in epoch 2 or later), then resume it.
    let cut = dir.path().join("cut");
    let mut child = masterkey(&train_args(data, cut.to_str().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !cut.join("checkpoint").join("state.json").is_file() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let state: Value =
        serde_json::from_slice(&std::fs::read(cut.join("checkpoint").join("state.json")).unwrap()).unwrap();
    assert!(state["epochs_done"].as_u64().unwrap() < 4, "the run finished before it was killed");
    let mut args = train_args(data, cut.to_str().unwrap());
    args.push("--resume");
    let resumed = last_json(&masterkey(&args).output().unwrap());
    assert_eq!(resumed["test_accuracy"], v["test_accuracy"]);
    // Same test loss to the last bit: the same weights.
    assert_eq!(eval(&cut.join("checkpoint"))["test_loss"], evaluated["test_loss"]);
}

#[test]
fn bad_data_and_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let out = masterkey(&["train", "--dataset", "idx", "--data", missing.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train-images-idx3-ubyte") && err.contains("missing"), "{err}");

    synthetic::write_idx_folder(dir.path(), 18, 9, 16, 1).unwrap();
    let d = dir.path().to_str().unwrap();
    let out = masterkey(&["train", "--dataset", "idx", "--data", d, "--model", "convnext-huge"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model `convnext-huge`"));
    let out = masterkey(&[
        "train",
        "--dataset",
        "idx",
        "--data",
        d,
        "--dw-mode",
        "bank-init",
        "--assignment",
        "fit-and-freeze",
    ])
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bank-init takes the round-robin or random"));
    let out = masterkey(&["eval", "--checkpoint", missing.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing-here"));

    // A device this build has no backend for is refused before any work, in one line naming the feature.
    let mut devices = Vec::new();
    if cfg!(not(feature = "cuda")) {
        devices.push("cuda");
    }
    if cfg!(not(feature = "wgpu")) {
        devices.push("wgpu");
    }
    for device in devices {
        let out = dir.path().join(format!("on-{device}"));
        let args = ["train", "--dataset", "idx", "--data", d, "--device", device, "-o", out.to_str().unwrap()];
        let run = masterkey(&args).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        let last = err.lines().last().unwrap_or("");
        assert!(!run.status.success() && last.contains(&format!("the `{device}` feature")), "{err}");
        assert!(!out.join("checkpoint").exists(), "--device {device}: a checkpoint was written");
    }
}

/// The experiments write where `-o` says and refuse the options of `train`
/// they set per run themselves, rather than accept and ignore them.
#[test]
fn experiments_take_their_output_folder_and_refuse_per_run_options() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_idx_folder(dir.path(), 40, 20, 16, 1).unwrap();
    let (data, out) = (dir.path().to_str().unwrap(), dir.path().join("grid"));
    let arms = "trainable,frozen (round-robin)";
    let mut args = vec!["experiment", "small-data", "--dataset", "idx", "--data", data, "--depths", "1,1"];
    args.extend(["--dims", "8,16", "--fractions", "0.5:1", "--seeds", "0", "--arms", arms, "--batch-size", "16"]);
    args.extend(["-o", out.to_str().unwrap(), "--json"]);
    let v = last_json(&masterkey(&args).current_dir(dir.path()).output().unwrap());
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert!(out.join("results.json").is_file() && out.join("runs/fraction-0.5/seed-0/trainable").is_dir());
    assert!(!dir.path().join("results").exists(), "nothing written to the default folder");

    let refused = |experiment: &str, option: &[&str]| {
        let mut args = vec!["experiment", experiment];
        args.extend(option);
        let out = masterkey(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&format!("unexpected argument '{}'", option[0])), "{err}");
    };
    for option in [["--seed", "3"], ["--fraction", "0.1"], ["--dw-mode", "frozen"], ["--assignment", "random"]] {
        refused("small-data", &option);
        refused("universality", &option);
    }
    for option in [["--dataset", "mnist-5k"], ["--bank", "published8"], ["--freeze-after", "2"]] {
        refused("universality", &option);
    }
    refused("small-data", &["--resume"]);
    refused("universality", &["--halt-after-steps", "3"]);
}

/// A run whose loss turns NaN or infinite stops at that step with one line
/// naming the step and the first stage whose output is not finite, and
/// writes no checkpoint for the broken epoch.
#[test]
fn a_diverging_run_stops_with_the_step_and_the_first_non_finite_stage() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_idx_folder(dir.path(), 40, 20, 16, 1).unwrap();
    let (data, out) = (dir.path().to_str().unwrap(), dir.path().join("run"));
    let mut args = train_args(data, out.to_str().unwrap());
    let lr = args.iter().position(|a| *a == "--lr").unwrap() + 1;
    args[lr] = "1e30";
    let run = masterkey(&args).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(last.starts_with("error: step ") && last.contains("training loss is"), "{err}");
    assert!(last.contains("first stage whose output is not finite: stem") || last.contains("stages."), "{err}");
    assert!(!out.join("checkpoint").exists(), "no checkpoint of the broken epoch");
}

/// A checkpoint that cannot be written whole (a file-size limit stands in for
/// a full disk) ends the run with one line and leaves the previous
/// checkpoint and metrics byte for byte; the run then resumes from them.
#[test]
fn a_checkpoint_write_that_fails_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_idx_folder(dir.path(), 40, 20, 16, 1).unwrap();
    let (data, out) = (dir.path().to_str().unwrap(), dir.path().join("run"));
    let mut args = train_args(data, out.to_str().unwrap());
    // 40 images in batches of 16: 3 steps an epoch; stop inside epoch 2.
    args.extend(["--halt-after-steps", "4"]);
    assert!(masterkey(&args).output().unwrap().status.success());
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut found: Vec<_> =
            ["checkpoint/model.mpk", "checkpoint/optimizer.mpk", "checkpoint/state.json", "metrics.jsonl"]
                .iter()
                .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
                .collect();
        found.sort();
        found
    };
    let before = files(&out);

    let mut resume = train_args(data, out.to_str().unwrap());
    resume.push("--resume");
    let limited = Command::new("prlimit")
        .arg("--fsize=32768")
        .arg(env!("CARGO_BIN_EXE_masterkey"))
        .args(&resume)
        .output()
        .expect("prlimit (util-linux) runs the command");
    let err = String::from_utf8_lossy(&limited.stderr);
    assert_eq!(limited.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains("File too large"), "{err}");
    assert!(files(&out) == before, "the epoch-1 checkpoint and metrics are unchanged");
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary folder left: {leftovers:?}");

    let v = last_json(&masterkey(&resume).output().unwrap());
    assert_eq!(v["epochs"], 4);
}

/// Killed (SIGKILL) at several seeded moments, resumed after each kill, a
/// run ends with the weights of the uninterrupted run, to the last bit.
#[test]
fn a_run_killed_again_and_again_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic::write_idx_folder(&data, 270, 90, 16, 5).unwrap();
    let data = data.to_str().unwrap();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let epochs_done = || {
        let state = std::fs::read(cut.join("checkpoint").join("state.json")).ok()?;
        serde_json::from_slice::<Value>(&state).ok()?["epochs_done"].as_u64()
    };
    let v = last_json(&masterkey(&train_args(data, whole.to_str().unwrap())).output().unwrap());
    let mut resume = train_args(data, cut.to_str().unwrap());
    resume.push("--resume");
    let (mut state, mut mid_run) = (0x2545_f491_4f6c_dd1du64, 0);
    for _ in 0..5 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut child = masterkey(&resume).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(20 + state % 200));
        child.kill().unwrap();
        child.wait().unwrap();
        mid_run += usize::from(epochs_done().is_none_or(|done| done < 4));
    }
    assert!(mid_run >= 3, "only {mid_run} of 5 kills landed before the run's end");
    let resumed = last_json(&masterkey(&resume).output().unwrap());
    assert_eq!(resumed["test_accuracy"], v["test_accuracy"]);
    assert_eq!(eval(&cut.join("checkpoint"))["test_loss"], eval(&whole.join("checkpoint"))["test_loss"]);
}

/// The photos task (seed patches of the photos of the pinned scikit-image
/// and scikit-learn wheels, fetched into the cache) trains end to end.
#[test]
fn the_photos_task_trains_a_few_steps_from_the_fetched_photos() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut args = vec!["train", "--dataset", "photos", "--fraction", "0.05", "--model", "reference", "--depths", "1"];
    args.extend(["--dims", "8", "--epochs", "1", "--batch-size", "100", "--json", "-o", out.to_str().unwrap()]);
    let v = last_json(&masterkey(&args).output().unwrap());
    assert_eq!(
        (v["dataset"].as_str(), v["train_images"].as_u64(), v["steps"].as_u64()),
        (Some("photos"), Some(500), Some(5))
    );
    let loss = v["test_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss < 5.0, "100 classes: {loss}");
    // Evaluated again from the checkpoint (in batches of another size, so the sums differ in the last bits).
    let evaluated = eval(&out.join("checkpoint"));
    assert_eq!(evaluated["test_accuracy"], v["test_accuracy"]);
    assert!((evaluated["test_loss"].as_f64().unwrap() - loss).abs() < 1e-6 * loss, "{evaluated} against {v}");
}
