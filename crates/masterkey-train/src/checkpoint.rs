//! Checkpoints: a folder with the model's and the optimizer's records
//! (named MessagePack, full precision) and `state.json` (configuration,
//! progress, history). Written to a temporary folder and renamed into place,
//! so a run killed at any moment leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use masterkey_core::{atomic, Error, Result};
use serde::{Deserialize, Serialize};

use crate::dw::ChannelKey;
use crate::models::Network;
use crate::record_check::check_record;
use crate::train::{EpochMetrics, TrainConfig};

pub const MODEL_FILE: &str = "model.mpk";
pub const OPTIMIZER_FILE: &str = "optimizer.mpk";
pub const STATE_FILE: &str = "state.json";
const FORMAT_VERSION: u32 = 1;

type Bytes = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Everything besides the weights that a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub format_version: u32,
    pub config: TrainConfig,
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub history: Vec<EpochMetrics>,
    /// Key, `a`, `b` of every channel of every DW layer, once the layers are
    /// bank-frozen (`None` while they are trainable or random).
    pub assignment: Option<Vec<Vec<ChannelKey>>>,
    /// Mean L2 norm of the DW filters at initialisation.
    pub initial_dw_norm: f32,
    pub train_seconds: f64,
    pub train_images: u64,
}

impl RunState {
    pub fn new(config: TrainConfig, assignment: Option<Vec<Vec<ChannelKey>>>, initial_dw_norm: f32) -> Self {
        RunState {
            format_version: FORMAT_VERSION,
            config,
            epochs_done: 0,
            step: 0,
            history: Vec::new(),
            assignment,
            initial_dw_norm,
            train_seconds: 0.0,
            train_images: 0,
        }
    }
}

fn encode<B: Backend, R: burn::record::Record<B>>(record: R, what: &str) -> Result<Vec<u8>> {
    Recorder::<B>::record(&Bytes::default(), record, ()).map_err(|e| Error::Other(format!("encoding the {what}: {e}")))
}

/// Writes the checkpoint folder `dir` atomically.
pub fn save<B: AutodiffBackend, O: Optimizer<Network<B>, B>>(
    dir: &Path,
    state: &RunState,
    model: &Network<B>,
    optimizer: &O,
) -> Result<()> {
    let model_bytes = encode::<B, _>(model.clone().into_record(), "model")?;
    let optim_bytes = encode::<B, _>(optimizer.to_record(), "optimizer state")?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
    atomic::write_dir_with(dir, |tmp| {
        for (name, bytes) in [(MODEL_FILE, &model_bytes), (OPTIMIZER_FILE, &optim_bytes), (STATE_FILE, &state_json)] {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    })
}

fn read(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    let path = dir.join(name);
    if !dir.is_dir() {
        return Err(Error::invalid(
            dir,
            "missing: expected a checkpoint folder (model.mpk, optimizer.mpk, state.json)",
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    Ok((path, bytes))
}

pub fn load_state(dir: &Path) -> Result<RunState> {
    let (path, bytes) = read(dir, STATE_FILE)?;
    let state: RunState =
        serde_json::from_slice(&bytes).map_err(|e| Error::invalid(&path, format!("expected a run state: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::invalid(
            &path,
            format!("expected checkpoint format {FORMAT_VERSION}, found {}", state.format_version),
        ));
    }
    let spec = &state.config.model;
    spec.check().map_err(|m| Error::invalid(&path, m))?;
    let model_path = dir.join(MODEL_FILE);
    let model_bytes = std::fs::metadata(&model_path).map_err(|e| Error::io(&model_path, e))?.len();
    let floor = spec.weight_floor();
    if model_bytes / 4 < floor {
        return Err(Error::invalid(
            &model_path,
            format!(
                "expected at least {floor} f32 weights for state.json's model, found a file of {model_bytes} bytes"
            ),
        ));
    }
    Ok(state)
}

/// The shape of every parameter of a module, in visiting order.
struct Shapes(Vec<Vec<usize>>);

impl<B: Backend> ModuleVisitor<B> for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.lazy_shape().to_vec());
    }
}

fn shapes<B: Backend>(model: &Network<B>) -> Vec<Vec<usize>> {
    let mut shapes = Shapes(Vec::new());
    model.visit(&mut shapes);
    shapes.0
}

/// Loads the weights of the checkpoint into `model` (built with the same
/// configuration). burn takes a record's tensors whatever their shapes, so
/// each is checked against the parameter it replaces.
pub fn load_model<B: Backend>(dir: &Path, model: Network<B>, device: &B::Device) -> Result<Network<B>> {
    let (path, bytes) = read(dir, MODEL_FILE)?;
    check_record(&bytes).map_err(|m| Error::invalid(&path, m))?;
    let record = Recorder::<B>::load(&Bytes::default(), bytes, device)
        .map_err(|e| Error::invalid(&path, format!("expected the model record of this configuration: {e}")))?;
    let expected = shapes(&model);
    let model = model.load_record(record);
    let found = shapes(&model);
    if let Some(i) = (0..expected.len()).find(|&i| expected.get(i) != found.get(i)) {
        return Err(Error::invalid(
            &path,
            format!(
                "expected parameter {i} of shape {:?} as state.json's model has, found {:?}",
                expected[i],
                found.get(i)
            ),
        ));
    }
    Ok(model)
}

pub fn load_optimizer<B: AutodiffBackend, O: Optimizer<Network<B>, B>>(
    dir: &Path,
    optimizer: O,
    device: &B::Device,
) -> Result<O> {
    let (path, bytes) = read(dir, OPTIMIZER_FILE)?;
    check_record(&bytes).map_err(|m| Error::invalid(&path, m))?;
    let record = Recorder::<B>::load(&Bytes::default(), bytes, device)
        .map_err(|e| Error::invalid(&path, format!("expected the optimizer state of this run: {e}")))?;
    Ok(optimizer.load_record(record))
}
