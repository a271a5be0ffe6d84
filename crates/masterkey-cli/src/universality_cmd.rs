//! `masterkey experiment universality`: a thin wrapper over
//! `masterkey_universality`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use masterkey_search::AutoencoderOptions;
use masterkey_train::data::{DataKind, Dataset};
use masterkey_universality::{output, run_universality, AnalysisOptions, TrainingSet};

use masterkey_train::dw::DwMode;
use masterkey_train::train::DwSettings;

use crate::train_cmd::{fetch_data, Bars, RecipeArgs};

#[derive(clap::Args)]
pub struct UniversalityArgs {
    /// Model and training settings shared by every run (--model, --depths, --dims, --batch-size, --lr, ...);
    /// the DW mode is always trainable; --epochs is the budget of a set that does not name its own.
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Data sets, each NAME[:EPOCHS[:FRACTION]] with NAME fashion-mnist, mnist-5k, lfw-subset or photos (fetched), or
    /// KIND=FOLDER for cifar10, cifar100, idx or folder, e.g. cifar10=data/cifar-10-batches-bin:5.
    #[arg(long, value_delimiter = ',', default_values_t = [
        "fashion-mnist:3:0.2".to_string(), "mnist-5k:10".into(), "lfw-subset:30".into()
    ])]
    sets: Vec<String>,
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2])]
    seeds: Vec<u64>,
    /// Keys per found (and random) bank.
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Adam steps of the autoencoder route (run at initialisation, at the end and on the pooled sets).
    #[arg(long, default_value_t = AutoencoderOptions::default().steps)]
    autoencoder_steps: usize,
    /// Results folder: results.md, results.json, banks-<set>.png, *-per-epoch.svg, runs/.
    #[arg(short, long, visible_alias = "results", default_value = "results/universality")]
    output: PathBuf,
}

/// One `--sets` entry: label, data kind, folder, epochs, fraction.
fn parse_set(text: &str) -> Result<(String, DataKind, Option<PathBuf>, Option<usize>, Option<f64>)> {
    let mut parts = text.split(':');
    let head = parts.next().unwrap_or_default().trim();
    let (kind_text, folder) = match head.split_once('=') {
        Some((kind, folder)) => (kind, Some(PathBuf::from(folder))),
        None => (head, None),
    };
    let kind: DataKind = kind_text.parse().map_err(|e: String| anyhow::anyhow!("--sets `{text}`: {e}"))?;
    if kind.is_fetched() == folder.is_some() {
        bail!("--sets `{text}`: fashion-mnist, mnist-5k, lfw-subset and photos take no folder; cifar10, cifar100, idx and folder need KIND=FOLDER");
    }
    let epochs = parts
        .next()
        .map(|p| p.trim().parse::<usize>())
        .transpose()
        .with_context(|| format!("--sets `{text}`: epochs"))?;
    let fraction = parts
        .next()
        .map(|p| p.trim().parse::<f64>())
        .transpose()
        .with_context(|| format!("--sets `{text}`: fraction"))?;
    if parts.next().is_some() {
        bail!("--sets `{text}`: expected NAME[:EPOCHS[:FRACTION]]");
    }
    let label = match &folder {
        Some(f) => format!("{kind}-{}", f.file_name().map_or("data".into(), |n| n.to_string_lossy().into_owned())),
        None => kind.to_string(),
    };
    Ok((label, kind, folder, epochs, fraction))
}

pub fn run(args: UniversalityArgs) -> Result<()> {
    let mut sets = Vec::new();
    for text in &args.sets {
        let (label, kind, folder, epochs, fraction) = parse_set(text)?;
        let spec = args.recipe.data_spec(kind, folder, fraction.unwrap_or(1.0));
        let data = Dataset::load(&spec, fetch_data)?;
        let mut config = args.recipe.config(&data, spec, DwSettings::new(DwMode::Trainable))?;
        if let Some(e) = epochs {
            config.epochs = e;
        }
        sets.push(TrainingSet { label, data, config });
    }
    let analysis = AnalysisOptions {
        k: args.k,
        autoencoder: AutoencoderOptions { steps: args.autoencoder_steps, ..AutoencoderOptions::default() },
    };
    let report = run_universality::<masterkey_train::TrainBackend>(
        &sets,
        &args.seeds,
        &analysis,
        &args.output,
        &mut Bars { bar: None },
    )?;
    output::write_results(&report, &args.output)?;
    if args.recipe.json {
        return crate::print_json(&report);
    }
    println!("{}", output::markdown(&report));
    println!("written: {}", args.output.join("results.md").display());
    Ok(())
}
