//! The training loop: AdamW (no decay on vectors), warm-up + cosine, label
//! smoothing, a checkpoint after every epoch, exact resume.
//!
//! A run is a function of its configuration: weights, subset, shuffles and
//! augmentations are drawn from seeded streams, and the learning rate is a
//! function of the step. Checkpoints are written at epoch ends; a run killed
//! anywhere (mid-epoch included) and resumed redoes the interrupted epoch
//! from its start and ends with the same weights as an uninterrupted run.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use masterkey_core::{atomic, Bank, DwLayer, Error, FilterSet, KernelSize, ModelFilters, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, RunState};
use crate::data::loader::{epoch_order, for_each_batch, Augment, Batch};
use crate::data::{stratified_subset, DataSpec, Dataset, Split};
use crate::dw::{
    key_usage, mean_filter_norm, snap_keys, AssignmentKind, ChannelKey, DwLayers, DwMode, DwPlan, KeyChoice,
};
use crate::models::{ModelSpec, Network};
use crate::optim::{AdamWNoDecayOnVectors, Schedule};
use crate::scalespace_dw::{ChannelModel, LearnedScales};
use crate::{ModelAutodiffBackend, ModelBackend};

/// How the DW layers are set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DwSettings {
    pub mode: DwMode,
    /// A built-in bank name or a bank file.
    pub bank: String,
    pub assignment: AssignmentKind,
    /// Learn the per-channel scale `a` of frozen filters.
    pub learn_scale: bool,
    /// Rescale every initial DW filter to this L2 norm.
    pub init_norm: Option<f32>,
    /// `fit-and-freeze`: epochs trained trainable before the snap.
    pub freeze_after: usize,
    /// `from-checkpoint`: the trained checkpoint whose DW filters are fitted.
    pub source_checkpoint: Option<PathBuf>,
}

impl DwSettings {
    /// `mode` with the published 8 keys, assigned round-robin, without a
    /// learned scale or rescaled initial filters.
    pub fn new(mode: DwMode) -> Self {
        DwSettings {
            mode,
            bank: "published8".into(),
            assignment: AssignmentKind::RoundRobin,
            learn_scale: false,
            init_norm: None,
            freeze_after: 1,
            source_checkpoint: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelSpec,
    pub data: DataSpec,
    pub dw: DwSettings,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub weight_decay: f32,
    pub warmup_epochs: f64,
    pub label_smoothing: f32,
    pub seed: u64,
    /// Evaluate on the test set after every this many epochs (and always
    /// after the last): evaluation dominates short runs on small shares.
    #[serde(default = "every_epoch")]
    pub eval_every: usize,
}

fn every_epoch() -> usize {
    1
}

impl TrainConfig {
    /// Refuses settings no run can have (checked again when a run starts).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Other(m));
        // The same check a checkpoint's model gets when it is loaded, so that
        // no run writes a checkpoint that cannot be loaded back.
        self.model.check().map_err(|m| Error::Other(format!("model {}: {m}", self.model.name)))?;
        let (mode, assignment) = (self.dw.mode, self.dw.assignment);
        if self.epochs == 0 || self.batch_size == 0 || self.eval_every == 0 {
            return bad("epochs, batch size and evaluation interval must be positive".into());
        }
        if !(self.data.fraction > 0.0 && self.data.fraction <= 1.0) {
            return bad(format!("the training fraction must be in (0, 1], got {}", self.data.fraction));
        }
        if matches!(mode, DwMode::BankInit | DwMode::Scalespace)
            && !matches!(assignment, AssignmentKind::RoundRobin | AssignmentKind::Random)
        {
            return bad(format!("{mode} takes the round-robin or random assignment, not {assignment}"));
        }
        let takes_source =
            mode == DwMode::TransferFrozen || (mode == DwMode::Frozen && assignment == AssignmentKind::FromCheckpoint);
        match (takes_source, &self.dw.source_checkpoint) {
            (true, None) if mode == DwMode::TransferFrozen => {
                return bad("transfer-frozen needs the checkpoint whose filters it freezes (--source-checkpoint)".into())
            }
            (true, None) => {
                return bad("the from-checkpoint assignment needs a source checkpoint (--source-checkpoint)".into())
            }
            (false, Some(_)) => {
                return bad(format!(
                    "a source checkpoint is used by transfer-frozen and frozen from-checkpoint only, not {mode} ({})",
                    self.assignment_label()
                ))
            }
            _ => {}
        }
        if mode == DwMode::Frozen && assignment == AssignmentKind::FitAndFreeze {
            let f = self.dw.freeze_after;
            if f == 0 || f >= self.epochs {
                return bad(format!("fit-and-freeze needs 0 < --freeze-after ({f}) < --epochs ({})", self.epochs));
            }
        }
        Ok(())
    }

    /// The assignment actually used: `n/a` where the mode has none.
    pub fn assignment_label(&self) -> String {
        if self.dw.mode.uses_bank() {
            self.dw.assignment.to_string()
        } else {
            "n/a".into()
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// From 1.
    pub epoch: usize,
    pub step: u64,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Absent for epochs not evaluated (`eval_every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    pub train_images_per_s: f64,
    pub dw_frozen: bool,
    pub dw_filter_norm: f32,
}

/// Progress within an epoch, for progress bars.
pub struct StepReport {
    /// From 1.
    pub batch: usize,
    pub batches: usize,
    /// This step's loss (the mean over its batch, label smoothing included).
    pub step_loss: f64,
    /// Running means over the epoch so far.
    pub loss: f64,
    pub accuracy: f64,
    pub images_per_s: f64,
}

/// Receives progress; every method defaults to doing nothing.
pub trait Observer {
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn step(&mut self, _report: &StepReport) {}
    fn epoch_finished(&mut self, _metrics: &EpochMetrics) {}
    fn note(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the checkpoint in the output folder.
    pub resume: bool,
    /// Stop abruptly after this many optimizer steps in total, writing
    /// nothing more, as a killed process would (to test `resume`).
    pub halt_after_steps: Option<u64>,
    /// Save the applied DW filters as a filter set at initialisation and
    /// after every epoch, in `DW_SNAPSHOT_DIR/epoch-<E>` (E = 0 at init).
    pub dw_snapshots: bool,
}

pub const DW_SNAPSHOT_DIR: &str = "dw-snapshots";

/// Folder of the DW snapshot after `epoch` epochs (0: at initialisation).
pub fn dw_snapshot_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join(DW_SNAPSHOT_DIR).join(format!("epoch-{epoch}"))
}

/// The applied DW filters of `model` as a filter set, one layer per DW
/// layer (`dw<i>` in model order), sourced from `source`.
pub fn dw_filter_set<B: Backend>(model: &Network<B>, source: &Path) -> Result<FilterSet> {
    let layers = model
        .dw_layers()
        .iter()
        .enumerate()
        .map(|(i, l)| DwLayer::new(format!("dw{i}"), KernelSize::square(l.kernel), l.channels(), l.filter_values()))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|e| Error::invalid(source, e))?;
    let mut set = FilterSet::default();
    set.add_model(&ModelFilters { source: source.to_path_buf(), format: "masterkey-train".into(), layers });
    Ok(set)
}

/// The result of a finished run (the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub test_accuracy: f64,
    /// Time spent in training steps over all epochs (evaluation not included),
    /// summed across resumes.
    pub train_seconds: f64,
    pub test_loss: f64,
    pub train_images_per_s: f64,
    pub model: String,
    pub dataset: String,
    pub train_fraction: f64,
    pub train_images: usize,
    pub epochs: usize,
    pub steps: u64,
    pub seed: u64,
    pub mode: DwMode,
    pub bank: String,
    pub assignment: String,
    pub learn_scale: bool,
    pub layer_scale_init: Option<f32>,
    pub initial_dw_filter_norm: f32,
    pub final_dw_filter_norm: f32,
    /// Channels per bank key, once bank-frozen.
    pub key_usage: Option<Vec<usize>>,
    /// `scalespace` runs: the learned scales, per family against those fitted
    /// to the bank's keys (also written to `scalespace.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalespace: Option<LearnedScales>,
    pub backend: String,
    pub checkpoint: String,
    pub metrics_log: String,
}

pub enum Outcome {
    Finished(Box<Summary>),
    Halted { step: u64 },
}

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SCALESPACE_FILE: &str = "scalespace.json";

/// The DW plan of `config`, given the assignment once frozen to the bank.
pub fn dw_plan(config: &TrainConfig, bank: &Bank, assignment: Option<&Vec<Vec<ChannelKey>>>) -> DwPlan {
    let dw = &config.dw;
    let keys = match (assignment, dw.assignment) {
        (Some(given), _) => KeyChoice::Given(given.clone()),
        (None, AssignmentKind::Random) => KeyChoice::Random { seed: config.seed },
        (None, _) => KeyChoice::RoundRobin,
    };
    let mode = match (dw.mode, assignment) {
        // fit-and-freeze trains the usual layer until the snap.
        (DwMode::Frozen, None) if dw.assignment == AssignmentKind::FitAndFreeze => DwMode::Trainable,
        (mode, _) => mode,
    };
    DwPlan { mode, bank: bank.clone(), keys, learn_scale: dw.learn_scale, init_norm: dw.init_norm, transferred: None }
}

/// One DW layer of a trained checkpoint: channels, kernel size, the applied
/// filters (`C x k*k` values).
struct SourceLayer {
    channels: usize,
    kernel: usize,
    filters: Vec<f32>,
}

fn source_dw_layers(source: &Path) -> Result<Vec<SourceLayer>> {
    let (model, _) = load_trained::<crate::CpuBackend>(source)?;
    let layers = model.dw_layers();
    Ok(layers
        .iter()
        .map(|l| SourceLayer { channels: l.channels(), kernel: l.kernel, filters: l.filter_values() })
        .collect())
}

/// Key, `a`, `b` of every channel of the DW layers of a trained checkpoint.
fn fit_source_checkpoint(source: &Path, plan: &DwPlan) -> Result<Vec<Vec<ChannelKey>>> {
    Ok(source_dw_layers(source)?.iter().map(|l| snap_keys(&l.filters, l.kernel, plan)).collect())
}

/// The filters of `source` for each DW layer of `model`: each layer takes the
/// first source layer of its channels and kernel size not taken by an
/// earlier one.
fn transferred_filters<B: Backend>(model: &Network<B>, source: &Path) -> Result<Vec<Vec<f32>>> {
    let mut theirs: Vec<Option<SourceLayer>> = source_dw_layers(source)?.into_iter().map(Some).collect();
    let shapes: Vec<String> =
        theirs.iter().flatten().map(|l| format!("{}x{}x{}", l.channels, l.kernel, l.kernel)).collect();
    model
        .dw_layers()
        .iter()
        .enumerate()
        .map(|(i, ours)| {
            let matching = theirs
                .iter_mut()
                .find(|l| l.as_ref().is_some_and(|l| l.channels == ours.channels() && l.kernel == ours.kernel));
            matching.and_then(Option::take).map(|l| l.filters).ok_or_else(|| {
                Error::invalid(
                    source,
                    format!(
                        "expected a DW layer of {c}x{k}x{k} (channels x kernel) for layer {i} of this model, found none \
                         left among its layers {}",
                        shapes.join(", "),
                        c = ours.channels(),
                        k = ours.kernel
                    ),
                )
            })
        })
        .collect()
}

fn check_same_layers<B: Backend>(model: &Network<B>, assignment: &[Vec<ChannelKey>], source: &Path) -> Result<()> {
    let ours: Vec<usize> = model.dw_layers().iter().map(|l| l.channels()).collect();
    let theirs: Vec<usize> = assignment.iter().map(Vec::len).collect();
    if ours != theirs {
        return Err(Error::invalid(
            source,
            format!("expected DW layers of {ours:?} channels like this model, found {theirs:?}"),
        ));
    }
    Ok(())
}

fn labels_tensor<B: Backend>(labels: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = labels.len();
    Tensor::from_data(TensorData::new(labels, [n]), device)
}

fn images_tensor<B: Backend>(batch: Batch, shape: [usize; 3], device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let n = batch.len();
    let x = Tensor::from_data(TensorData::new(batch.images, [n, shape[0], shape[1], shape[2]]), device);
    (x, labels_tensor(batch.labels, device))
}

/// Cross-entropy against targets smoothed by `eps` (mass `eps` spread
/// uniformly over all classes).
fn smoothed_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>, eps: f32) -> Tensor<B, 1> {
    let classes = logits.dims()[1];
    let log_p = log_softmax(logits, 1);
    let target = labels.one_hot::<2>(classes).float() * (1.0 - eps) + eps / classes as f32;
    (log_p * target).sum_dim(1).mean().neg()
}

/// One optimizer step on a batch: forward, smoothed cross-entropy,
/// backward, update. Returns the updated model, the logits and the loss.
pub fn training_step<B: ModelAutodiffBackend, O: Optimizer<Network<B>, B>>(
    model: Network<B>,
    optimizer: &mut O,
    x: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    lr: f64,
    label_smoothing: f32,
) -> (Network<B>, Tensor<B, 2>, Tensor<B, 1>) {
    let logits = model.forward(x);
    let loss = smoothed_cross_entropy(logits.clone(), labels, label_smoothing);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optimizer.step(lr, model, grads), logits, loss)
}

fn correct<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> usize {
    let n = labels.dims()[0];
    let pred = logits.argmax(1).reshape([n]);
    pred.equal(labels).int().sum().into_data().iter::<i64>().next().unwrap_or(0) as usize
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().iter::<f64>().next().expect("a scalar")
}

/// Test loss (plain cross-entropy) and accuracy.
pub fn evaluate<B: ModelBackend>(
    model: &Network<B>,
    data: &Dataset,
    split: &Split,
    batch_size: usize,
) -> Result<(f64, f64)> {
    let device = Default::default();
    let order: Vec<usize> = (0..split.len()).collect();
    let (mut loss_sum, mut hits) = (0.0, 0usize);
    for_each_batch(data, split, &order, batch_size, None, |batch| {
        let n = batch.len();
        let (x, y) = images_tensor::<B>(batch, data.shape, &device);
        let logits = model.forward(x);
        hits += correct(logits.clone(), y.clone());
        loss_sum += scalar(smoothed_cross_entropy(logits, y, 0.0)) * n as f64;
        Ok(ControlFlow::Continue(()))
    })?;
    Ok((loss_sum / split.len() as f64, hits as f64 / split.len() as f64))
}

fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m).map_err(|e| Error::Other(e.to_string()))?);
        text.push('\n');
    }
    atomic::write_file(path, text.as_bytes())
}

/// Trains `config` on `data`, writing checkpoints and metrics under `out`.
pub fn train<B: ModelAutodiffBackend>(
    config: &TrainConfig,
    data: &Dataset,
    out: &Path,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    config.check()?;
    let device = B::Device::default();
    let ckpt = out.join(CHECKPOINT_DIR);
    let bank = Bank::resolve(&config.dw.bank)?;
    let new_optimizer = || AdamWNoDecayOnVectors::new(config.weight_decay).init::<B>();

    let (mut model, mut optimizer, mut state) = if options.resume && ckpt.is_dir() {
        let state = checkpoint::load_state(&ckpt)?;
        if state.config != *config {
            return Err(Error::invalid(
                ckpt.join(checkpoint::STATE_FILE),
                "the checkpoint was written with other settings; resume with the same ones",
            ));
        }
        let plan = dw_plan(config, &bank, state.assignment.as_ref());
        let model =
            checkpoint::load_model(&ckpt, Network::<B>::new(&config.model, &plan, config.seed, &device), &device)?;
        let optimizer = checkpoint::load_optimizer(&ckpt, new_optimizer(), &device)?;
        observer.note(&format!("resuming after epoch {} (step {})", state.epochs_done, state.step));
        (model, optimizer, state)
    } else {
        if ckpt.exists() {
            return Err(Error::invalid(
                &ckpt,
                "already holds a checkpoint: pass --resume to continue it, or choose another output folder",
            ));
        }
        let given = match (config.dw.mode, config.dw.assignment, &config.dw.source_checkpoint) {
            (DwMode::Frozen, AssignmentKind::FromCheckpoint, Some(source)) => {
                Some(fit_source_checkpoint(source, &dw_plan(config, &bank, None))?)
            }
            _ => None,
        };
        let mut plan = dw_plan(config, &bank, given.as_ref());
        if let (DwMode::TransferFrozen, Some(source)) = (config.dw.mode, &config.dw.source_checkpoint) {
            // The layers' shapes come from the network itself, built once with placeholders.
            let shapes = Network::<B>::new(&config.model, &plan, config.seed, &device);
            plan.transferred = Some(transferred_filters(&shapes, source)?);
        }
        let model = Network::<B>::new(&config.model, &plan, config.seed, &device);
        if let (Some(given), Some(source)) = (&given, &config.dw.source_checkpoint) {
            check_same_layers(&model, given, source)?;
        }
        let assignment = (plan.mode == DwMode::Frozen)
            .then(|| model.dw_layers().iter().map(|l| snap_keys(&l.filter_values(), l.kernel, &plan)).collect());
        let norm = mean_filter_norm(&model.dw_layers());
        if options.dw_snapshots {
            dw_filter_set(&model, &dw_snapshot_dir(out, 0))?.save(&dw_snapshot_dir(out, 0))?;
        }
        (model, new_optimizer(), RunState::new(config.clone(), assignment, norm))
    };

    let train_indices = stratified_subset(data.train.labels(), config.data.fraction, config.data.subset_seed);
    let batches = train_indices.len().div_ceil(config.batch_size);
    let schedule = Schedule {
        peak: config.lr,
        floor: config.min_lr,
        warmup: (config.warmup_epochs * batches as f64).round() as u64,
        total: (config.epochs * batches) as u64,
    };

    for epoch in state.epochs_done..config.epochs {
        let fit_and_freeze = config.dw.mode == DwMode::Frozen && config.dw.assignment == AssignmentKind::FitAndFreeze;
        if fit_and_freeze && epoch == config.dw.freeze_after && state.assignment.is_none() {
            let plan = DwPlan { mode: DwMode::Frozen, ..dw_plan(config, &bank, None) };
            let (frozen, assignment) = model.freeze_to_bank(&plan, &device);
            model = frozen;
            state.assignment = Some(assignment);
            observer.note(&format!("epoch {}: DW filters snapped to their best keys and frozen", epoch + 1));
        }
        observer.epoch_started(epoch + 1, config.epochs, batches);
        let order = epoch_order(&train_indices, config.seed, epoch);
        let (mut loss_sum, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
        let started = Instant::now();
        let mut halted = false;
        let mut lr = schedule.lr(state.step);
        let crop_padding = config.data.crop_padding_for(data.shape[2]);
        let augment = config.data.augment.then_some(Augment { seed: config.seed, epoch, crop_padding });
        for_each_batch(data, &data.train, &order, config.batch_size, augment, |batch| {
            let n = batch.len();
            let (x, y) = images_tensor::<B>(batch, data.shape, &device);
            lr = schedule.lr(state.step);
            let before = model.clone();
            let (next, logits, loss) =
                training_step(model.clone(), &mut optimizer, x.clone(), y.clone(), lr, config.label_smoothing);
            model = next;
            state.step += 1;
            let step_loss = scalar(loss.inner());
            if !step_loss.is_finite() {
                // Stop before anything is written: the last checkpoint (an
                // epoch's end) stays the run's state.
                let culprit =
                    before.valid().first_non_finite(x.inner()).unwrap_or_else(|| "none (the loss itself)".into());
                let kept = match state.epochs_done {
                    0 => "no checkpoint was written".to_string(),
                    done => format!("the checkpoint of epoch {done} is kept"),
                };
                return Err(Error::Other(format!(
                    "step {} (epoch {}): the training loss is {step_loss}; first stage whose output is not finite: \
                     {culprit}; stopped, {kept}",
                    state.step,
                    epoch + 1,
                )));
            }
            loss_sum += step_loss * n as f64;
            hits += correct(logits.inner(), y.inner());
            seen += n;
            observer.step(&StepReport {
                batch: seen.div_ceil(config.batch_size),
                batches,
                step_loss,
                loss: loss_sum / seen as f64,
                accuracy: hits as f64 / seen as f64,
                images_per_s: seen as f64 / started.elapsed().as_secs_f64(),
            });
            if options.halt_after_steps == Some(state.step) {
                halted = true;
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if halted {
            return Ok(Outcome::Halted { step: state.step });
        }
        let seconds = started.elapsed().as_secs_f64();
        state.train_seconds += seconds;
        state.train_images += seen as u64;
        let valid = model.valid();
        let evaluated = (epoch + 1) % config.eval_every == 0 || epoch + 1 == config.epochs;
        let (test_loss, test_accuracy) = if evaluated {
            let (loss, accuracy) = evaluate(&valid, data, &data.test, config.batch_size)?;
            (Some(loss), Some(accuracy))
        } else {
            (None, None)
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            step: state.step,
            lr,
            train_loss: loss_sum / seen as f64,
            train_accuracy: hits as f64 / seen as f64,
            test_loss,
            test_accuracy,
            train_images_per_s: seen as f64 / seconds,
            dw_frozen: valid.dw_layers().iter().all(|l| l.is_frozen()),
            dw_filter_norm: mean_filter_norm(&valid.dw_layers()),
        };
        state.history.push(metrics.clone());
        state.epochs_done = epoch + 1;
        // Before the checkpoint: a kill between the two redoes this epoch.
        if options.dw_snapshots {
            let dir = dw_snapshot_dir(out, epoch + 1);
            dw_filter_set(&valid, &dir)?.save(&dir)?;
        }
        checkpoint::save(&ckpt, &state, &model, &optimizer)?;
        write_metrics(&out.join(METRICS_FILE), &state.history)?;
        observer.epoch_finished(&metrics);
    }

    let last = state.history.last().expect("at least one epoch ran");
    let learned: Vec<(usize, Vec<ChannelModel>)> = model
        .valid()
        .dw_layers()
        .iter()
        .filter_map(|l| l.scalespace.as_ref().map(|s| (l.kernel, s.models())))
        .collect();
    let scalespace = (!learned.is_empty()).then(|| LearnedScales::new(&bank, learned));
    if let Some(scales) = &scalespace {
        let json = serde_json::to_vec_pretty(scales).map_err(|e| Error::Other(e.to_string()))?;
        atomic::write_file(&out.join(SCALESPACE_FILE), &json)?;
    }
    let (Some(test_accuracy), Some(test_loss)) = (last.test_accuracy, last.test_loss) else {
        return Err(Error::invalid(ckpt.join(checkpoint::STATE_FILE), "the last epoch has no test evaluation"));
    };
    Ok(Outcome::Finished(Box::new(Summary {
        test_accuracy,
        test_loss,
        train_images_per_s: state.train_images as f64 / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        model: config.model.name.clone(),
        dataset: data.name.clone(),
        train_fraction: config.data.fraction,
        train_images: train_indices.len(),
        epochs: config.epochs,
        steps: state.step,
        seed: config.seed,
        mode: config.dw.mode,
        bank: bank.name.clone(),
        assignment: config.assignment_label(),
        learn_scale: config.dw.learn_scale,
        layer_scale_init: config.model.layer_scale_init,
        initial_dw_filter_norm: state.initial_dw_norm,
        final_dw_filter_norm: last.dw_filter_norm,
        key_usage: state.assignment.as_ref().map(|a| key_usage(a, bank.len())),
        scalespace,
        backend: B::name(&device),
        checkpoint: ckpt.display().to_string(),
        metrics_log: out.join(METRICS_FILE).display().to_string(),
    })))
}

/// Loads a checkpoint's model (on the inference backend `B`) and state.
pub fn load_trained<B: ModelBackend>(dir: &Path) -> Result<(Network<B>, RunState)> {
    let device = Default::default();
    let state = checkpoint::load_state(dir)?;
    let bank = Bank::resolve(&state.config.dw.bank)?;
    let plan = dw_plan(&state.config, &bank, state.assignment.as_ref());
    let model = Network::<B>::new(&state.config.model, &plan, state.config.seed, &device);
    Ok((checkpoint::load_model(dir, model, &device)?, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tiny_config, tiny_data, Ad};
    use burn::module::{Module, ModuleVisitor, Param};

    /// Every float parameter's values, in module order.
    struct Values(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().into_data().iter::<f32>().collect());
        }
    }
    fn weights(dir: &Path) -> Vec<Vec<f32>> {
        let (model, _) = load_trained::<crate::CpuBackend>(&dir.join(CHECKPOINT_DIR)).unwrap();
        let mut v = Values(Vec::new());
        model.visit(&mut v);
        v.0
    }

    /// `config` halted in its second epoch (12 steps each on 180 images) and
    /// resumed ends with the weights of the uninterrupted run in `whole`.
    fn assert_halted_and_resumed_run_ends_like(config: &TrainConfig, data: &Dataset, whole: &Path) {
        let cut = tempfile::tempdir().unwrap();
        let halt = RunOptions { resume: false, halt_after_steps: Some(12 + 5), dw_snapshots: false };
        train::<Ad>(config, data, cut.path(), &halt, &mut Quiet).unwrap();
        let resume = RunOptions { resume: true, halt_after_steps: None, dw_snapshots: false };
        finish(train::<Ad>(config, data, cut.path(), &resume, &mut Quiet).unwrap());
        assert_eq!(weights(cut.path()), weights(whole), "resumed weights differ");
    }

    fn finish(outcome: Outcome) -> Summary {
        match outcome {
            Outcome::Finished(s) => *s,
            Outcome::Halted { step } => panic!("halted at step {step}"),
        }
    }

    /// Depths and dims of different lengths are refused before a run, as
    /// loading refuses them (a run used to train the shorter of the two).
    #[test]
    fn a_model_no_checkpoint_could_be_loaded_with_is_refused_before_the_run() {
        let mut config = tiny_config(DwMode::Trainable, AssignmentKind::RoundRobin);
        config.model =
            crate::models::ModelSpec::named("convnext-atto", 1, crate::data::synthetic::CLASSES, true).unwrap();
        (config.model.depths, config.model.dims) = (vec![1, 1], vec![8]);
        let out = tempfile::tempdir().unwrap();
        let err = train::<Ad>(&config, &tiny_data(32), out.path(), &RunOptions::default(), &mut Quiet);
        let err = err.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("expected 2 stage(s) of depths and non-zero dims"), "{err}");
        assert!(!out.path().join(CHECKPOINT_DIR).exists());
    }

    /// A checkpoint whose state.json and model.mpk disagree is refused with
    /// one line naming the file: a model the weights file is far too small
    /// for (before the network is built), a specification no network has,
    /// and weights of another shape (burn would take them as they are).
    #[test]
    fn checkpoints_whose_state_and_weights_disagree_are_refused() {
        let data = tiny_data(32);
        let dir = |dims: usize| {
            let mut config = tiny_config(DwMode::Trainable, AssignmentKind::RoundRobin);
            (config.epochs, config.model.dims) = (1, vec![dims]);
            let out = tempfile::tempdir().unwrap();
            finish(train::<Ad>(&config, &data, out.path(), &RunOptions::default(), &mut Quiet).unwrap());
            out
        };
        let (wide, narrow) = (dir(16), dir(8));
        let load = |d: &tempfile::TempDir| {
            load_trained::<crate::CpuBackend>(&d.path().join(CHECKPOINT_DIR)).map(|_| ()).unwrap_err().to_string()
        };
        let state_path = narrow.path().join(CHECKPOINT_DIR).join(checkpoint::STATE_FILE);
        let state = std::fs::read_to_string(&state_path).unwrap();
        let edit = |from: &str, to: &str| {
            assert!(state.contains(from), "{from} in {state}");
            std::fs::write(&state_path, state.replacen(from, to, 1)).unwrap();
        };

        edit("\"dims\": [\n        8\n      ]", "\"dims\": [\n        8000000\n      ]");
        let err = load(&narrow);
        assert!(err.contains("model.mpk") && err.contains("f32 weights for state.json's model"), "{err}");
        edit("\"dw_kernel\": 7", "\"dw_kernel\": 4");
        let err = load(&narrow);
        assert!(err.contains("state.json") && err.contains("expected an odd DW kernel"), "{err}");

        std::fs::write(&state_path, &state).unwrap();
        let model = |d: &tempfile::TempDir| d.path().join(CHECKPOINT_DIR).join(checkpoint::MODEL_FILE);
        std::fs::copy(model(&wide), model(&narrow)).unwrap();
        let err = load(&narrow);
        assert!(err.contains("model.mpk") && err.contains("expected parameter 0 of shape [8, 1, 3, 3]"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    /// A few steps of the tiny reference model on wgpu (Mesa's lavapipe
    /// where the machine has no GPU) end where the CPU run ends: the same
    /// test loss to 1e-3 relative, and every weight within 5% of one AdamW
    /// step (`lr`; AdamW divides each gradient by its running size, so float
    /// rounding in a tiny gradient moves a weight by a fraction of a step; a
    /// wrong gradient moves it by whole steps).
    #[cfg(feature = "wgpu")]
    #[test]
    fn a_short_run_on_wgpu_matches_the_cpu_run() {
        let data = tiny_data(64);
        for mode in [DwMode::Trainable, DwMode::Frozen] {
            let mut config = tiny_config(mode, AssignmentKind::RoundRobin);
            config.epochs = 2;
            let (cpu, gpu) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let on_cpu = finish(train::<Ad>(&config, &data, cpu.path(), &RunOptions::default(), &mut Quiet).unwrap());
            let on_gpu = finish(
                train::<crate::WgpuTrainBackend>(&config, &data, gpu.path(), &RunOptions::default(), &mut Quiet)
                    .unwrap(),
            );
            assert!(on_gpu.backend.contains("wgpu"), "{mode}: ran on {}", on_gpu.backend);
            let relative = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-6);
            assert!(
                relative(on_gpu.test_loss, on_cpu.test_loss) < 1e-3,
                "{mode}: test loss {} vs {}",
                on_gpu.test_loss,
                on_cpu.test_loss
            );
            let tolerance = 0.05 * config.lr as f32;
            for (g, c) in weights(gpu.path()).iter().zip(weights(cpu.path())) {
                let worst = g.iter().zip(&c).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= tolerance, "{mode}: a weight differs by {worst} (tolerance {tolerance})");
            }
        }
    }

    #[test]
    fn a_tiny_run_learns_and_frozen_keys_stay_put() {
        let data = tiny_data(360);
        for mode in [DwMode::Trainable, DwMode::Frozen] {
            let dir = tempfile::tempdir().unwrap();
            let config = tiny_config(mode, AssignmentKind::RoundRobin);
            let summary = finish(train::<Ad>(&config, &data, dir.path(), &RunOptions::default(), &mut Quiet).unwrap());
            // 9 classes: chance is 11%.
            assert!(summary.test_accuracy > 0.6, "{mode}: test accuracy {}", summary.test_accuracy);
            assert!(summary.train_images_per_s > 0.0 && summary.steps == 6 * 23);
            let history: Vec<EpochMetrics> = std::fs::read_to_string(dir.path().join(METRICS_FILE))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(history.len(), 6);
            if mode == DwMode::Frozen {
                let (model, _) = load_trained::<crate::CpuBackend>(&dir.path().join(CHECKPOINT_DIR)).unwrap();
                let dw = model.dw_layers()[0];
                let bases = dw.filter.val().into_data().iter::<f32>().collect::<Vec<_>>();
                assert_eq!(&bases[..49], Bank::published8().key(0), "bank weights changed");
                assert!(dw.offset.as_ref().unwrap().val().into_data().iter::<f32>().any(|b| b != 0.0));
                assert_eq!(summary.key_usage, Some(vec![2; 8]), "16 channels, round-robin over 8 keys");
                assert!((summary.initial_dw_filter_norm - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn a_run_halted_mid_epoch_and_resumed_ends_with_the_same_weights() {
        // fit-and-freeze snaps after epoch 1, so the halt in epoch 3 also
        // checks that the frozen structure is rebuilt on resume.
        let data = tiny_data(180);
        let mut config = TrainConfig { epochs: 3, ..tiny_config(DwMode::Frozen, AssignmentKind::FitAndFreeze) };
        config.data.augment = true;
        let whole = tempfile::tempdir().unwrap();
        let summary = finish(train::<Ad>(&config, &data, whole.path(), &RunOptions::default(), &mut Quiet).unwrap());
        assert!(summary.key_usage.is_some());

        let cut = tempfile::tempdir().unwrap();
        // 180 images in batches of 16: 12 steps per epoch; halt in epoch 3.
        let halt = RunOptions { resume: false, halt_after_steps: Some(2 * 12 + 5), dw_snapshots: false };
        assert!(matches!(
            train::<Ad>(&config, &data, cut.path(), &halt, &mut Quiet).unwrap(),
            Outcome::Halted { step: 29 }
        ));
        let state = checkpoint::load_state(&cut.path().join(CHECKPOINT_DIR)).unwrap();
        assert_eq!((state.epochs_done, state.step), (2, 24));
        let err = train::<Ad>(&config, &data, cut.path(), &RunOptions::default(), &mut Quiet).err().unwrap();
        assert!(err.to_string().contains("--resume"), "{err}");
        let resume = RunOptions { resume: true, halt_after_steps: None, dw_snapshots: false };
        let resumed = finish(train::<Ad>(&config, &data, cut.path(), &resume, &mut Quiet).unwrap());

        assert_eq!(weights(cut.path()), weights(whole.path()), "resumed weights differ");
        assert_eq!(resumed.test_accuracy, summary.test_accuracy);
        let mut other = config.clone();
        other.lr = 0.5;
        let err = train::<Ad>(&other, &data, cut.path(), &resume, &mut Quiet).err().unwrap();
        assert!(err.to_string().contains("other settings"), "{err}");
    }

    /// transfer-frozen applies the source's own filters (up to the offset it
    /// learns), keeps them fixed, refuses a source without matching layers,
    /// and resumes to the same weights (the filters come back from its own
    /// checkpoint, not from the source).
    #[test]
    fn transfer_frozen_freezes_the_source_filters_and_resumes_exactly() {
        let data = tiny_data(180);
        let source = tempfile::tempdir().unwrap();
        let mut trainable = tiny_config(DwMode::Trainable, AssignmentKind::RoundRobin);
        (trainable.epochs, trainable.seed) = (2, 3);
        finish(train::<Ad>(&trainable, &data, source.path(), &RunOptions::default(), &mut Quiet).unwrap());
        let source_ckpt = source.path().join(CHECKPOINT_DIR);
        let (source_model, _) = load_trained::<crate::CpuBackend>(&source_ckpt).unwrap();
        let theirs = source_model.dw_layers()[0].filter_values();

        let mut config = TrainConfig { epochs: 3, ..tiny_config(DwMode::TransferFrozen, AssignmentKind::RoundRobin) };
        config.dw.source_checkpoint = Some(source_ckpt.clone());
        let whole = tempfile::tempdir().unwrap();
        let summary = finish(train::<Ad>(&config, &data, whole.path(), &RunOptions::default(), &mut Quiet).unwrap());
        assert!(summary.test_accuracy > 0.3, "test accuracy {}", summary.test_accuracy);
        let (model, _) = load_trained::<crate::CpuBackend>(&whole.path().join(CHECKPOINT_DIR)).unwrap();
        let dw = model.dw_layers()[0];
        assert!(dw.is_frozen());
        let ours = dw.filter_values();
        let offsets: Vec<f32> = dw.offset.as_ref().unwrap().val().into_data().iter::<f32>().collect();
        for (c, (o, t)) in ours.chunks_exact(49).zip(theirs.chunks_exact(49)).enumerate() {
            // Ours minus the learned offset is theirs minus its mean (the initial offset).
            let mean = t.iter().sum::<f32>() / 49.0;
            for (a, b) in o.iter().zip(t) {
                assert!((a - offsets[c] - (b - mean)).abs() < 1e-5, "channel {c}: {a} vs {b}");
            }
        }

        assert_halted_and_resumed_run_ends_like(&config, &data, whole.path());

        let mut wider = config.clone();
        wider.model.dims = vec![24];
        let err = train::<Ad>(&wider, &data, tempfile::tempdir().unwrap().path(), &RunOptions::default(), &mut Quiet);
        let err = err.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("expected a DW layer of 24x7x7") && err.contains("16x7x7"), "{err}");
        let mut sourceless = config.clone();
        sourceless.dw.source_checkpoint = None;
        assert!(sourceless.check().unwrap_err().to_string().contains("--source-checkpoint"));
    }

    /// scalespace learns its sigmas (the filters' shapes change, the
    /// operators stay), reports them per family, and resumes exactly.
    #[test]
    fn scalespace_learns_sigmas_and_resumes_exactly() {
        let data = tiny_data(180);
        let config = TrainConfig { epochs: 3, ..tiny_config(DwMode::Scalespace, AssignmentKind::RoundRobin) };
        let whole = tempfile::tempdir().unwrap();
        let summary = finish(train::<Ad>(&config, &data, whole.path(), &RunOptions::default(), &mut Quiet).unwrap());
        assert!(summary.test_accuracy > 0.3, "test accuracy {}", summary.test_accuracy);
        let scales = summary.scalespace.expect("learned scales");
        assert_eq!(scales.channels.concat().len(), 16);
        assert_eq!(scales.learned.len(), 8, "round-robin over the 8 keys' families");
        let moved =
            scales.learned.iter().zip(&scales.fitted_to_keys).any(|(l, f)| (l.sigma_x - f.sigma_x).abs() > 1e-3);
        assert!(moved, "no sigma moved: {scales:?}");
        let written: crate::scalespace_dw::LearnedScales =
            serde_json::from_slice(&std::fs::read(whole.path().join(SCALESPACE_FILE)).unwrap()).unwrap();
        assert_eq!(written, scales);
        let (model, _) = load_trained::<crate::CpuBackend>(&whole.path().join(CHECKPOINT_DIR)).unwrap();
        let operators: Vec<f32> = model.dw_layers()[0].filter.val().into_data().iter::<f32>().collect();
        assert_eq!(operators, crate::scalespace_dw::operators(&scales.channels[0]), "the operators changed");

        assert_halted_and_resumed_run_ends_like(&config, &data, whole.path());
    }
}
