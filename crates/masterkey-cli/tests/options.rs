//! Every option of every command changes what the command does, or the
//! command refuses it in one line. The options are read from the binary's
//! own help, so an option added without a case here fails this test.
//!
//! A case runs the command's base arguments with the option (and whatever
//! else the option needs, such as `--method autoencoder` for `--candidates`)
//! and compares what it wrote (stdout, and every file in its working folder,
//! JSON read down to its leaves) with two runs without the option but with
//! the rest: whatever differs between those two (wall times, speeds) is
//! ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use masterkey_train::data::synthetic;
use safetensors::tensor::{Dtype, TensorView};

/// What a run left behind: JSON leaves and text lines, keyed by where they
/// came from, so that a changed value, a new file and a moved file all show.
type Observed = BTreeMap<String, String>;

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Observed) {
    match value {
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| flatten(&format!("{prefix}.{k}"), v, out)),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, v)| flatten(&format!("{prefix}[{i}]"), v, out))
        }
        leaf => drop(out.insert(prefix.to_string(), leaf.to_string())),
    }
}

fn observe_text(prefix: &str, bytes: &[u8], out: &mut Observed) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        return flatten(prefix, &value, out);
    }
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) if value.is_object() => flatten(&format!("{prefix}:{i}"), &value, out),
            _ => drop(out.insert(format!("{prefix}:{i}"), line.to_string())),
        }
    }
}

fn observe_files(root: &Path, dir: &Path, out: &mut Observed) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            observe_files(root, &path, out);
            continue;
        }
        let name = path.strip_prefix(root).unwrap().display().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let textual = ["json", "jsonl", "csv", "md", "txt", "svg", "html"];
        if path.extension().is_some_and(|e| textual.iter().any(|t| e == *t)) || bytes.is_ascii() {
            observe_text(&name, &bytes, out);
        } else {
            out.insert(name, format!("{} bytes, sum {}", bytes.len(), bytes.iter().map(|&b| b as u64).sum::<u64>()));
        }
    }
}

/// The fixtures every case may name: `{model}` `{set}` `{bank}` `{data}`
/// `{checkpoint}` `{results}` are paths made once; `{out}` is a fresh
/// folder inside each run's working folder.
struct Fixtures {
    dir: tempfile::TempDir,
}

impl Fixtures {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn expand(&self, arg: &str) -> String {
        let mut arg = arg.to_string();
        for name in ["model", "statedict", "set", "bank", "data", "results", "lite0", "images"] {
            arg = arg.replace(&format!("{{{name}}}"), &self.path(name));
        }
        arg = arg.replace("{checkpoint}", &self.path("run/checkpoint"));
        arg.replace("{out}", "out")
    }

    /// Runs `args` in a fresh working folder: success and what it left, or
    /// the refusal's stderr.
    fn run(&self, args: &[&str]) -> Result<Observed, String> {
        let work = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|a| self.expand(a)).collect();
        let run = Command::new(env!("CARGO_BIN_EXE_masterkey")).args(&args).current_dir(work.path()).output().unwrap();
        if !run.status.success() {
            return Err(String::from_utf8_lossy(&run.stderr).into_owned());
        }
        let mut seen = Observed::new();
        observe_text("stdout", &run.stdout, &mut seen);
        observe_files(work.path(), work.path(), &mut seen);
        Ok(seen)
    }
}

fn masterkey_ok(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_masterkey")).args(args).output().unwrap();
    assert!(out.status.success(), "masterkey {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn fixtures() -> Fixtures {
    let f = Fixtures { dir: tempfile::tempdir().unwrap() };
    let model = masterkey_fetch::ensure(masterkey_fetch::model("ppocr-cls").unwrap()).unwrap();
    std::fs::copy(model, f.path("model")).unwrap();
    masterkey_ok(&["extract", &f.path("model"), "-o", &f.path("set")]);
    masterkey_ok(&["search", &f.path("set"), "--kernel", "5x5", "-k", "8", "-o", &f.path("bank")]);
    masterkey_ok(&["fit", &f.path("set"), "-o", &format!("{}/fit", f.path("results"))]);
    write_state_dict(Path::new(&f.path("statedict")));
    let lite0 = masterkey_fetch::ensure(masterkey_fetch::model("efficientnet-lite0").unwrap()).unwrap();
    std::fs::copy(lite0, f.path("lite0")).unwrap();
    std::fs::create_dir(f.path("images")).unwrap();
    for id in ["chelsea", "coffee"] {
        let photo = masterkey_fetch::ensure(masterkey_fetch::photo(id).unwrap()).unwrap();
        std::fs::copy(&photo, Path::new(&f.path("images")).join(photo.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir(f.path("data")).unwrap();
    synthetic::write_idx_folder(Path::new(&f.path("data")), 40, 20, 16, 1).unwrap();
    let mut train: Vec<String> = base("train").iter().map(|a| f.expand(a)).collect();
    train.extend(["-o".into(), f.path("run")]);
    masterkey_ok(&train.iter().map(String::as_str).collect::<Vec<_>>());
    f
}

/// A safetensors state dict with one depthwise layer of 16 5x5 filters.
fn write_state_dict(path: &Path) {
    let dw: Vec<u8> = (0..16 * 25).flat_map(|i| ((i * 37 % 11) as f32 - 5.0).to_le_bytes()).collect();
    let pw: Vec<u8> = (0..32 * 16).flat_map(|i| ((i % 7) as f32).to_le_bytes()).collect();
    let tensors = vec![
        ("blocks.0.conv_dw.weight", TensorView::new(Dtype::F32, vec![16, 1, 5, 5], &dw).unwrap()),
        ("blocks.0.conv_pw.weight", TensorView::new(Dtype::F32, vec![32, 16, 1, 1], &pw).unwrap()),
    ];
    safetensors::serialize_to_file(tensors, None, path).unwrap();
}

/// A tiny network on synthetic stripes, one epoch, in `train` and the experiments.
const NETWORK: &[&str] = &["--model", "reference", "--depths", "1", "--dims", "8", "--batch-size", "16"];
const DATA: &[&str] = &["--dataset", "idx", "--data", "{data}", "--epochs", "1"];

/// Each command's base arguments (the command words first).
fn base(command: &str) -> Vec<&'static str> {
    let args: &[&str] = match command {
        "extract" => &["extract", "{model}", "-o", "{out}"],
        // The default models, fetched once into the cache (as `tests/reproducible.rs` runs it).
        "demo" => &["demo", "-o", "{out}"],
        "fit" => &["fit", "{set}"],
        "bank show" => &["bank", "show", "published8"],
        "bank save" => &["bank", "save", "published8", "-o", "{out}"],
        "fetch" => &["fetch", "ppocr-cls"],
        "report" => &["report", "{results}", "-o", "{out}"],
        "replace" => &["replace", "{statedict}", "-o", "{out}"],
        "probe" => &["probe", "{lite0}", "--random", "1", "--json"],
        "scalespace fit" => &["scalespace", "fit"],
        "scalespace bank" => &["scalespace", "bank", "-o", "{out}"],
        "scalespace kernel" => &["scalespace", "kernel", "gauss", "--sigma-x", "1"],
        "search" => &["search", "{set}", "--kernel", "5x5", "-k", "4"],
        "compare" => &["compare", "published8", "{bank}"],
        "train" => return [&["train"], DATA, NETWORK, &["--json"]].concat(),
        "eval" => &["eval", "--checkpoint", "{checkpoint}", "--data", "{data}", "--json"],
        "experiment small-data" => {
            let own = ["--fractions", "0.5", "--seeds", "0", "--arms", "trainable", "--json"];
            return [&["experiment", "small-data"], DATA, NETWORK, &own].concat();
        }
        // Small enough for seconds; the references' venv (NumPy, scikit-learn) is made once in the cache.
        "bench fit" => &["bench", "fit", "--filters", "2000", "--repeats", "1"],
        "bench kmeans" => &["bench", "kmeans", "--filters", "2000", "--iterations", "3", "--repeats", "1"],
        "experiment universality" => {
            let own = ["--sets", "idx={data}:1", "--seeds", "0", "--autoencoder-steps", "5", "--k", "2", "--json"];
            return [&["experiment", "universality"], NETWORK, &own].concat();
        }
        other => panic!("no base arguments for `{other}`"),
    };
    args.to_vec()
}

/// How each option is checked: the arguments added to the command's base
/// (where the base already holds the option, the new value replaces it).
fn case(command: &str, option: &str) -> Option<&'static [&'static str]> {
    Some(match (command, option) {
        (_, "--json") => &["--json"],
        ("extract" | "bank save" | "replace" | "scalespace bank" | "report" | "demo", "--output") => {
            &["-o", "{out}/elsewhere"]
        }
        ("demo", "--bank") => &["--bank", "{bank}"],
        ("demo", "--samples-per-key") => &["--samples-per-key", "3"],
        ("demo", "--dead-tol") => &["--dead-tol", "0.01"],
        ("extract" | "fit" | "replace" | "search", "--dead-tol") => &["--dead-tol", "1e9"],
        ("fit" | "replace" | "scalespace fit", "--bank") => &["--bank", "{bank}"],
        ("fit", "--output") => &["-o", "{out}"],
        ("fit", "--thresholds") => &["--thresholds", "0.55"],
        ("fit", "--control-seed") => &["--control-seed", "9"],
        ("fit", "--depth-bands") => &["--depth-bands", "2"],
        ("bank show", "--output") => &["-o", "{out}.png"],
        ("scalespace fit", "--criterion") => &["--criterion", "l1"],
        ("scalespace fit", "--output") => &["-o", "{out}"],
        ("scalespace bank" | "scalespace kernel", "--size") => &["--size", "5"],
        ("scalespace bank", "--from-fit") => &["--from-fit", "{bank}"],
        ("scalespace bank", "--png") => &["--png", "keys.png"],
        ("scalespace kernel", "--sigma-x") => &["--sigma-x", "2"],
        ("scalespace kernel", "--sigma-y") => &["--sigma-y", "2"],
        ("scalespace kernel", "--alpha") => &["--alpha", "1"],
        ("scalespace kernel", "--discretisation") => &["--discretisation", "sampled"],
        ("search", "--keys") => &["-k", "3"],
        ("search", "--method") => &["--method", "pca"],
        ("search", "--kernel") => &["--kernel", "3x3"],
        ("search", "--seed") => &["--seed", "5"],
        ("search", "--restarts") => &["--restarts", "1"],
        ("search", "--max-iter") => &["--max-iter", "1"],
        ("search", "--max-k") => &["--max-k", "2"],
        ("search", "--candidates") => &["--method", "autoencoder", "--steps", "5", "--candidates", "6"],
        ("search", "--steps") => &["--method", "autoencoder", "--steps", "7"],
        ("search", "--refine-rounds") => &["--method", "autoencoder", "--steps", "5", "--refine-rounds", "0"],
        ("search", "--score") => &["--method", "autoencoder", "--steps", "5", "--score", "coverage:0.5"],
        ("search", "--probe-views") => &["--probe-views", "2"],
        ("search", "--probe-seed") => &["--probe-seed", "2"],
        ("search", "--thresholds") => &["--thresholds", "0.55"],
        ("search", "--output") => &["-o", "{out}"],
        ("compare", "--symmetries") => &["--symmetries"],
        ("probe", "--bank") => &["--bank", "{bank}"],
        ("probe", "--images") => &["--images", "{images}"],
        ("probe", "--views") => &["--views", "4"],
        ("probe", "--seed") => &["--seed", "5"],
        ("probe", "--random") => &["--random", "2"],
        ("probe", "--per-layer") => &["--per-layer"],
        ("probe", "--sweep") => &["--views", "2", "--sweep", "sweep.svg"],
        ("probe", "--max-k") => &["--views", "2", "--sweep", "sweep.svg", "--max-k", "2"],
        ("eval" | "train", "--device") => &["--device", "cuda"],
        ("eval", "--checkpoint") => &["--checkpoint", "{out}"],
        ("eval", "--data") => &["--data", "{out}"],
        ("eval", "--batch-size") => &["--batch-size", "7"],
        // The training settings, in `train` (the experiments share their parsing).
        ("train", "--dataset") => &["--dataset", "mnist-5k", "--fraction", "0.01"],
        ("experiment small-data", "--dataset") => &["--dataset", "mnist-5k", "--fractions", "0.01"],
        ("train" | "experiment small-data", "--data") => &["--data", "{out}"],
        ("train", "--fraction") => &["--fraction", "0.5"],
        ("train", "--dw-mode") => &["--dw-mode", "frozen"],
        ("train", "--bank") => &["--dw-mode", "frozen", "--bank", "{bank}"],
        ("train", "--dw-scale") => &["--dw-mode", "frozen", "--dw-scale"],
        ("experiment small-data", "--bank") => &["--arms", "frozen (round-robin)", "--bank", "{bank}"],
        ("experiment small-data", "--dw-scale") => &["--arms", "frozen (round-robin)", "--dw-scale"],
        ("experiment small-data", "--subset-seed") => &["--subset-seed", "3"],
        ("train", "--assignment") => &["--dw-mode", "frozen", "--assignment", "random"],
        ("train", "--freeze-after") => {
            &["--dw-mode", "frozen", "--assignment", "fit-and-freeze", "--epochs", "3", "--freeze-after", "2"]
        }
        ("train", "--source-checkpoint") => {
            &["--dw-mode", "frozen", "--assignment", "from-checkpoint", "--source-checkpoint", "{checkpoint}"]
        }
        ("train", "--model") => &["--model", "convnext-atto", "--depths", "1,1", "--dims", "8,16"],
        ("train", "--image-size") => &["--image-size", "20"],
        ("train", "--small-input") => &["--small-input", "false"],
        ("train", "--subset-seed") => &["--fraction", "0.5", "--subset-seed", "3"],
        ("train", "--no-augment") => &["--no-augment"],
        ("train", "--crop-padding") => &["--crop-padding", "4"],
        ("train", "--dw-init-norm") => &["--dw-init-norm", "2"],
        ("train", "--layer-scale-init") => &["--layer-scale-init", "0.5"],
        ("train", "--depths") => &["--depths", "2"],
        ("train", "--dims") => &["--dims", "12"],
        ("train", "--width-mult") => &["--model", "mobilenetv2", "--width-mult", "0.25"],
        ("train", "--dw-kernel") => &["--dw-kernel", "5"],
        ("train", "--init") => &["--init", "pytorch"],
        ("train", "--epochs") => &["--epochs", "2"],
        ("train", "--batch-size") => &["--batch-size", "8"],
        ("train", "--lr") => &["--lr", "0.1"],
        ("train", "--min-lr") => &["--min-lr", "0.001"],
        ("train", "--weight-decay") => &["--weight-decay", "0.5"],
        ("train", "--warmup-epochs") => &["--warmup-epochs", "0.5"],
        ("train", "--label-smoothing") => &["--label-smoothing", "0.3"],
        ("train", "--eval-every") => &["--epochs", "2", "--eval-every", "2"],
        ("train", "--seed") => &["--seed", "4"],
        ("train", "--output") => &["-o", "{out}"],
        ("train", "--halt-after-steps") => &["--halt-after-steps", "1"],
        ("experiment small-data", "--freeze-after") => {
            &["--fractions", "0.5:3", "--arms", "frozen (fit-and-freeze)", "--freeze-after", "2"]
        }
        ("experiment small-data", "--fractions") => &["--fractions", "0.25"],
        ("experiment small-data" | "experiment universality", "--seeds") => &["--seeds", "1"],
        ("experiment small-data", "--arms") => &["--arms", "frozen (round-robin)"],
        ("experiment small-data", "--transfer-sources") => {
            &["--arms", "transfer-frozen", "--transfer-sources", "{checkpoint}"]
        }
        ("experiment small-data" | "experiment universality", "--output") => &["-o", "{out}/elsewhere"],
        ("experiment universality", "--sets") => &["--sets", "idx={data}:2"],
        // The epochs of sets that do not name their own.
        ("experiment universality", "--epochs") => &["--sets", "idx={data}", "--epochs", "2"],
        ("experiment universality", "--subset-seed") => &["--sets", "idx={data}:1:0.5", "--subset-seed", "3"],
        ("experiment universality", "--k") => &["--k", "3"],
        ("experiment universality", "--autoencoder-steps") => &["--autoencoder-steps", "9"],
        ("bench fit" | "bench kmeans", "--filters") => &["--filters", "3000"],
        ("bench fit" | "bench kmeans", "--repeats") => &["--repeats", "2"],
        ("bench fit" | "bench kmeans", "--seed") => &["--seed", "2"],
        ("bench kmeans", "--keys") => &["--keys", "4"],
        ("bench kmeans", "--iterations") => &["--iterations", "2"],
        ("bench kmeans", "--noise") => &["--noise", "0.5"],
        _ => return None,
    })
}

/// Options whose effect needs more than one run, checked by the test named.
const TESTED_ELSEWHERE: &[(&str, &str, &str)] =
    &[("train --resume", include_str!("train.rs"), "fn a_run_killed_again_and_again_ends_bit_identical()")];

/// Commands whose options are not checked here yet, with the reason.
const NOT_CHECKED: &[(&str, &str)] = &[("bench dw", TORCH), ("bench step", TORCH), ("bench parity", TORCH)];

const TORCH: &str =
    "every run needs PyTorch 2.9.1, whose Linux wheels pull several GB of CUDA libraries: a run by hand";

/// `masterkey [words] --help`: the subcommands and the long options.
fn help(words: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut args = words.to_vec();
    args.push("--help");
    let out = Command::new(env!("CARGO_BIN_EXE_masterkey")).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut section = "";
    let (mut commands, mut options) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            section = line;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if section == "Commands:" && line.starts_with("  ") && !line.starts_with("   ") && first != "help" {
            commands.push(first.to_string());
        }
        let option_line = line.len() - line.trim_start().len() <= 6 && line.trim_start().starts_with('-');
        if section == "Options:" && option_line {
            let long = line.split([',', ' ']).find(|w| w.starts_with("--") && w.len() > 2);
            if let Some(long) = long.filter(|l| !matches!(*l, "--help" | "--version")) {
                options.push(long.to_string());
            }
        }
    }
    (commands, options)
}

/// Every leaf command, as its words, with its long options.
fn commands() -> Vec<(String, Vec<String>)> {
    let mut leaves = Vec::new();
    let mut stack = vec![Vec::<String>::new()];
    while let Some(words) = stack.pop() {
        let (subcommands, options) = help(&words.iter().map(String::as_str).collect::<Vec<_>>());
        if subcommands.is_empty() {
            leaves.push((words.join(" "), options));
        }
        stack.extend(subcommands.into_iter().map(|c| [words.clone(), vec![c]].concat()));
    }
    leaves.sort();
    leaves
}

/// The base arguments with `extra` added; an option already in the base
/// takes the new value instead.
fn with_option(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = base.to_vec();
    let mut i = 0;
    while i < extra.len() {
        let takes_value = extra.get(i + 1).is_some_and(|v| !v.starts_with("--") || v.parse::<f64>().is_ok());
        let width = if takes_value { 2 } else { 1 };
        let same =
            |a: &str| a == extra[i] || (a == "-o" && extra[i] == "--output") || (a == "--output" && extra[i] == "-o");
        match args.iter().position(|a| same(a)) {
            Some(at) if takes_value => args[at + 1] = extra[i + 1],
            Some(_) => {}
            None => args.extend(&extra[i..i + width]),
        }
        i += width;
    }
    args
}

/// What a case needs besides its option (`--method autoencoder` for
/// `--candidates`, ...): its extra arguments without the option and its value.
fn context(extra: &[&'static str], option: &str) -> Vec<&'static str> {
    let short = match option {
        "--output" => "-o",
        "--keys" => "-k",
        other => other,
    };
    match extra.iter().rposition(|a| *a == option || *a == short) {
        Some(at) => {
            let takes_value = extra.get(at + 1).is_some_and(|v| !v.starts_with("--") || v.parse::<f64>().is_ok());
            let end = if takes_value { at + 2 } else { at + 1 };
            [&extra[..at], &extra[end..]].concat()
        }
        None => extra.to_vec(),
    }
}

/// Two runs of `args`: what the first left, and what differed between them;
/// `None` where the command refuses to run without the option (as
/// `--assignment from-checkpoint` needs `--source-checkpoint`).
fn reference(f: &Fixtures, args: &[&str]) -> Option<(Observed, BTreeSet<String>)> {
    let first = f.run(args).ok()?;
    let second = f.run(args).unwrap();
    let noise = first.keys().chain(second.keys()).filter(|k| first.get(*k) != second.get(*k)).cloned().collect();
    Some((first, noise))
}

#[test]
fn every_option_of_every_command_changes_what_it_does_or_is_refused_in_one_line() {
    let f = fixtures();
    let mut unchecked = Vec::new();
    let mut failures = Vec::new();
    for (command, options) in commands() {
        if NOT_CHECKED.iter().any(|(c, _)| command == *c || command.starts_with(&format!("{c} "))) {
            continue;
        }
        let base_args = base(&command);
        // The runs each case is compared with, by the arguments of its context.
        let mut references: HashMap<Vec<&str>, Option<(Observed, BTreeSet<String>)>> = HashMap::new();
        for option in options {
            let name = format!("{command} {option}");
            if let Some((_, source, test)) = TESTED_ELSEWHERE.iter().find(|(n, _, _)| *n == name) {
                assert!(source.contains(test), "{name}: the test `{test}` is gone");
                continue;
            }
            // The experiments' training settings are checked with the cases of `train`.
            let extra = case(&command, &option)
                .or_else(|| command.starts_with("experiment ").then(|| case("train", &option)).flatten());
            let Some(extra) = extra else {
                unchecked.push(name);
                continue;
            };
            let (without, with) = if option == "--json" && base_args.contains(&"--json") {
                (base_args.clone(), base_args.iter().copied().filter(|a| *a != "--json").collect())
            } else {
                (with_option(&base_args, &context(extra, &option)), with_option(&base_args, extra))
            };
            if base_args == without {
                assert!(
                    references.entry(without.clone()).or_insert_with(|| reference(&f, &without)).is_some(),
                    "masterkey {} fails",
                    without.join(" ")
                );
            }
            let before = references.entry(without.clone()).or_insert_with(|| reference(&f, &without));
            match (f.run(&with), before) {
                (Err(stderr), _) if stderr.trim_end().lines().count() == 1 => {}
                (Err(stderr), _) => {
                    failures.push(format!("{}: refused in more than one line: {stderr}", with.join(" ")))
                }
                // Needed by the rest of the arguments: without it the command refuses to run.
                (Ok(_), None) => {}
                (Ok(seen), Some((before, noise))) => {
                    let changed =
                        seen.keys().chain(before.keys()).any(|k| !noise.contains(k) && seen.get(k) != before.get(k));
                    if !changed {
                        failures.push(format!("{}: same output as {}", with.join(" "), without.join(" ")));
                    }
                }
            }
        }
    }
    assert!(unchecked.is_empty(), "options without a case: {unchecked:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The experiments show the training settings of `train` that they honour
/// and only a few of their own.
#[test]
fn the_experiments_share_the_training_settings_of_train() {
    let all = commands();
    let options =
        |name: &str| -> BTreeSet<String> { all.iter().find(|(c, _)| c == name).unwrap().1.iter().cloned().collect() };
    let train = options("train");
    for experiment in ["experiment small-data", "experiment universality"] {
        let own: BTreeSet<String> = options(experiment).difference(&train).cloned().collect();
        let expected: &[&str] = match experiment {
            "experiment small-data" => &["--fractions", "--seeds", "--arms", "--transfer-sources"],
            _ => &["--sets", "--seeds", "--k", "--autoencoder-steps"],
        };
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(own, expected, "{experiment}: options of its own");
    }
}

/// A DW option that the run's mode (or none of the experiment's arms) reads
/// is refused in one line naming it, not dropped while the run goes on.
#[test]
fn options_the_run_would_not_read_are_refused_in_one_line() {
    let f = Fixtures { dir: tempfile::tempdir().unwrap() };
    let cases: &[(&str, &[&str], &str)] = &[
        ("train", &["--dw-mode", "trainable", "--assignment", "random"], "--assignment"),
        ("train", &["--dw-mode", "transfer-frozen", "--assignment", "round-robin"], "--assignment"),
        ("train", &["--dw-mode", "random-frozen", "--bank", "published8"], "--bank"),
        ("train", &["--dw-mode", "bank-init", "--dw-scale"], "--dw-scale"),
        ("train", &["--dw-mode", "frozen", "--freeze-after", "2"], "--freeze-after"),
        ("experiment small-data", &["--arms", "trainable,random-frozen", "--bank", "published8"], "--bank"),
        ("experiment small-data", &["--arms", "trainable,bank-init (round-robin)", "--dw-scale"], "--dw-scale"),
        ("experiment small-data", &["--freeze-after", "2"], "--freeze-after"),
        ("experiment small-data", &["--transfer-sources", "{out}"], "--transfer-sources"),
    ];
    for (command, extra, option) in cases {
        let args = with_option(&base(command), extra);
        match f.run(&args) {
            Err(stderr) => {
                let line = stderr.trim_end();
                assert!(line.lines().count() == 1 && line.contains(option), "{}: {stderr}", args.join(" "));
            }
            Ok(_) => panic!("masterkey {} ran without reading {option}", args.join(" ")),
        }
    }
}
