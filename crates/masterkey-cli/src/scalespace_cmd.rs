use std::path::{Path, PathBuf};

use anyhow::Result;
use masterkey_core::Bank;
use masterkey_render::FilterGrid;
use masterkey_scalespace::ideal::describe;
use masterkey_scalespace::{
    fit_bank, ideal8, ideal_bank_from_fit, BankFit, Criterion, Discretisation, Family, FitOptions, Model, Params,
};
use serde::Serialize;

use crate::{print_json, ui};

#[derive(clap::Subcommand)]
pub enum ScalespaceCommand {
    /// Fit each key of a bank to the scale-space families: best family, discretisation, scales, |cos|.
    Fit {
        /// A built-in name (published8) or a bank file.
        #[arg(long, default_value = "published8")]
        bank: String,
        /// l2 (maximise |cos|) or l1 (least absolute residual); key and model
        /// are both zero-mean, unit-L2 and the sign is free.
        #[arg(long, default_value = "l2")]
        criterion: Criterion,
        /// Folder to write `fit.json` and `keys_vs_models.png` (keys on top, their models below) to.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print one JSON object on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write an idealised bank: the models of the published 8 keys (or the
    /// best models of a fit of another bank) at any odd size.
    Bank {
        /// Odd kernel size, 3 to 31.
        #[arg(long, default_value_t = 7)]
        size: usize,
        /// Model this bank's keys (their best L2 fit) instead of the built-in published8 models.
        #[arg(long)]
        from_fit: Option<String>,
        /// The bank file (safetensors) to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Also draw the keys as a PNG grid.
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// Print one model's kernel (row 0 at the top, x rightwards, y downwards).
    Kernel {
        /// gauss, dx, dy, offset-up, offset-down, offset-left, offset-right, dxx, dyy, dxy, log or sharpen.
        family: Family,
        /// Scale along x, in pixels (0.1 to 10).
        #[arg(long)]
        sigma_x: f64,
        /// Scale along y, in pixels; defaults to sigma-x.
        #[arg(long)]
        sigma_y: Option<f64>,
        /// Weight of the Laplacian (sharpen only, 0 to 5).
        #[arg(long)]
        alpha: Option<f64>,
        /// discrete (exp(-s) I_n(s)), sampled or integrated.
        #[arg(long, default_value = "discrete")]
        discretisation: Discretisation,
        /// Odd kernel size, 3 to 31.
        #[arg(long, default_value_t = 7)]
        size: usize,
        /// Print one JSON object on stdout instead of the numbers.
        #[arg(long)]
        json: bool,
    },
}

/// Writes `fit.json` and `keys_vs_models.png`: the keys in one row and, below
/// each, its best model (normalised, with the fit's sign), on one colour scale.
pub fn save_fit_outputs(bank: &Bank, fit: &BankFit, dir: &Path) -> Result<()> {
    masterkey_core::atomic::write_file(&dir.join("fit.json"), &serde_json::to_vec_pretty(fit)?)?;
    let mut models = Vec::new();
    for key in &fit.keys {
        let taps = key.best.model.kernel(bank.kernel.h)?.normalised().unwrap_or_default();
        models.push(taps.iter().map(|&v| (v * f64::from(key.best.sign)) as f32).collect::<Vec<f32>>());
    }
    let filters = (0..bank.len()).map(|i| bank.key(i)).chain(models.iter().map(Vec::as_slice)).collect();
    FilterGrid { kernel: bank.kernel, filters, columns: bank.len() }.save_png(&dir.join("keys_vs_models.png"))?;
    Ok(())
}

#[derive(Serialize)]
struct KernelOutput {
    #[serde(flatten)]
    model: Model,
    size: usize,
    /// Rows, top first.
    taps: Vec<Vec<f64>>,
    sum: f64,
}

pub fn run(cmd: ScalespaceCommand) -> Result<()> {
    match cmd {
        ScalespaceCommand::Fit { bank, criterion, output, json } => {
            let bank = Bank::resolve(&bank)?;
            let fit = fit_bank(&bank, &FitOptions { criterion, ..FitOptions::default() })?;
            if let Some(dir) = &output {
                save_fit_outputs(&bank, &fit, dir)?;
            }
            if json {
                return print_json(&fit);
            }
            println!(
                "Scale-space fit of bank `{}` ({} keys, {}), criterion {}.",
                fit.bank,
                fit.keys.len(),
                fit.kernel,
                fit.criterion
            );
            println!("Normalisation: {}.", fit.normalisation);
            let mut t = ui::table(&[
                "key",
                "family",
                "discretisation",
                "sigma_x",
                "sigma_y",
                "alpha",
                "|cos|",
                "L1 residual",
                "runner-up",
            ]);
            for k in &fit.keys {
                let p = &k.best.model.params;
                let runner_up = k.runner_up.map(|r| format!("{} {:.3}", r.model.family, r.abs_cos)).unwrap_or_default();
                t.add_row(vec![
                    comfy_table::Cell::new(&k.label),
                    comfy_table::Cell::new(k.best.model.family),
                    comfy_table::Cell::new(k.best.model.discretisation),
                    ui::num(format!("{:.3}", p.sigma_x)),
                    ui::num(format!("{:.3}", p.sigma_y)),
                    ui::num(p.alpha.map(|a| format!("{a:.3}")).unwrap_or_default()),
                    ui::num(format!("{:.4}", k.best.abs_cos)),
                    ui::num(format!("{:.4}", k.best.l1_residual)),
                    comfy_table::Cell::new(runner_up),
                ]);
            }
            println!("{t}\n(sigmas in pixels; x rightwards, y downwards)");
            if let Some(dir) = &output {
                println!("written to {}", dir.display());
            }
            Ok(())
        }
        ScalespaceCommand::Bank { size, from_fit, output, png } => {
            let bank = match from_fit {
                None => ideal8(size)?,
                Some(spec) => {
                    let source = Bank::resolve(&spec)?;
                    let fit = fit_bank(&source, &FitOptions::default())?;
                    ideal_bank_from_fit(&fit, &source.licence, size)?
                }
            };
            bank.save(&output)?;
            if let Some(path) = &png {
                crate::pictures::bank_png(&bank, path)?;
            }
            println!("bank `{}` ({} keys of {}) written to {}", bank.name, bank.len(), bank.kernel, output.display());
            for label in &bank.labels {
                println!("  {label}");
            }
            if let Some(path) = &png {
                println!("keys drawn in one row, in bank order: {}", path.display());
            }
            Ok(())
        }
        ScalespaceCommand::Kernel { family, sigma_x, sigma_y, alpha, discretisation, size, json } => {
            let params = Params { sigma_x, sigma_y: sigma_y.unwrap_or(sigma_x), alpha };
            let model = Model::new(family, discretisation, params)?;
            let kernel = model.kernel(size)?;
            let out = KernelOutput {
                model,
                size,
                taps: kernel.taps.chunks(size).map(<[f64]>::to_vec).collect(),
                sum: kernel.taps.iter().sum(),
            };
            if json {
                return print_json(&out);
            }
            println!("{} at {size}x{size} (row 0 at the top, x rightwards, y downwards):", describe(&model));
            for row in &out.taps {
                println!("{}", row.iter().map(|v| format!("{v:>10.6}")).collect::<Vec<_>>().join(" "));
            }
            println!("sum of taps: {:.6}", out.sum);
            Ok(())
        }
    }
}
