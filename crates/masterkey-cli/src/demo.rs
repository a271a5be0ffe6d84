use std::path::PathBuf;

use anyhow::Result;
use masterkey_core::fit::{FitRecord, RandomControl};
use masterkey_core::{fit_set, Bank, FitOptions};
use serde::Serialize;

use crate::extract::{print_models_table, read_models, ModelSummary};
use crate::{fetch_cmd, fit_cmd, pictures, print_json, ReadOptions};

/// Seed of the random bank the demo fits as a control.
const CONTROL_SEED: u64 = 1;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder.
    #[arg(short, long, default_value = "results")]
    output: PathBuf,
    /// Bank to fit to.
    #[arg(long, default_value = "published8")]
    bank: String,
    /// Best-fitting filters drawn per key in the sample pictures.
    #[arg(long, default_value_t = 15)]
    samples_per_key: usize,
    #[command(flatten)]
    read: ReadOptions,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DemoOutput<'a> {
    models: &'a [ModelSummary],
    files: Vec<String>,
    #[serde(flatten)]
    record: &'a FitRecord,
}

pub fn run(args: Args) -> Result<()> {
    let bank = Bank::resolve(&args.bank)?;
    let paths: Vec<PathBuf> = fetch_cmd::ensure_models(&[])?.into_iter().map(|(_, p)| p).collect();
    let (set, models) = read_models(&paths, args.read.dead_tol)?;
    let options = FitOptions::default();
    let (fits, report) = fit_set(&set, &bank, &options);
    let record = FitRecord {
        inputs: paths.iter().map(|p| p.display().to_string()).collect(),
        dead_tolerance: set.dead_tolerance,
        random_control: Some(RandomControl::compute(&set, &bank, &options, CONTROL_SEED)),
        report,
    };

    let out = &args.output;
    let set_dir = out.join("filters");
    set.save(&set_dir)?;
    let fit_dir = out.join("fit");
    masterkey_core::fit::save_fit_outputs(&set, &fits, &bank, &record, &fit_dir)?;
    masterkey_core::atomic::write_file(&out.join("models.json"), &serde_json::to_vec_pretty(&models)?)?;
    let mut files = vec![set_dir.display().to_string(), fit_dir.join("fits.csv").display().to_string()];
    files.push(fit_dir.join("fit.json").display().to_string());
    let bank_png = out.join(format!("bank_{}.png", bank.name));
    pictures::bank_png(&bank, &bank_png)?;
    files.push(bank_png.display().to_string());
    for kernel in set.groups.keys() {
        let path = out.join(format!("samples_{kernel}.png"));
        pictures::samples_png(&set, &fits, &bank, *kernel, args.samples_per_key, &path)?;
        files.push(path.display().to_string());
    }

    if bank.kernel.h == bank.kernel.w && bank.kernel.h % 2 == 1 {
        let scalespace_dir = out.join("scalespace");
        let fit = masterkey_scalespace::fit_bank(&bank, &masterkey_scalespace::FitOptions::default())?;
        crate::scalespace_cmd::save_fit_outputs(&bank, &fit, &scalespace_dir)?;
        files.push(scalespace_dir.join("fit.json").display().to_string());
        files.push(scalespace_dir.join("keys_vs_models.png").display().to_string());
    }
    files.extend(search_found_banks(&set, &bank, &out.join("search"))?);
    let report = out.join("report.html");
    masterkey_report::write(out, &report)?;
    files.push(report.display().to_string());

    if args.json {
        return print_json(&DemoOutput { models: &models, files, record: &record });
    }
    print_models_table(&models);
    fit_cmd::print_report(&set, &record);
    println!("\nWritten:");
    for f in &files {
        println!("  {f}");
    }
    println!(
        "(samples_KxK.png: one row per key, the key first, then its {} best-fitting filters, normalised, sign-aligned)",
        args.samples_per_key
    );
    println!("Report: {}", report.display());
    Ok(())
}

/// Keys found in the filters themselves: sign-invariant k-means per kernel
/// size, the coverage-versus-K curve for K = 1..16, the K = 8 bank and its
/// one-to-one matching with `bank` (orientation kept, no symmetries).
fn search_found_banks(set: &masterkey_core::FilterSet, bank: &Bank, dir: &std::path::Path) -> Result<Vec<String>> {
    use masterkey_search::{compare, search, KChoice, KMeansOptions, Method, NormalisedFilters, SearchOptions};
    let mut files = Vec::new();
    for (kernel, group) in &set.groups {
        let filters = NormalisedFilters::from_group(group);
        if filters.len() < 16 {
            continue;
        }
        let options = SearchOptions {
            method: Method::KMeans(KMeansOptions::default()),
            k: KChoice::Fixed(bank.len()),
            max_k: 16,
            thresholds: FitOptions::default().thresholds,
        };
        let bar = crate::ui::progress(0, &format!("k-means on the {kernel} filters"));
        let outcome = search(&filters, "the demo's filters", &options, None, &|stage, done, total| {
            bar.set_message(format!("{kernel}: {stage}"));
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        });
        bar.finish_and_clear();
        let outcome = outcome?;
        let bank_file = dir.join(format!("kmeans-{kernel}.safetensors"));
        crate::search_cmd::save_outcome(&outcome, &bank_file)?;
        let comparison = compare(&outcome.bank, bank, false);
        let compare_file = dir.join(format!("kmeans-{kernel}.compare.json"));
        masterkey_core::atomic::write_file(&compare_file, &serde_json::to_vec_pretty(&comparison)?)?;
        files.push(bank_file.display().to_string());
        files.push(compare_file.display().to_string());
    }
    Ok(files)
}
