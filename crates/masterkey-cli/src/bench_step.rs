//! `masterkey bench step`: one training step of the reference model of
//! REFERENCE §5 (`masterkey train --model reference`), trainable and frozen,
//! against the same model in PyTorch, in the same command.

use std::time::Instant;

use anyhow::Result;
use masterkey_core::Bank;
use masterkey_train::burn::tensor::{Int, Tensor, TensorData};
use masterkey_train::dw::{DwMode, DwPlan, KeyChoice};
use masterkey_train::models::{ModelSpec, Network};
use masterkey_train::optim::AdamWNoDecayOnVectors;
use masterkey_train::rng::SplitMix;
use masterkey_train::train::training_step;
use masterkey_train::TrainBackend;

use crate::bench::{median, run_reference_with, TORCH_PACKAGES};
use crate::ui;

const STEP_SCRIPT: &str = include_str!("bench_step.py");
const CLASSES: usize = 10;
const SIZE: usize = 32;

/// Median seconds per step of the reference model with DW layers in `mode`.
fn our_step(spec: &ModelSpec, mode: DwMode, batch: usize, warmup: usize, repeats: usize) -> f64 {
    let device = Default::default();
    let plan = DwPlan { mode, keys: KeyChoice::RoundRobin, ..DwPlan::trainable(Bank::published8()) };
    let mut model = Network::<TrainBackend>::new(spec, &plan, 0, &device);
    let mut optimizer = AdamWNoDecayOnVectors::new(0.05).init::<TrainBackend>();
    let mut rng = SplitMix::new(0);
    let images: Vec<f32> = (0..batch * 3 * SIZE * SIZE).map(|_| rng.normal()).collect();
    let labels: Vec<i64> = (0..batch).map(|i| (i % CLASSES) as i64).collect();
    let x = Tensor::<TrainBackend, 4>::from_data(TensorData::new(images, [batch, 3, SIZE, SIZE]), &device);
    let y = Tensor::<TrainBackend, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let mut times = Vec::new();
    for i in 0..warmup + repeats {
        let t0 = Instant::now();
        let (next, _, loss) = training_step(model, &mut optimizer, x.clone(), y.clone(), 1e-3, 0.0);
        // Reading the loss waits for the step, as PyTorch's eager step does.
        std::hint::black_box(loss.into_data());
        model = next;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    median(times)
}

pub fn bench_step(batch: usize, warmup: usize, repeats: usize) -> Result<()> {
    let spec = ModelSpec::named("reference", 3, CLASSES, false).map_err(anyhow::Error::msg)?;
    let (width, blocks) = (spec.dims[0], spec.depths[0]);
    eprintln!("masterkey: {} steps of batch {batch} per mode", warmup + repeats);
    let trainable = our_step(&spec, DwMode::Trainable, batch, warmup, repeats);
    let frozen = our_step(&spec, DwMode::Frozen, batch, warmup, repeats);
    eprintln!("PyTorch: the same, NCHW and channels-last");
    let dir = tempfile::tempdir()?;
    let args: Vec<String> =
        [batch, SIZE, width, blocks, CLASSES, warmup, repeats].iter().map(|v| v.to_string()).collect();
    let reply = run_reference_with(TORCH_PACKAGES, STEP_SCRIPT, dir.path(), &args)?;
    let theirs = |key: &str| reply[key].as_f64().unwrap_or(f64::NAN);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!(
        "bench step: one training step (forward, cross-entropy, backward, AdamW lr 1e-3 wd 0.05) of the reference \
         model (stem 3x3 to {width}, {blocks} blocks of DW 7x7 + LayerNorm + MLP x4 + residual, mean pool, linear to \
         {CLASSES}) on {batch} random 3x{SIZE}x{SIZE} images; median of {repeats} steps after {warmup}; {threads} cores; \
         PyTorch {} ({} threads) in the same command. Frozen: masterkey's published8 keys (round-robin) with a \
         learnable offset; PyTorch's DW weights with requires_grad off.",
        reply["torch"].as_str().unwrap_or("?"),
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
    println!("(ratios = PyTorch's median step time / masterkey's, each against PyTorch with the same DW mode; above 1 masterkey is faster)");
    Ok(())
}
