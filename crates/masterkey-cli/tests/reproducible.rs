//! Every analysis command that writes files writes the same bytes when it is
//! run twice in the same place on the same inputs and seed (no timestamps,
//! no hash-map order), on a real model fetched from its pinned wheel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn masterkey(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().unwrap();
    assert!(out.status.success(), "masterkey {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Every file under `path` (or `path` itself) with its bytes.
fn files(path: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    if path.is_file() {
        found.insert(path.to_path_buf(), std::fs::read(path).unwrap());
    } else {
        for entry in std::fs::read_dir(path).unwrap() {
            found.extend(files(&entry.unwrap().path()));
        }
    }
    found
}

/// Runs `args` twice and checks that `outputs` hold the same bytes after each.
fn same_bytes_twice(args: &[&str], outputs: &[&Path]) {
    let snapshot = || outputs.iter().flat_map(|o| files(o)).collect::<BTreeMap<_, _>>();
    masterkey(args);
    let first = snapshot();
    assert!(!first.is_empty(), "masterkey {} wrote nothing", args.join(" "));
    masterkey(args);
    let second = snapshot();
    assert_eq!(first.keys().collect::<Vec<_>>(), second.keys().collect::<Vec<_>>(), "{}", args.join(" "));
    for (path, bytes) in &first {
        assert!(second[path] == *bytes, "masterkey {}: {} differs between two runs", args.join(" "), path.display());
    }
}

#[test]
fn analysis_commands_write_the_same_bytes_twice() {
    let model = masterkey_fetch::ensure(masterkey_fetch::model("efficientnet-lite0").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let (set, results) = (at("set"), at("results"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (model, set_s) = (s(&model), s(&set));

    same_bytes_twice(&["extract", &model, "-o", &set_s], &[&set]);
    same_bytes_twice(&["fit", &set_s, "-o", &s(&results)], &[&results]);
    for (method, extra) in [("kmeans", vec!["--seed", "3"]), ("pca", vec![]), ("autoencoder", vec!["--steps", "60"])] {
        let bank = results.join(format!("search/{method}.safetensors"));
        let mut args = vec!["search", &set_s, "--kernel", "5x5", "-k", "4", "--method", method];
        args.extend(extra);
        let bank_s = s(&bank);
        args.extend(["-o", &bank_s]);
        same_bytes_twice(&args, &[&bank]);
    }
    let (saved, png) = (at("p8.safetensors"), at("p8.png"));
    same_bytes_twice(&["bank", "save", "published8", "-o", &s(&saved)], &[&saved]);
    same_bytes_twice(&["bank", "show", "published8", "-o", &s(&png)], &[&png]);
    let (scalespace, ideal, ideal_png) = (at("scalespace"), at("ideal9.safetensors"), at("ideal9.png"));
    same_bytes_twice(&["scalespace", "fit", "-o", &s(&scalespace)], &[&scalespace]);
    same_bytes_twice(
        &["scalespace", "bank", "--size", "9", "-o", &s(&ideal), "--png", &s(&ideal_png)],
        &[&ideal, &ideal_png],
    );
    let replaced = at("replaced.safetensors");
    same_bytes_twice(&["replace", &model, "-o", &s(&replaced)], &[&replaced]);
    let report = at("report.html");
    same_bytes_twice(&["report", &s(&results), "-o", &s(&report)], &[&report]);
}

/// The main job on its real default models (fetched once into the cache).
#[test]
fn demo_writes_the_same_bytes_twice() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    same_bytes_twice(&["demo", "-o", results.to_str().unwrap()], &[&results]);
    for part in ["fit", "filters", "search", "scalespace", "report.html", "bank_published8.png"] {
        assert!(results.join(part).exists(), "{part}");
    }
}
