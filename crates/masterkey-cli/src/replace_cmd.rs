use std::path::PathBuf;

use anyhow::{bail, Result};
use masterkey_core::{Bank, RESIZE_RULE};
use masterkey_surgery::replace::{overall, COVERAGE_THRESHOLD};
use masterkey_surgery::{replace_model, LayerFit};
use serde::Serialize;

use crate::{print_json, ui, ReadOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A state dict: a PyTorch checkpoint or a safetensors file, or the id of
    /// a default model (e.g. efficientnet-lite0, fetched and verified).
    model: String,
    /// Bank: a built-in name (published8) or a bank file.
    #[arg(long, default_value = "published8")]
    bank: String,
    /// The new model: safetensors holding every float tensor of the original
    /// under its state-dict name and shape (as f32), with each depthwise
    /// filter replaced by a*key+b of its best key (the bank resized to the
    /// layer's kernel). Integer buffers (BatchNorm's num_batches_tracked) are
    /// left out; PyTorch's load_state_dict fills that one in.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    read: ReadOptions,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ReplaceOutput<'a> {
    model: String,
    output: String,
    bank: &'a str,
    bank_keys: usize,
    bank_kernel: String,
    resize_rule: &'static str,
    coverage_threshold: f32,
    mean_abs_cos: f64,
    coverage: f64,
    layers: &'a [LayerFit],
}

/// A model argument: an existing file, else a default model's id.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    match masterkey_fetch::model(spec) {
        Some(member) => Ok(masterkey_fetch::ensure(member)?),
        None => bail!("{spec}: no such file, and not a default model id (see `masterkey fetch --help`)"),
    }
}

pub fn run(args: Args) -> Result<()> {
    let bank = Bank::resolve(&args.bank)?;
    let model = resolve_model(&args.model)?;
    let fits = replace_model(&model, &bank, args.read.dead_tol, &args.output)?;
    let (mean_abs_cos, coverage) = overall(&fits);
    if args.json {
        return print_json(&ReplaceOutput {
            model: model.display().to_string(),
            output: args.output.display().to_string(),
            bank: &bank.name,
            bank_keys: bank.len(),
            bank_kernel: bank.kernel.to_string(),
            resize_rule: RESIZE_RULE,
            coverage_threshold: COVERAGE_THRESHOLD,
            mean_abs_cos,
            coverage,
            layers: &fits,
        });
    }
    let filters: usize = fits.iter().map(|f| f.channels).sum();
    println!(
        "Replaced {filters} depthwise filters in {} layers of {} by a*key+b of bank `{}` ({} keys, {}).",
        fits.len(),
        model.display(),
        bank.name,
        bank.len(),
        bank.kernel
    );
    println!("Other kernel sizes use the resize rule: {RESIZE_RULE}.\n");
    print_layer_fits(&fits);
    println!(
        "all layers: mean |cos| {mean_abs_cos:.3}, coverage at |cos| >= {COVERAGE_THRESHOLD}: {:.1}%",
        100.0 * coverage
    );
    println!("written (safetensors, the original's tensor names and shapes): {}", args.output.display());
    Ok(())
}

pub fn print_layer_fits(fits: &[LayerFit]) {
    let coverage = format!("|cos|>={COVERAGE_THRESHOLD}");
    let mut t = ui::table(&["layer", "kernel", "channels", "dead", "mean |cos|", &coverage]);
    for f in fits {
        t.add_row(vec![
            comfy_table::Cell::new(&f.layer),
            comfy_table::Cell::new(&f.kernel),
            ui::num(f.channels),
            ui::num(f.dead),
            ui::num(format!("{:.3}", f.mean_abs_cos)),
            ui::pct(f.coverage),
        ]);
    }
    println!("{t}");
}
