//! Benchmarks: each runs the reference implementation in the same command,
//! on the same data, and reports the ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use masterkey_core::fit::{fit_array, fit_filters, FitOptions};
use masterkey_core::kernel::DEFAULT_DEAD_TOLERANCE;
use masterkey_core::Bank;
use masterkey_search::kmeans::{kmeans_from, plus_plus_seeds};
use masterkey_search::{synthetic, KMeansOptions, NormalisedFilters};

use crate::device::Device;
use crate::ui;

/// The references run on these pinned packages, installed into a cache virtualenv.
const REFERENCE_PACKAGES: &[&str] = &["numpy==2.4.6", "scikit-learn==1.9.1"];
/// PyTorch for `bench dw` and `bench step` (its Linux wheels pull the CUDA libraries in: several GB, once).
pub(crate) const TORCH_PACKAGES: &[&str] = &["torch==2.9.1", "numpy==2.4.6"];
const FIT_SCRIPT: &str = include_str!("bench_fit.py");
const KMEANS_SCRIPT: &str = include_str!("bench_kmeans.py");

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fit N random 7x7 filters to the 8 published keys; compare with NumPy doing the same arithmetic.
    Fit {
        /// Random filters fitted.
        #[arg(long, default_value_t = 1_000_000)]
        filters: usize,
        /// Timed repeats per implementation; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Seed of the random filters.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Depthwise convolution (forward, and forward + backward with trainable or frozen filters) against
    /// PyTorch's grouped convolution, NCHW and channels-last.
    Dw {
        /// Batch, channels, height, width.
        #[arg(long, value_delimiter = 'x', default_value = "128x64x32x32")]
        shape: Vec<usize>,
        /// Side of the square filters (odd).
        #[arg(long, default_value_t = 7)]
        kernel: usize,
        /// Timed repeats per implementation and pass; the median is reported.
        #[arg(long, default_value_t = 7)]
        repeats: usize,
        /// Where masterkey runs it; PyTorch runs on the CPU, or on CUDA beside `--device cuda`.
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
    },
    /// One training step of a network (default: the reference model, `train --model reference`) with trainable
    /// and with frozen DW layers; compare with the same network in PyTorch, NCHW and channels-last.
    Step(Box<crate::bench_step::StepArgs>),
    /// masterkey's trainer against a plain PyTorch loop on the small-data recipe: loss curves from the same
    /// weights and batches per DW mode, and with --full test accuracy and speed of whole runs.
    Parity(Box<crate::bench_parity::ParityArgs>),
    /// k-means (K=8) on N normalised 7x7 filters shaped like trained ones; compare with scikit-learn's KMeans
    /// from the same initial centroids for the same iterations.
    Kmeans {
        /// Filters clustered.
        #[arg(long, default_value_t = 1_000_000)]
        filters: usize,
        /// Clusters K (the filters are drawn around the 8 published keys).
        #[arg(long, default_value_t = 8)]
        keys: usize,
        /// Most iterations (tolerance 0: a run stops early only when no filter changes cluster); both run as many
        /// as the one that stopped first.
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Noise norm relative to |a| in `a*key + b + noise` (0.9 gives a mean |cos| to the generating key of
        /// about 0.74, as published8 reaches on the real default models).
        #[arg(long, default_value_t = 0.9)]
        noise: f32,
        /// Timed repeats per implementation; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Seed of the filters and of the initial centroids.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Fit { filters, repeats, seed, json } => bench_fit(filters, repeats.max(1), seed, json),
        BenchCommand::Dw { shape, kernel, repeats, device } => {
            device.ensure_built()?;
            let Ok(shape) = <[usize; 4]>::try_from(shape.as_slice()) else {
                bail!("--shape takes NxCxHxW, found {} numbers", shape.len());
            };
            if kernel % 2 == 0 || shape.contains(&0) {
                bail!("bench dw needs an odd kernel and a non-empty shape");
            }
            crate::bench_dw::bench_dw(shape, kernel, repeats.max(1), device)
        }
        BenchCommand::Step(args) => crate::bench_step::bench_step(&args),
        BenchCommand::Parity(args) => crate::bench_parity::run(*args),
        BenchCommand::Kmeans { filters, keys, iterations, noise, repeats, seed } => {
            bench_kmeans(filters, keys, iterations, noise, repeats.max(1), seed)
        }
    }
}

/// The PyTorch device beside masterkey's: CUDA beside CUDA; PyTorch has no
/// wgpu backend, so its CPU beside wgpu.
pub(crate) fn torch_device(device: Device) -> &'static str {
    match device {
        Device::Cuda => "cuda",
        Device::Cpu | Device::Wgpu => "cpu",
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Uniform noise in [-1, 1) from a 64-bit LCG: reproducible without a dependency.
fn random_filters(n: usize, taps: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
    (0..n * taps)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn write_f32(path: &Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The Python of a virtualenv under the cache with the pinned `packages`,
/// made on first use (its folder name carries the pins, so new pins make a
/// new one); or, where
/// `MASTERKEY_BENCH_PYTHON` names one (a machine with no package registry
/// at hand, a GPU machine with its own PyTorch), that Python as it is.
fn reference_python(packages: &[&str]) -> Result<PathBuf> {
    if let Some(python) = std::env::var_os("MASTERKEY_BENCH_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    let venv = masterkey_fetch::cache_dir().join(format!("bench-venv-{}", packages.join("-")));
    let python = venv.join("bin").join("python");
    if python.is_file() {
        return Ok(python);
    }
    eprintln!("creating {} with {} (once)", venv.display(), packages.join(", "));
    let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .status()
        .context("running pip install")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!("pip install {} into {} failed", packages.join(" "), venv.display());
    }
    Ok(python)
}

/// Runs a reference script with the cache virtualenv's Python and parses its
/// one JSON line. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, set on some of these
/// machines for old OpenBLAS builds, slow a current NumPy: the reference runs
/// without them.
fn run_reference(script: &str, dir: &Path, args: &[String]) -> Result<serde_json::Value> {
    run_reference_with(REFERENCE_PACKAGES, script, dir, args)
}

pub(crate) fn run_reference_with(
    packages: &[&str],
    script: &str,
    dir: &Path,
    args: &[String],
) -> Result<serde_json::Value> {
    let path = dir.join("reference.py");
    std::fs::write(&path, script)?;
    let output = Command::new(reference_python(packages)?)
        .arg(&path)
        .args(args)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .context("running the Python reference")?;
    if !output.status.success() {
        bail!("Python reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("reading the Python reference's output")
}

/// Runs a PyTorch script on a JSON job file (its progress on our stderr) and
/// parses its one JSON line.
pub(crate) fn run_torch_job(script: &str, dir: &Path, job: &serde_json::Value) -> Result<serde_json::Value> {
    let (path, job_path) = (dir.join("reference.py"), dir.join("job.json"));
    std::fs::write(&path, script)?;
    std::fs::write(&job_path, serde_json::to_vec(job)?)?;
    let output = Command::new(reference_python(TORCH_PACKAGES)?)
        .arg(&path)
        .arg(&job_path)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the PyTorch reference")?;
    if !output.status.success() {
        bail!("the PyTorch reference failed ({}); its messages are above", output.status);
    }
    serde_json::from_slice(&output.stdout).context("reading the PyTorch reference's output")
}

fn bench_fit(n: usize, repeats: usize, seed: u64, json: bool) -> Result<()> {
    let bank = Bank::published8();
    let taps = bank.kernel.taps();
    eprintln!("generating {n} random {} filters (seed {seed})", bank.kernel);
    let weights = random_filters(n, taps, seed);
    let dead = vec![false; n];

    let mut rust_times = Vec::new();
    let mut rust_best = Vec::new();
    for _ in 0..repeats {
        let t0 = Instant::now();
        let fits = fit_filters(&weights, taps, &bank.keys, &dead);
        rust_times.push(t0.elapsed().as_secs_f64());
        rust_best = fits.iter().map(|f| f.key.unwrap_or(u16::MAX)).collect();
    }
    // What `masterkey fit` and Python's `masterkey.fit` of an array run: the
    // same fit with the dead check inside, the per-filter columns and the
    // coverage summary.
    let thresholds = FitOptions::default().thresholds;
    let fit_array_times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(fit_array(&weights, bank.kernel, DEFAULT_DEAD_TOLERANCE, &bank, &thresholds, "array"));
            t0.elapsed().as_secs_f64()
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let (data, keys, best) = (dir.path().join("y.f32"), dir.path().join("x.f32"), dir.path().join("best.u16"));
    write_f32(&data, &weights)?;
    write_f32(&keys, &bank.keys)?;
    let shown = |p: &Path| p.display().to_string();
    let args = [
        shown(&data),
        shown(&keys),
        n.to_string(),
        taps.to_string(),
        bank.len().to_string(),
        repeats.to_string(),
        shown(&best),
    ];
    let reply = run_reference(FIT_SCRIPT, dir.path(), &args)?;
    let numpy_times: Vec<f64> = serde_json::from_value(reply["times_s"].clone())?;
    let numpy_best: Vec<u16> =
        std::fs::read(&best)?.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    let agree = rust_best.iter().zip(&numpy_best).filter(|(a, b)| a == b).count() as f64 / n as f64;

    let (rust_s, numpy_s, fit_array_s) = (median(rust_times), median(numpy_times), median(fit_array_times));
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    if json {
        return crate::print_json(&serde_json::json!({
            "filters": n, "seed": seed, "kernel": bank.kernel.to_string(), "keys": bank.len(), "repeats": repeats,
            "cores": threads,
            "masterkey_median_s": rust_s, "numpy_median_s": numpy_s, "best_key_agreement": agree,
            "masterkey_fit_array_median_s": fit_array_s,
        }));
    }
    println!(
        "bench fit: {n} random {} filters (seed {seed}), {} keys (published8), median of {repeats} runs, {threads} cores",
        bank.kernel,
        bank.len()
    );
    let mut t = ui::table(&["implementation", "median s", "filters/s"]);
    t.add_row(vec![
        format!("masterkey ({}, rayon)", masterkey_core::fit::simd_path()),
        format!("{rust_s:.4}"),
        format!("{:.3e}", n as f64 / rust_s),
    ]);
    t.add_row(vec![
        format!("NumPy {} (same arithmetic)", reply["numpy"].as_str().unwrap_or("?")),
        format!("{numpy_s:.4}"),
        format!("{:.3e}", n as f64 / numpy_s),
    ]);
    t.add_row(vec![
        "masterkey, with the dead check and coverage summary (fit_array, as `masterkey fit`)".to_string(),
        format!("{fit_array_s:.4}"),
        format!("{:.3e}", n as f64 / fit_array_s),
    ]);
    println!("{t}");
    println!("speed ratio masterkey / NumPy: {:.2}x; best-key agreement: {:.4}%", numpy_s / rust_s, 100.0 * agree);
    Ok(())
}

/// Timed runs of scikit-learn's `KMeans` (lloyd and elkan) from `init`.
struct SklearnRuns {
    version: String,
    /// Per algorithm: median fit time and the iterations it ran.
    runs: Vec<(&'static str, f64, usize)>,
}

fn sklearn_kmeans(
    dir: &Path,
    filters: &NormalisedFilters,
    init: &[f32],
    max_iter: usize,
    repeats: usize,
) -> Result<SklearnRuns> {
    let (data, init_path) = (dir.join("x.f32"), dir.join("init.f32"));
    write_f32(&data, &filters.data)?;
    write_f32(&init_path, init)?;
    let shown = |p: &Path| p.display().to_string();
    let k = init.len() / filters.taps();
    let args = [
        shown(&data),
        shown(&init_path),
        filters.len().to_string(),
        filters.taps().to_string(),
        k.to_string(),
        max_iter.to_string(),
        repeats.to_string(),
    ];
    let reply = run_reference(KMEANS_SCRIPT, dir, &args)?;
    let mut runs = Vec::new();
    for algorithm in ["lloyd", "elkan"] {
        let times: Vec<f64> = serde_json::from_value(reply[algorithm]["times_s"].clone())?;
        let iters: Vec<usize> = serde_json::from_value(reply[algorithm]["iterations"].clone())?;
        runs.push((algorithm, median(times), iters.iter().copied().max().unwrap_or(0)));
    }
    Ok(SklearnRuns { version: reply["sklearn"].as_str().unwrap_or("?").to_string(), runs })
}

/// Median time and iterations of masterkey's k-means from `init`.
fn masterkey_kmeans(filters: &NormalisedFilters, init: &[f32], max_iter: usize, repeats: usize) -> (f64, usize) {
    let options = KMeansOptions { restarts: 1, max_iter, tol: 0.0, seed: 0 };
    let mut times = Vec::new();
    let mut ran = 0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        ran = kmeans_from(filters, init.to_vec(), &options).iterations;
        times.push(t0.elapsed().as_secs_f64());
    }
    (median(times), ran)
}

/// k-means from the same k-means++ centroids in both, for the same number of
/// iterations: the two minimise different objectives (masterkey's is
/// sign-invariant), so left alone they stop after different numbers of
/// passes. Each runs up to `iterations`; the one that stopped later is run
/// again for as many as the other did, and the run to convergence is shown too.
fn bench_kmeans(n: usize, k: usize, iterations: usize, noise: f32, repeats: usize, seed: u64) -> Result<()> {
    let bank = Bank::published8();
    eprintln!(
        "generating {n} normalised {} filters: a*key + b + noise from published8 (noise {noise}, seed {seed})",
        bank.kernel
    );
    let filters = synthetic::shifted_copies(&bank, n.div_ceil(bank.len()), noise, seed);
    let n = filters.len();
    let init = plus_plus_seeds(&filters, k, seed);
    let dir = tempfile::tempdir()?;

    let (converged_s, converged_iters) = masterkey_kmeans(&filters, &init, iterations, repeats);
    let mut sklearn = sklearn_kmeans(dir.path(), &filters, &init, iterations, repeats)?;
    let lloyd_iters = sklearn.runs[0].2;
    let (ours_s, ours_iters) = if lloyd_iters < converged_iters {
        masterkey_kmeans(&filters, &init, lloyd_iters, repeats)
    } else {
        (converged_s, converged_iters)
    };
    if ours_iters < lloyd_iters {
        sklearn = sklearn_kmeans(dir.path(), &filters, &init, ours_iters, repeats)?;
    }

    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!(
        "bench kmeans: {n} normalised {} filters (a*key + b + noise {noise} from published8, seed {seed}), K = {k}, same k-means++ \
         initial centroids, same number of iterations (at most {iterations}), tolerance 0, median of {repeats} runs, \
         {threads} cores",
        bank.kernel
    );
    let mut t = ui::table(&["implementation", "iterations", "median s", "s / iteration", "masterkey speed-up"]);
    let row = |name: String, iters: usize, secs: f64, speed_up: String| {
        vec![name, iters.to_string(), format!("{secs:.3}"), format!("{:.4}", secs / iters.max(1) as f64), speed_up]
    };
    let ours_name = "masterkey (sign-invariant spherical, Elkan bounds)";
    t.add_row(row(ours_name.into(), ours_iters, ours_s, "1.00x".into()));
    for &(algorithm, secs, iters) in &sklearn.runs {
        let speed_up = if iters == ours_iters {
            format!("{:.2}x", secs / ours_s)
        } else {
            format!("{:.2}x per iteration", (secs / iters.max(1) as f64) / (ours_s / ours_iters.max(1) as f64))
        };
        t.add_row(row(format!("scikit-learn {} KMeans({algorithm})", sklearn.version), iters, secs, speed_up));
    }
    if converged_iters != ours_iters {
        t.add_row(row(format!("{ours_name}, to its own convergence"), converged_iters, converged_s, "-".into()));
    }
    println!("{t}");
    println!("(speed-up = scikit-learn's median fit time / masterkey's, same data, same centroids, same iterations)");
    Ok(())
}
