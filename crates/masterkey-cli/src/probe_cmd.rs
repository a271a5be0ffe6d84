use std::path::PathBuf;

use anyhow::Result;
use masterkey_core::{atomic, Bank};
use masterkey_search::KMeansOptions;
use masterkey_surgery::plot::{agreement_vs_k_svg, BankMark};
use masterkey_surgery::probe::{LayerSensitivity, DEFAULT_SEED, DEFAULT_VIEWS};
use masterkey_surgery::replace::overall;
use masterkey_surgery::sweep::{sweep, BankResult, SweepOptions, SweepPoint};
use masterkey_surgery::{Agreement, Cpu, ImageSet, Probe, StateDict};
use serde::Serialize;

use crate::replace_cmd::resolve_model;
use crate::{print_json, ui};

#[derive(clap::Args)]
pub struct Args {
    /// EfficientNet-Lite0 weights (the network this command runs): a PyTorch
    /// checkpoint or safetensors file with the names of the
    /// efficientnet_lite_pytorch port, or the id efficientnet-lite0.
    model: String,
    /// Bank: a built-in name (published8) or a bank file.
    #[arg(long, default_value = "published8")]
    bank: String,
    /// Folder of PNG / JPEG images (resize 256, centre crop 224). Default:
    /// random crops and mirror images of the photos that scikit-image and
    /// scikit-learn ship.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Number of random views of the shipped photos (without --images).
    #[arg(long, default_value_t = DEFAULT_VIEWS, conflicts_with = "images")]
    views: usize,
    /// Seed of the random views (without --images).
    #[arg(long, default_value_t = DEFAULT_SEED, conflicts_with = "images")]
    seed: u64,
    /// Random banks (same number and size of keys, seeds 1..=N) probed as controls.
    #[arg(long, default_value_t = 3)]
    random: u64,
    /// Also replace one layer at a time and rank the layers by sensitivity.
    #[arg(long)]
    per_layer: bool,
    /// Also probe banks of K = 1..=--max-k keys per kernel size found by
    /// k-means in the model's own depthwise filters, and random banks of K
    /// keys (the --random seeds), and draw agreement versus K into this SVG.
    #[arg(long, value_name = "SVG")]
    sweep: Option<PathBuf>,
    /// Largest K of --sweep.
    #[arg(long, default_value_t = 16, requires = "sweep")]
    max_k: usize,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

/// One line of the main table: a way of setting the depthwise filters.
#[derive(Serialize)]
struct Row {
    weights: String,
    /// `identity`, `bank` or `random`.
    kind: &'static str,
    keys: Option<usize>,
    seed: Option<u64>,
    /// Mean best |cos| of the replaced filters (1 for the identity).
    mean_abs_cos: f64,
    #[serde(flatten)]
    agreement: Agreement,
}

#[derive(Serialize)]
struct ProbeOutput<'a> {
    model: String,
    images: String,
    bank: &'a str,
    rows: &'a [Row],
    /// Most sensitive layer first (lowest top-1 agreement, then highest KL).
    per_layer: Option<&'a [LayerSensitivity]>,
    sweep: Option<SweepOutput<'a>>,
}

#[derive(Serialize)]
struct SweepOutput<'a> {
    plot: String,
    kmeans: String,
    random_seeds: &'a [u64],
    points: &'a [SweepPoint],
}

pub fn run(args: Args) -> Result<()> {
    let bank = Bank::resolve(&args.bank)?;
    let model = resolve_model(&args.model)?;
    let image_set = match &args.images {
        Some(dir) => ImageSet::Folder(dir.clone()),
        None => ImageSet::Shipped { views: args.views, seed: args.seed },
    };
    let inputs = image_set.inputs()?;
    let controls: Vec<Bank> = (1..=args.random).map(|seed| Bank::random(bank.len(), bank.kernel, seed)).collect();
    let probe = Probe::<Cpu>::new(StateDict::read(&model)?, &inputs, &Default::default())?;
    let layer_runs = if args.per_layer { probe.original().depthwise_layers()?.len() } else { 0 };
    let seeds: Vec<u64> = (1..=args.random).collect();
    let sweep_runs = if args.sweep.is_some() { args.max_k * (1 + seeds.len()) } else { 0 };
    let bar = ui::progress((2 + controls.len() + layer_runs + sweep_runs) as u64, "probing (one pass per row)");

    let mut rows = vec![Row {
        weights: "identity (no replacement)".into(),
        kind: "identity",
        keys: None,
        seed: None,
        mean_abs_cos: 1.0,
        agreement: probe.agreement(probe.original())?,
    }];
    bar.inc(1);
    let runs =
        std::iter::once(("bank", &bank, None)).chain(controls.iter().zip(1..).map(|(c, s)| ("random", c, Some(s))));
    for (kind, b, seed) in runs {
        bar.set_message(format!("probing {}", b.name));
        let (agreement, fits) = probe.bank(b)?;
        rows.push(Row {
            weights: b.name.clone(),
            kind,
            keys: Some(b.len()),
            seed,
            mean_abs_cos: overall(&fits).0,
            agreement,
        });
        bar.inc(1);
    }
    let per_layer = if args.per_layer {
        bar.set_message("one layer at a time");
        let mut layers = probe.per_layer(&bank, |_| bar.inc(1))?;
        layers.sort_by(|a, b| {
            a.agreement.top1.total_cmp(&b.agreement.top1).then(b.agreement.mean_kl.total_cmp(&a.agreement.mean_kl))
        });
        Some(layers)
    } else {
        None
    };
    let sweep_options = SweepOptions {
        max_k: args.max_k,
        kmeans: KMeansOptions::default(),
        random_seeds: seeds.clone(),
        random_kernel: bank.kernel,
    };
    let points = match &args.sweep {
        Some(svg) => {
            bar.set_message("sweeping K");
            let points = sweep(&probe, &sweep_options, |_| bar.inc(1 + seeds.len() as u64))?;
            let marks = [BankMark {
                name: bank.name.clone(),
                keys: bank.len(),
                top1: rows[1].agreement.top1,
                top5_overlap: rows[1].agreement.top5_overlap,
            }];
            let title = format!("EfficientNet-Lite0 with its depthwise filters replaced ({} images)", probe.images());
            atomic::write_file(svg, agreement_vs_k_svg(&title, &points, &marks).as_bytes())?;
            Some(points)
        }
        None => None,
    };
    bar.finish_and_clear();

    if args.json {
        return print_json(&ProbeOutput {
            model: model.display().to_string(),
            images: image_set.describe(),
            bank: &bank.name,
            rows: &rows,
            per_layer: per_layer.as_deref(),
            sweep: points.as_deref().map(|points| SweepOutput {
                plot: args.sweep.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                kmeans: sweep_options.kmeans.describe(),
                random_seeds: &seeds,
                points,
            }),
        });
    }
    println!("EfficientNet-Lite0 from {} on {}.", model.display(), image_set.describe());
    println!(
        "Every depthwise filter replaced by a*key+b of its best key; scored against the original network \
         (no labels): top-1 agreement, top-5 overlap, mean KL(original || replaced) in nats.\n"
    );
    let mut t = ui::table(&["depthwise filters", "keys", "mean |cos|", "top-1 agreement", "top-5 overlap", "mean KL"]);
    for row in &rows {
        t.add_row(vec![
            comfy_table::Cell::new(&row.weights),
            ui::num(row.keys.map_or("-".into(), |k| k.to_string())),
            ui::num(format!("{:.3}", row.mean_abs_cos)),
            ui::pct(row.agreement.top1),
            ui::pct(row.agreement.top5_overlap),
            ui::num(format!("{:.3}", row.agreement.mean_kl)),
        ]);
    }
    println!("{t}");
    if let Some(layers) = &per_layer {
        println!("\nOne layer replaced at a time by `{}`, most sensitive first:", bank.name);
        let mut t = ui::table(&["rank", "layer", "kernel", "channels", "mean |cos|", "top-1", "top-5", "mean KL"]);
        for (rank, s) in layers.iter().enumerate() {
            t.add_row(vec![
                ui::num(rank + 1),
                comfy_table::Cell::new(&s.fit.layer),
                comfy_table::Cell::new(&s.fit.kernel),
                ui::num(s.fit.channels),
                ui::num(format!("{:.3}", s.fit.mean_abs_cos)),
                ui::pct(s.agreement.top1),
                ui::pct(s.agreement.top5_overlap),
                ui::num(format!("{:.3}", s.agreement.mean_kl)),
            ]);
        }
        println!("{t}");
    }
    if let (Some(points), Some(svg)) = (&points, &args.sweep) {
        print_sweep(points, &sweep_options);
        println!("agreement versus K: {}", svg.display());
    }
    Ok(())
}

fn print_sweep(points: &[SweepPoint], options: &SweepOptions) {
    println!(
        "\nBanks of K keys per kernel size found by {} in the model's own filters, \
         against random banks of K keys (mean of seeds {:?}):",
        options.kmeans.describe(),
        options.random_seeds
    );
    let mut t = ui::table(&[
        "K",
        "k-means |cos|",
        "k-means top-1",
        "k-means top-5",
        "k-means KL",
        "random |cos|",
        "random top-1",
        "random top-5",
        "random KL",
    ]);
    for p in points {
        let random_mean =
            |f: fn(&BankResult) -> f64| p.random.iter().map(f).sum::<f64>() / p.random.len().max(1) as f64;
        t.add_row(vec![
            ui::num(p.k),
            ui::num(format!("{:.3}", p.found.mean_abs_cos)),
            ui::pct(p.found.agreement.top1),
            ui::pct(p.found.agreement.top5_overlap),
            ui::num(format!("{:.3}", p.found.agreement.mean_kl)),
            ui::num(format!("{:.3}", random_mean(|r| r.mean_abs_cos))),
            ui::pct(p.random_top1()),
            ui::pct(random_mean(|r| r.agreement.top5_overlap)),
            ui::num(format!("{:.3}", random_mean(|r| r.agreement.mean_kl))),
        ]);
    }
    println!("{t}");
}
