//! `masterkey bench parity`: masterkey's trainer against a plain PyTorch loop
//! (`bench_parity.py`, in the benchmarks' cached venv) on the small-data
//! recipe: ConvNeXt-style network (stem 2x2/2 to 32 + LN, 2 blocks at 32, LN +
//! 2x2/2 conv to 64, 2 blocks at 64, mean pool, LN, linear; DW 7x7 with bias,
//! layer scale 1.0), Fashion-MNIST, AdamW (0.9, 0.999) at peak lr 2e-3 with
//! weight decay 0.05 on weights of rank >= 2, one epoch of linear warm-up then
//! cosine to 0, batch 128, label smoothing 0.1.
//!
//! Curves: both start from masterkey's initial weights (written as
//! safetensors) and take the same batches without augmentation; the two loss
//! curves and their largest relative difference are printed per DW mode.
//! `--full`: both train the recipe end to end (augmentation on, each its own
//! initialisation of the chosen scheme, the same training subset) for every
//! seed, and their test accuracies and speeds are printed side by side. With
//! `--replay` the PyTorch run starts from masterkey's initial weights and
//! replays its shuffles, crops and flips, so that the two runs differ only in
//! arithmetic: the accuracies then compare the trainers, not two draws.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use masterkey_core::{atomic, Bank};
use masterkey_train::data::idx::split_files;
use masterkey_train::data::loader::{epoch_order, Augment};
use masterkey_train::data::{stratified_subset, DataKind, DataSpec, Dataset};
use masterkey_train::dw::DwMode;
use masterkey_train::experiment::mean_and_sample_std;
use masterkey_train::models::{InitScheme, ModelSpec, Network};
use masterkey_train::train::{
    dw_plan, evaluate, load_trained, train, DwSettings, Observer, Outcome, RunOptions, StepReport, TrainConfig,
    CHECKPOINT_DIR,
};
use masterkey_train::{state_dict, CpuBackend, TrainBackend};
use serde_json::{json, Value};

use crate::bench::{median, run_torch_job};
use crate::train_cmd::{fetch_data, Bars};
use crate::ui;

const SCRIPT: &str = include_str!("bench_parity.py");
/// The recipe's batch size.
const BATCH: usize = 128;

#[derive(clap::Args)]
pub struct ParityArgs {
    /// DW modes to compare.
    #[arg(long, value_delimiter = ',', default_values_t = [DwMode::Trainable, DwMode::Frozen, DwMode::BankInit, DwMode::RandomFrozen])]
    modes: Vec<DwMode>,
    /// Share of the Fashion-MNIST training set (stratified, subset seed 0).
    #[arg(long, default_value_t = 0.01)]
    fraction: f64,
    /// Epochs of the recipe (the schedule's length; trained in full with --full).
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Steps compared in the loss curves.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Layer initialisation of both (each draws its own weights in --full runs).
    #[arg(long, default_value = "convnext")]
    init: InitScheme,
    /// Initial layer scale.
    #[arg(long, default_value_t = 1.0)]
    layer_scale_init: f32,
    /// Train the recipe end to end in both, per mode and seed, and compare test accuracy and speed.
    #[arg(long)]
    full: bool,
    /// With --full: PyTorch starts from masterkey's initial weights and replays its shuffles, crops and flips.
    #[arg(long, requires = "full")]
    replay: bool,
    /// Seeds of the --full runs (the curves use the first).
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2])]
    seeds: Vec<u64>,
    /// Folder for the curves (curves.csv) and the runs' results (full.json).
    #[arg(short, long, default_value = "results/parity")]
    output: PathBuf,
}

/// The recipe, as `masterkey train` takes it.
fn recipe(args: &ParityArgs, mode: DwMode, seed: u64, augment: bool) -> Result<TrainConfig> {
    let mut model = ModelSpec::named("convnext-atto", 1, 10, true).map_err(anyhow::Error::msg)?;
    (model.depths, model.dims) = (vec![2, 2], vec![32, 64]);
    model.layer_scale_init = Some(args.layer_scale_init);
    model.init = Some(args.init);
    Ok(TrainConfig {
        model,
        data: DataSpec {
            fraction: args.fraction,
            augment,
            crop_padding: Some(2),
            ..DataSpec::whole(DataKind::FashionMnist)
        },
        dw: DwSettings::new(mode),
        epochs: args.epochs,
        batch_size: BATCH,
        lr: 2e-3,
        min_lr: 0.0,
        weight_decay: 0.05,
        warmup_epochs: 1.0,
        label_smoothing: 0.1,
        seed,
        eval_every: args.epochs,
    })
}

/// What the PyTorch script needs of a run besides its kind.
fn reference_run(config: &TrainConfig, data: &Dataset, bank: &Bank, batches: usize) -> Value {
    let m = &config.model;
    let (keys, _) = dw_plan(config, bank, None).keys_at(m.dw_kernel);
    json!({
        "mode": config.dw.mode.name(),
        "depths": m.depths, "dims": m.dims, "kernel": m.dw_kernel, "in_channels": m.in_channels,
        "classes": m.classes, "layer_scale": m.layer_scale_init,
        "init": m.init.map(InitScheme::name),
        "keys": keys,
        "mean": data.normalisation.mean[0], "std": data.normalisation.std[0],
        "lr": config.lr, "min_lr": config.min_lr, "weight_decay": config.weight_decay,
        "warmup_steps": (config.warmup_epochs * batches as f64).round() as u64,
        "total_steps": config.epochs * batches,
        "label_smoothing": config.label_smoothing,
        "batch_size": config.batch_size, "epochs": config.epochs, "seed": config.seed,
        "crop_padding": config.data.crop_padding_for(data.shape[2]),
    })
}

/// Collects each step's loss.
struct StepLosses(Vec<f64>);
impl Observer for StepLosses {
    fn step(&mut self, r: &StepReport) {
        self.0.push(r.step_loss);
    }
}

fn job(data_dir: &Path, runs: Vec<Value>) -> Result<Value> {
    let (train_images, train_labels) = split_files(data_dir, "train")?;
    let (test_images, test_labels) = split_files(data_dir, "t10k")?;
    let path = |p: PathBuf| p.display().to_string();
    Ok(json!({
        "train_images": path(train_images), "train_labels": path(train_labels),
        "test_images": path(test_images), "test_labels": path(test_labels),
        "runs": runs,
    }))
}

/// The DW modes `bench_parity.py` builds.
const PYTORCH_MODES: [DwMode; 4] = [DwMode::Trainable, DwMode::Frozen, DwMode::BankInit, DwMode::RandomFrozen];

pub fn run(args: ParityArgs) -> Result<()> {
    if args.modes.is_empty() || args.seeds.is_empty() || args.steps == 0 || args.epochs == 0 {
        bail!("bench parity needs at least one mode, one seed, one step and one epoch");
    }
    if let Some(mode) = args.modes.iter().find(|m| !PYTORCH_MODES.contains(m)) {
        bail!("bench parity has a PyTorch side for {} only, not {mode}", PYTORCH_MODES.map(DwMode::name).join(", "));
    }
    let spec = recipe(&args, args.modes[0], args.seeds[0], false)?.data;
    // The Fashion-MNIST folder the PyTorch side reads the same files from.
    let data_dir = fetch_data(spec.kind)?.remove(0);
    let data = Dataset::load(&spec, |_| Ok(vec![data_dir.clone()]))?;
    let subset = stratified_subset(data.train.labels(), spec.fraction, spec.subset_seed);
    let bank = Bank::published8();
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let recipe_data = RecipeData { data: &data, dir: &data_dir, subset: &subset, bank: &bank };
    curves(&args, &recipe_data)?;
    if args.full {
        full(&args, &recipe_data)?;
    }
    Ok(())
}

/// What every run of the benchmark shares: the data, where the PyTorch side
/// reads it, the training subset and the bank.
struct RecipeData<'a> {
    data: &'a Dataset,
    dir: &'a Path,
    subset: &'a [usize],
    bank: &'a Bank,
}

impl RecipeData<'_> {
    fn steps_per_epoch(&self) -> usize {
        self.subset.len().div_ceil(BATCH)
    }
}

fn curves(args: &ParityArgs, r: &RecipeData) -> Result<()> {
    let (data, bank, subset, per_epoch) = (r.data, r.bank, r.subset, r.steps_per_epoch());
    let seed = args.seeds[0];
    let work = tempfile::tempdir()?;
    let batches: Vec<Vec<usize>> = (0..)
        .flat_map(|epoch| epoch_order(subset, seed, epoch).chunks(BATCH).map(<[usize]>::to_vec).collect::<Vec<_>>())
        .take(args.steps as usize)
        .collect();
    let (mut ours, mut runs) = (Vec::new(), Vec::new());
    for &mode in &args.modes {
        let config = recipe(args, mode, seed, false)?;
        let init = work.path().join(format!("{mode}.safetensors"));
        save_initial_weights(&config, bank, &init)?;
        eprintln!("masterkey {mode}: {} steps from the weights in {}", args.steps, init.display());
        let mut losses = StepLosses(Vec::new());
        let options = RunOptions { halt_after_steps: Some(args.steps), ..RunOptions::default() };
        train::<TrainBackend>(&config, data, &work.path().join(mode.name()), &options, &mut losses)?;
        ours.push(losses.0);
        let mut run = reference_run(&config, data, bank, per_epoch);
        run["kind"] = json!("curve");
        run["init_weights"] = json!(init.display().to_string());
        run["batches"] = json!(batches);
        runs.push(run);
    }
    eprintln!("PyTorch: the same steps from the same weights");
    let reply = run_torch_job(SCRIPT, work.path(), &job(r.dir, runs)?)?;
    let theirs: Vec<Vec<f64>> =
        reply["runs"].as_array().context("no runs in the reference's reply")?.iter().map(losses_of).collect();

    println!(
        "bench parity (curves): the recipe at {} of Fashion-MNIST ({} images, {per_epoch} steps per epoch, \
         schedule of {} epochs), augmentation off, the same {} batches and the same initial weights (init {}, \
         seed {seed}) in masterkey and PyTorch {} ({} threads). Training loss per step.",
        args.fraction,
        subset.len(),
        args.epochs,
        args.steps,
        args.init,
        reply["torch"].as_str().unwrap_or("?"),
        reply["threads"]
    );
    let mut header = vec!["step".to_string()];
    for mode in &args.modes {
        header.extend([format!("{mode} masterkey"), format!("{mode} PyTorch")]);
    }
    let mut csv = header.join(",") + "\n";
    let mut t = ui::table(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for step in 0..args.steps as usize {
        let row: Vec<String> = std::iter::once((step + 1).to_string())
            .chain(ours.iter().zip(&theirs).flat_map(|(a, b)| [format!("{:.5}", a[step]), format!("{:.5}", b[step])]))
            .collect();
        csv += &(row.join(",") + "\n");
        if step < 5 || (step + 1) % 10 == 0 {
            t.add_row(row);
        }
    }
    println!("{t}");
    let mut summary = ui::table(&["DW mode", "largest relative difference", "at step", "mean relative difference"]);
    for ((mode, a), b) in args.modes.iter().zip(&ours).zip(&theirs) {
        let rel: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-12)).collect();
        let (at, worst) = rel.iter().enumerate().fold((0, 0.0), |m, (i, &r)| if r > m.1 { (i, r) } else { m });
        let mean = rel.iter().sum::<f64>() / rel.len() as f64;
        summary.add_row(vec![
            mode.to_string(),
            format!("{:.3}%", 100.0 * worst),
            (at + 1).to_string(),
            format!("{:.3}%", 100.0 * mean),
        ]);
    }
    println!("{summary}");
    let path = args.output.join("curves.csv");
    atomic::write_file(&path, csv.as_bytes())?;
    println!("(every step in {})", path.display());
    Ok(())
}

/// The weights `masterkey train` starts `config` from.
fn save_initial_weights(config: &TrainConfig, bank: &Bank, path: &Path) -> Result<()> {
    let plan = dw_plan(config, bank, None);
    let model = Network::<CpuBackend>::new(&config.model, &plan, config.seed, &Default::default());
    Ok(state_dict::save(&state_dict::state_dict(&model)?, path)?)
}

/// What the PyTorch side of a `--replay` run needs to see masterkey's
/// images: per epoch the order (as positions in the training subset) and
/// each position's crop and flip (`dy + p, dx + p, flip` per image).
fn replayed_epochs(config: &TrainConfig, subset: &[usize], padding: usize) -> (Vec<Vec<usize>>, Vec<Vec<i64>>) {
    (0..config.epochs)
        .map(|epoch| {
            let order = epoch_order(subset, config.seed, epoch);
            let augment = Augment { seed: config.seed, epoch, crop_padding: padding };
            let positions = order.iter().map(|i| subset.binary_search(i).expect("the order permutes the subset"));
            let crops = order.iter().flat_map(|&i| {
                let c = augment.crop_and_flip(i);
                [c.dy + padding as isize, c.dx + padding as isize, c.flip as isize].map(|v| v as i64)
            });
            (positions.collect(), crops.collect())
        })
        .unzip()
}

fn losses_of(run: &Value) -> Vec<f64> {
    run["losses"].as_array().map(|l| l.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

/// One finished run: test accuracy, training and evaluation images per second.
#[derive(serde::Serialize, Clone, Copy)]
struct RunResult {
    accuracy: f64,
    train_images_per_s: f64,
    eval_images_per_s: f64,
}

fn ours_full(config: &TrainConfig, data: &Dataset) -> Result<RunResult> {
    let work = tempfile::tempdir()?;
    let outcome = train::<TrainBackend>(config, data, work.path(), &RunOptions::default(), &mut Bars { bar: None })?;
    let Outcome::Finished(summary) = outcome else { bail!("the masterkey run halted") };
    let (model, _) = load_trained::<CpuBackend>(&work.path().join(CHECKPOINT_DIR))?;
    let t0 = Instant::now();
    evaluate(&model, data, &data.test, 256)?;
    let eval_images_per_s = data.test.len() as f64 / t0.elapsed().as_secs_f64();
    Ok(RunResult { accuracy: summary.test_accuracy, train_images_per_s: summary.train_images_per_s, eval_images_per_s })
}

fn full(args: &ParityArgs, r: &RecipeData) -> Result<()> {
    let (data, bank, subset, per_epoch) = (r.data, r.bank, r.subset, r.steps_per_epoch());
    let mut rows = Vec::new();
    let mut record = Vec::new();
    for &mode in &args.modes {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for &seed in &args.seeds {
            let config = recipe(args, mode, seed, true)?;
            eprintln!("masterkey {mode} seed {seed}: {} epochs", config.epochs);
            let o = ours_full(&config, data)?;
            let mut run = reference_run(&config, data, bank, per_epoch);
            run["kind"] = json!("full");
            run["subset"] = json!(subset);
            let work = tempfile::tempdir()?;
            if args.replay {
                let init = work.path().join("initial.safetensors");
                save_initial_weights(&config, bank, &init)?;
                let (orders, crops) = replayed_epochs(&config, subset, config.data.crop_padding_for(data.shape[2]));
                run["init_weights"] = json!(init.display().to_string());
                (run["orders"], run["crops"]) = (json!(orders), json!(crops));
            }
            let reply = run_torch_job(SCRIPT, work.path(), &job(r.dir, vec![run])?)?;
            let reply = &reply["runs"][0];
            let number = |k: &str| reply[k].as_f64().with_context(|| format!("no {k} in the reference's reply"));
            let t = RunResult {
                accuracy: number("test_accuracy")?,
                train_images_per_s: number("train_images_per_s")?,
                eval_images_per_s: number("eval_images_per_s")?,
            };
            eprintln!(
                "  seed {seed}: masterkey {:.2}% ({:.0} img/s), PyTorch {:.2}% ({:.0} img/s)",
                100.0 * o.accuracy,
                o.train_images_per_s,
                100.0 * t.accuracy,
                t.train_images_per_s
            );
            record
                .push(json!({"mode": mode.name(), "seed": seed, "replay": args.replay, "masterkey": o, "pytorch": t}));
            ours.push(o);
            theirs.push(t);
        }
        rows.push((mode, ours, theirs));
    }
    atomic::write_file(&args.output.join("full.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;

    println!(
        "bench parity (--full): the recipe trained end to end at {} of Fashion-MNIST ({} images) for {} epochs, \
         augmentation on (zero-pad 2, random crop, flip), init {}, seeds {:?}; test accuracy on all {} test images. {}",
        args.fraction,
        subset.len(),
        args.epochs,
        args.init,
        args.seeds,
        data.test.len(),
        if args.replay {
            "PyTorch starts from masterkey's initial weights and replays its shuffles, crops and flips: \
             the two runs differ only in arithmetic."
        } else {
            "Each implementation draws its own weights, shuffles and augmentations."
        }
    );
    let mut t = ui::table(&[
        "DW mode",
        "masterkey acc %",
        "PyTorch acc %",
        "difference",
        "train img/s (ours / theirs, median)",
        "eval img/s (ours / theirs, median)",
    ]);
    for (mode, ours, theirs) in &rows {
        let acc = |v: &[RunResult]| mean_and_sample_std(&v.iter().map(|r| 100.0 * r.accuracy).collect::<Vec<_>>());
        let (a, sa) = acc(ours);
        let (b, sb) = acc(theirs);
        let speed = |v: &[RunResult], f: fn(&RunResult) -> f64| median(v.iter().map(f).collect());
        let ratio = |f: fn(&RunResult) -> f64| {
            let (x, y) = (speed(ours, f), speed(theirs, f));
            format!("{x:.0} / {y:.0} = {:.2}x", x / y)
        };
        t.add_row(vec![
            mode.to_string(),
            format!("{a:.2} ± {sa:.2}"),
            format!("{b:.2} ± {sb:.2}"),
            format!("{:+.2}", a - b),
            ratio(|r| r.train_images_per_s),
            ratio(|r| r.eval_images_per_s),
        ]);
    }
    println!("{t}");
    println!("(mean ± sample standard deviation over the seeds; runs in {})", args.output.join("full.json").display());
    Ok(())
}
