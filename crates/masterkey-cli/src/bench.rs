//! Benchmarks: each runs the reference implementation in the same command,
//! on the same data, and reports the ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use masterkey_core::fit::fit_filters;
use masterkey_core::Bank;

use crate::ui;

/// NumPy version the reference runs on, installed into a cache virtualenv.
const NUMPY_VERSION: &str = "2.4.6";
const FIT_SCRIPT: &str = include_str!("bench_fit.py");

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fit N random 7x7 filters to the 8 published keys; compare with NumPy doing the same arithmetic.
    Fit {
        #[arg(long, default_value_t = 1_000_000)]
        filters: usize,
        /// Timed repeats per implementation; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Fit { filters, repeats, seed } => bench_fit(filters, repeats.max(1), seed),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
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

/// A virtualenv under the cache with the pinned NumPy, made on first use.
fn numpy_python() -> Result<PathBuf> {
    let venv = masterkey_fetch::cache_dir().join(format!("bench-venv-numpy-{NUMPY_VERSION}"));
    let python = venv.join("bin").join("python");
    if python.is_file() {
        return Ok(python);
    }
    eprintln!("creating {} with numpy=={NUMPY_VERSION} (once)", venv.display());
    let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", &format!("numpy=={NUMPY_VERSION}")])
        .status()
        .context("running pip install numpy")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!("pip install numpy=={NUMPY_VERSION} into {} failed", venv.display());
    }
    Ok(python)
}

fn bench_fit(n: usize, repeats: usize, seed: u64) -> Result<()> {
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

    let dir = tempfile::tempdir()?;
    let (data, keys, best, script) =
        (dir.path().join("y.f32"), dir.path().join("x.f32"), dir.path().join("best.u16"), dir.path().join("fit.py"));
    write_f32(&data, &weights)?;
    write_f32(&keys, &bank.keys)?;
    std::fs::write(&script, FIT_SCRIPT)?;
    let python = numpy_python()?;
    // OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, set on some of these machines for
    // old OpenBLAS builds, slow a current NumPy: the reference runs without them.
    let output = Command::new(&python)
        .arg(&script)
        .args([&data, &keys])
        .args([n.to_string(), taps.to_string(), bank.len().to_string(), repeats.to_string()])
        .arg(&best)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .context("running the NumPy reference")?;
    if !output.status.success() {
        bail!("NumPy reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let reply: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the NumPy reference's output")?;
    let numpy_times: Vec<f64> = serde_json::from_value(reply["times_s"].clone())?;
    let numpy_best: Vec<u16> =
        std::fs::read(&best)?.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    let agree = rust_best.iter().zip(&numpy_best).filter(|(a, b)| a == b).count() as f64 / n as f64;

    let (rust_s, numpy_s) = (median(rust_times), median(numpy_times));
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!(
        "bench fit: {n} random {} filters, {} keys (published8), median of {repeats} runs, {threads} cores",
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
    println!("{t}");
    println!("speed ratio masterkey / NumPy: {:.2}x; best-key agreement: {:.4}%", numpy_s / rust_s, 100.0 * agree);
    Ok(())
}
