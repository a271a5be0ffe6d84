//! `masterkey bench step`: one training step of a network, by default the
//! reference model of REFERENCE §5 (`masterkey train --model reference`),
//! or any ConvNeXt (V1) shape such as the small-data recipe's, trainable and
//! frozen, against the same network in PyTorch, in the same command.

use std::time::Instant;

use anyhow::{bail, Result};
use masterkey_core::Bank;
use masterkey_train::burn::tensor::{Int, Tensor, TensorData};
use masterkey_train::dw::{DwMode, DwPlan, KeyChoice};
use masterkey_train::models::{Arch, ModelSpec, Network};
use masterkey_train::optim::AdamWNoDecayOnVectors;
use masterkey_train::rng::SplitMix;
use masterkey_train::train::training_step;
use masterkey_train::ModelAutodiffBackend;

use serde_json::json;

use crate::bench::{median, run_reference_with, run_torch_job, torch_device, TORCH_PACKAGES};
use crate::device::{Device, OnDevice};
use crate::ui;

const STEP_SCRIPT: &str = include_str!("bench_step.py");
/// Its ConvNeXt network is the one `bench parity` compares against.
const CONVNEXT_SCRIPT: &str = include_str!("bench_parity.py");
const CLASSES: usize = 10;

#[derive(clap::Args)]
pub struct StepArgs {
    /// Images per training step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Untimed steps first (allocator and caches warm up).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps per implementation and DW mode; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// The network: `reference`, or a ConvNeXt (V1) preset such as `convnext-atto`.
    #[arg(long, default_value = "reference")]
    model: String,
    /// Blocks per stage (reference model: one number, the blocks).
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<usize>>,
    /// Channels per stage (reference model: one number, the width).
    #[arg(long, value_delimiter = ',')]
    dims: Option<Vec<usize>>,
    /// Initial layer scale of ConvNeXt blocks.
    #[arg(long, default_value_t = 1.0)]
    layer_scale_init: f32,
    /// Channels of the random input images.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Side of the random input images (ConvNeXt uses its small-input variant up to 64 px).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Where masterkey runs it; PyTorch runs on the CPU, or on CUDA (also with bfloat16 AMP) beside `--device cuda`.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

impl StepArgs {
    fn spec(&self) -> Result<ModelSpec> {
        let small = self.image_size <= 64;
        let mut spec = ModelSpec::named(&self.model, self.in_channels, CLASSES, small).map_err(anyhow::Error::msg)?;
        match spec.arch {
            Arch::Reference => {}
            Arch::ConvNext => spec.layer_scale_init = Some(self.layer_scale_init),
            _ => {
                bail!("bench step has a PyTorch network for `reference` and ConvNeXt (V1) models, not `{}`", self.model)
            }
        }
        if let Some(d) = &self.depths {
            spec.depths = d.clone();
        }
        if let Some(d) = &self.dims {
            spec.dims = d.clone();
        }
        Ok(spec)
    }
}

/// Median seconds per step, trainable and frozen, and the backend's name.
struct OurSteps<'a> {
    spec: &'a ModelSpec,
    args: &'a StepArgs,
}

impl OnDevice for OurSteps<'_> {
    type Output = (f64, f64, String);
    fn run<B: ModelAutodiffBackend>(self) -> Result<Self::Output> {
        let trainable = our_step::<B>(self.spec, DwMode::Trainable, self.args);
        let frozen = our_step::<B>(self.spec, DwMode::Frozen, self.args);
        Ok((trainable, frozen, B::name(&Default::default())))
    }
}

/// Median seconds per step of `spec` with DW layers in `mode`.
fn our_step<B: ModelAutodiffBackend>(spec: &ModelSpec, mode: DwMode, args: &StepArgs) -> f64 {
    let device = Default::default();
    let plan = DwPlan { mode, keys: KeyChoice::RoundRobin, ..DwPlan::trainable(Bank::published8()) };
    let mut model = Network::<B>::new(spec, &plan, 0, &device);
    let mut optimizer = AdamWNoDecayOnVectors::new(0.05).init::<B>();
    let mut rng = SplitMix::new(0);
    let (batch, side, channels) = (args.batch, args.image_size, args.in_channels);
    let images: Vec<f32> = (0..batch * channels * side * side).map(|_| rng.normal()).collect();
    let labels: Vec<i64> = (0..batch).map(|i| (i % CLASSES) as i64).collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(images, [batch, channels, side, side]), &device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let mut times = Vec::new();
    for i in 0..args.warmup + args.repeats {
        let t0 = Instant::now();
        let (next, _, loss) = training_step(model, &mut optimizer, x.clone(), y.clone(), 1e-3, 0.0);
        // Reading the loss waits for the step, as PyTorch's eager step does.
        std::hint::black_box(loss.into_data());
        model = next;
        if i >= args.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    median(times)
}

/// PyTorch's median step times, keyed `<layout>/<mode>`.
fn their_steps(spec: &ModelSpec, args: &StepArgs) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    if spec.arch == Arch::Reference {
        let mut script_args: Vec<String> =
            [args.batch, args.image_size, spec.dims[0], spec.depths[0], CLASSES, args.warmup, args.repeats]
                .iter()
                .map(|v| v.to_string())
                .collect();
        script_args.push(torch_device(args.device).to_string());
        return run_reference_with(TORCH_PACKAGES, STEP_SCRIPT, dir.path(), &script_args);
    }
    let run = json!({
        "kind": "step", "depths": spec.depths, "dims": spec.dims, "kernel": spec.dw_kernel,
        "in_channels": spec.in_channels, "classes": CLASSES, "layer_scale": spec.layer_scale_init,
        "patch": if spec.small_input { 2 } else { 4 }, "size": args.image_size, "batch_size": args.batch,
        "warmup": args.warmup, "repeats": args.repeats, "lr": 1e-3, "weight_decay": 0.05,
        "device": torch_device(args.device),
    });
    let reply = run_torch_job(CONVNEXT_SCRIPT, dir.path(), &json!({ "runs": [run] }))?;
    let mut times = reply["runs"][0].clone();
    times["torch"] = reply["torch"].clone();
    times["threads"] = reply["threads"].clone();
    Ok(times)
}

fn describe(spec: &ModelSpec) -> String {
    let (width, blocks) = (spec.dims[0], spec.depths[0]);
    match spec.arch {
        Arch::Reference => format!(
            "the reference model (stem 3x3 to {width}, {blocks} blocks of DW 7x7 + LayerNorm + MLP x4 + residual, mean \
             pool, linear to {CLASSES})"
        ),
        _ => format!(
            "{} (depths {:?}, widths {:?}, DW {k}x{k}, layer scale {})",
            spec.name,
            spec.depths,
            spec.dims,
            spec.layer_scale_init.unwrap_or(0.0),
            k = spec.dw_kernel
        ),
    }
}

pub fn bench_step(args: &StepArgs) -> Result<()> {
    if args.batch == 0 || args.image_size == 0 || args.in_channels == 0 || args.repeats == 0 {
        bail!("bench step needs a batch of at least one image of at least one channel and pixel, and a repeat");
    }
    args.device.ensure_built()?;
    let spec = args.spec()?;
    let (batch, side, repeats) = (args.batch, args.image_size, args.repeats);
    eprintln!("masterkey: {} steps of batch {batch} per mode", args.warmup + repeats);
    let (trainable, frozen, backend) = args.device.run(OurSteps { spec: &spec, args })?;
    eprintln!("PyTorch: the same, NCHW and channels-last");
    let reply = their_steps(&spec, args)?;
    let theirs = |key: &str| reply[key].as_f64().unwrap_or(f64::NAN);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!(
        "bench step: one training step (forward, cross-entropy, backward, AdamW lr 1e-3 wd 0.05) of {} on {batch} \
         random {}x{side}x{side} images; median of {repeats} steps after {}; {threads} cores; masterkey on {backend}; \
         PyTorch {} on {} ({} threads) in the same command. Frozen: masterkey's published8 keys (round-robin) with a learnable offset; PyTorch's \
         DW weights frozen the same way (reference model: requires_grad off).",
        describe(&spec),
        args.in_channels,
        args.warmup,
        reply["torch"].as_str().unwrap_or("?"),
        reply["device"].as_str().unwrap_or("?"),
        reply["threads"]
    );
    let mut t = ui::table(&[
        "DW layers",
        "masterkey img/s",
        "PyTorch NCHW img/s",
        "PyTorch channels-last img/s",
        "vs NCHW",
        "vs channels-last",
    ]);
    for (name, ours, key) in [("trainable", trainable, "trainable"), ("frozen", frozen, "frozen")] {
        let (nchw, last) = (theirs(&format!("nchw/{key}")), theirs(&format!("channels_last/{key}")));
        let rate = |s: f64| format!("{:.1}", batch as f64 / s);
        t.add_row(vec![
            name.to_string(),
            rate(ours),
            rate(nchw),
            rate(last),
            format!("{:.2}x", nchw / ours),
            format!("{:.2}x", last / ours),
        ]);
    }
    println!("{t}");
    for key in ["trainable", "frozen"] {
        if let Some(amp) = reply[format!("amp/channels_last/{key}")].as_f64() {
            let ours = if key == "trainable" { trainable } else { frozen };
            println!(
                "PyTorch channels-last with bfloat16 AMP, {key}: {:.1} img/s ({:.2}x; masterkey runs f32)",
                batch as f64 / amp,
                amp / ours
            );
        }
    }
    println!("(ratios = PyTorch's median step time / masterkey's, each against PyTorch with the same DW mode; above 1 masterkey is faster)");
    Ok(())
}
