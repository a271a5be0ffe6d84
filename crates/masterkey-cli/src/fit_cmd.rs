use std::path::PathBuf;

use anyhow::{bail, Result};
use masterkey_core::fit::{save_fit_outputs, FitRecord, FitStats, RandomControl};
use masterkey_core::{fit_set, Bank, FilterSet, FitOptions, FitReport};
use serde::Serialize;

use crate::{print_json, ui, ReadOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Bank: a built-in name (published8) or a bank file.
    #[arg(long, default_value = "published8")]
    bank: String,
    /// Model files, saved filter sets, or default model ids (fetched; see `masterkey fetch --help`).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Directory to write `fits.csv` (every filter's key, a, b, |cos|) and `fit.json` (the summary).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// |cos| thresholds for coverage.
    #[arg(long, value_delimiter = ',', default_values_t = FitOptions::default().thresholds)]
    thresholds: Vec<f32>,
    /// Seed of the random bank (same number and size of keys) fitted as a control.
    #[arg(long, default_value_t = 1)]
    control_seed: u64,
    /// Number of equal bands of normalised depth.
    #[arg(long, default_value_t = FitOptions::default().depth_bands)]
    depth_bands: usize,
    #[command(flatten)]
    read: ReadOptions,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FitOutput<'a> {
    output: Option<String>,
    #[serde(flatten)]
    record: &'a FitRecord,
}

pub fn run(args: Args) -> Result<()> {
    let bank = Bank::resolve(&args.bank)?;
    let (set, _) = crate::extract::read_models(&args.inputs, args.read.dead_tol)?;
    if set.is_empty() {
        bail!("no depthwise filters found in the inputs; nothing to fit");
    }
    let options = FitOptions { thresholds: args.thresholds.clone(), depth_bands: args.depth_bands };
    let (fits, report) = fit_set(&set, &bank, &options);
    let record = FitRecord {
        inputs: args.inputs.iter().map(|p| p.display().to_string()).collect(),
        dead_tolerance: set.dead_tolerance,
        random_control: Some(RandomControl::compute(&set, &bank, &options, args.control_seed)),
        report,
    };
    if let Some(dir) = &args.output {
        save_fit_outputs(&set, &fits, &bank, &record, dir)?;
    }
    if args.json {
        return print_json(&FitOutput {
            output: args.output.as_ref().map(|p| p.display().to_string()),
            record: &record,
        });
    }
    print_report(&set, &record);
    if let Some(dir) = &args.output {
        println!("per-filter fits: {}", dir.join("fits.csv").display());
    }
    Ok(())
}

fn stats_row(t: &mut comfy_table::Table, name: &str, s: &FitStats) {
    let mut row = vec![
        comfy_table::Cell::new(name),
        ui::num(s.filters),
        ui::num(s.dead),
        ui::num(format!("{:.3}", s.mean_abs_cos)),
    ];
    row.extend(s.coverage.values().map(|&c| ui::pct(c)));
    t.add_row(row);
}

fn stats_table(first: &str, report: &FitReport) -> comfy_table::Table {
    let mut header = vec![first.to_string(), "filters".into(), "dead".into(), "mean |cos|".into()];
    header.extend(report.overall.coverage.keys().map(|t| format!("|cos|>={t}")));
    ui::table(&header.iter().map(String::as_str).collect::<Vec<_>>())
}

pub fn print_report(set: &FilterSet, record: &FitRecord) {
    let report = &record.report;
    println!(
        "Fit of {} filters ({} dead, centred L2 norm < {}) to bank `{}` ({} keys, {}).",
        report.overall.filters,
        report.overall.dead,
        set.dead_tolerance,
        report.bank,
        report.labels.len(),
        report.bank_kernel
    );
    println!("Filters of another size are compared by the resize rule: {}.", report.resize_rule);
    println!("Coverage = share of non-dead filters whose best key reaches the |cos| threshold.\n");

    let mut t = stats_table("filters", report);
    stats_row(&mut t, "all", &report.overall);
    for (k, s) in &report.per_kernel {
        stats_row(&mut t, &format!("kernel {k}"), s);
    }
    for (m, s) in &report.per_model {
        stats_row(&mut t, &ui::short_name(m), s);
    }
    if let Some(control) = &record.random_control {
        stats_row(&mut t, &format!("control: {}", control.bank), &control.overall);
        for (k, s) in &control.per_kernel {
            stats_row(&mut t, &format!("control: {} at {k}", control.bank), s);
        }
    }
    println!("{t}");
    if let Some(control) = &record.random_control {
        println!(
            "(control: the same filters fitted to {} random normal keys of {}, seed {}: the coverage chance alone gives)",
            control.overall.usage.len(),
            report.bank_kernel,
            control.seed
        );
    }

    let mut t = stats_table("depth band", report);
    for (band, s) in &report.per_depth_band {
        stats_row(&mut t, band, s);
    }
    println!("{t}");

    let mut header = vec!["key".to_string(), "all".into()];
    header.extend(report.per_kernel.keys().map(|k| format!("kernel {k}")));
    header.extend(report.per_depth_band.keys().map(|b| format!("depth {b}")));
    let mut t = ui::table(&header.iter().map(String::as_str).collect::<Vec<_>>());
    let share = |s: &FitStats, k: usize| {
        let live = (s.filters - s.dead).max(1) as f64;
        ui::pct(s.usage[k] as f64 / live)
    };
    for (k, label) in report.labels.iter().enumerate() {
        let mut row = vec![comfy_table::Cell::new(label), share(&report.overall, k)];
        row.extend(report.per_kernel.values().map(|s| share(s, k)));
        row.extend(report.per_depth_band.values().map(|s| share(s, k)));
        t.add_row(row);
    }
    println!("Key usage (share of non-dead filters whose best key it is):\n{t}");
    for (kernel, keys) in &report.unusable_keys {
        println!("note: at {kernel}, keys {} are constant after resizing and are never chosen", keys.join(", "));
    }
}
