use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use masterkey_core::{FilterSet, ModelFilters};
use serde::Serialize;

use crate::{print_json, ui, ReadOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Model files (safetensors, PyTorch, ONNX, TFLite, TF.js model.json; format detected from content), or
    /// default model ids (fetched; see `masterkey fetch --help`).
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Directory to write the filter set to (replaced atomically).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    read: ReadOptions,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
pub struct ModelSummary {
    pub source: String,
    pub format: String,
    pub layers: usize,
    pub filters: usize,
    pub kernels: BTreeMap<String, usize>,
}

impl ModelSummary {
    pub fn of(model: &ModelFilters) -> Self {
        let mut kernels = BTreeMap::new();
        for layer in &model.layers {
            *kernels.entry(layer.kernel.to_string()).or_insert(0) += layer.channels;
        }
        ModelSummary {
            source: model.source.display().to_string(),
            format: model.format.clone(),
            layers: model.layers.len(),
            filters: model.layers.iter().map(|l| l.channels).sum(),
            kernels,
        }
    }
}

#[derive(Serialize)]
struct ExtractOutput<'a> {
    output: String,
    filters: usize,
    dead: usize,
    dead_tolerance: f32,
    kernels: BTreeMap<String, usize>,
    models: &'a [ModelSummary],
}

/// Reads the models with a progress bar; returns the set and a summary per model.
/// Reads model files and saved filter sets; an argument that is not a file
/// but a default model's id (`masterkey fetch --help`) is fetched first.
pub fn read_models(models: &[PathBuf], dead_tol: f32) -> Result<(FilterSet, Vec<ModelSummary>)> {
    let models = models
        .iter()
        .map(|p| match p.to_str() {
            Some(id) if !p.exists() && masterkey_fetch::model(id).is_some() => crate::replace_cmd::resolve_model(id),
            _ => Ok(p.clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    let bar = ui::progress(models.len() as u64, "reading models");
    let mut summaries = Vec::new();
    let set = masterkey_formats::read_inputs(&models, dead_tol, |path: &Path, model| {
        if let Some(model) = model {
            summaries.push(ModelSummary::of(model));
        }
        bar.set_message(path.display().to_string());
        bar.inc(1);
    });
    bar.finish_and_clear();
    Ok((set?, summaries))
}

pub fn run(args: Args) -> Result<()> {
    let (set, summaries) = read_models(&args.models, args.read.dead_tol)?;
    if set.is_empty() {
        bail!(
            "no depthwise filters found in {} input(s); nothing written to {}",
            args.models.len(),
            args.output.display()
        );
    }
    set.save(&args.output)?;
    let out = ExtractOutput {
        output: args.output.display().to_string(),
        filters: set.len(),
        dead: set.dead_count(),
        dead_tolerance: set.dead_tolerance,
        kernels: set.kernel_counts(),
        models: &summaries,
    };
    if args.json {
        return print_json(&out);
    }
    print_models_table(&summaries);
    println!(
        "{} filters ({} dead, centred L2 norm < {}) written to {}",
        out.filters, out.dead, out.dead_tolerance, out.output
    );
    Ok(())
}

pub fn print_models_table(summaries: &[ModelSummary]) {
    let mut t = ui::table(&["model", "format", "DW layers", "filters", "by kernel"]);
    for s in summaries {
        let kernels: Vec<String> = s.kernels.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        t.add_row(vec![
            comfy_table::Cell::new(ui::short_name(&s.source)),
            comfy_table::Cell::new(&s.format),
            ui::num(s.layers),
            ui::num(s.filters),
            comfy_table::Cell::new(kernels.join(", ")),
        ]);
    }
    println!("{t}");
}
