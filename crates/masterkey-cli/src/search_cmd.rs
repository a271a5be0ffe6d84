use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use masterkey_core::{FitOptions, KernelSize};
use masterkey_search::filters::{pick_group, NormalisedFilters};
use masterkey_search::{
    search, AutoencoderOptions, FitObjective, KChoice, KMeansOptions, Method, Scorer, SearchOptions, SearchOutcome,
    SearchSummary,
};
use masterkey_surgery::{Cpu, ImageSet, Probe, ProbeScorer, StateDict};
use serde::Serialize;

use crate::{print_json, ui, ReadOptions};

#[derive(Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    /// Sign-invariant spherical k-means (largest |cos|), k-means++ seeding.
    Kmeans,
    /// The paper's route: 1-D latent autoencoder, candidates along the latent, greedy elimination.
    Autoencoder,
    /// Eigenfilters: leading eigenvectors of the filters' second-moment matrix.
    Pca,
}

#[derive(clap::Args)]
pub struct Args {
    /// Saved filter sets, model files, or default model ids (fetched; see `masterkey fetch --help`).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Number of keys, or `auto`: the elbow of the coverage-vs-K curve, found by
    /// kneedle on the log residual -ln(1 - mean |cos|) — K and that residual scaled
    /// to [0, 1], the K farthest above the chord from the first point to the last.
    #[arg(short = 'k', long = "keys", value_name = "K", default_value = "auto", value_parser = parse_k)]
    keys: KChoice,
    #[arg(long, value_enum, default_value = "kmeans")]
    method: MethodArg,
    /// Kernel size to search, e.g. 7x7 (default: the size with the most non-dead filters).
    #[arg(long)]
    kernel: Option<KernelSize>,
    /// Seed of k-means++ and of the autoencoder [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    // The options of one method or score are `Option`s so that giving them
    // to another is refused rather than ignored; their defaults are applied
    // in `run`.
    /// k-means: independent seedings, the best kept [default: 3].
    #[arg(long)]
    restarts: Option<usize>,
    /// k-means: most Lloyd iterations per run [default: 100].
    #[arg(long)]
    max_iter: Option<usize>,
    /// The coverage-vs-K curve covers K = 1..=max-k (and K, if larger).
    #[arg(long, default_value_t = 16)]
    max_k: usize,
    /// autoencoder: candidates decoded uniformly along the latent [default: 50].
    #[arg(long)]
    candidates: Option<usize>,
    /// autoencoder: training steps (mini-batches) [default: 3000].
    #[arg(long)]
    steps: Option<usize>,
    /// autoencoder: rounds of local resampling of the latents around the survivors (0: none)
    /// [default: 3].
    #[arg(long)]
    refine_rounds: Option<usize>,
    /// autoencoder: what elimination keeps high: `mean` (mean |cos| of the best fits),
    /// `coverage:T` (share of filters with |cos| >= T), or `probe:MODEL` (EfficientNet-Lite0
    /// weights or the id efficientnet-lite0: minus the mean KL divergence of the network's outputs
    /// from the original's once its depthwise layers of the searched size are fitted to the keys;
    /// about 0.04 s per probe image per call, so pair it with fewer --candidates, a smaller
    /// --max-k and --refine-rounds 0) [default: mean].
    #[arg(long, value_parser = parse_score)]
    score: Option<ScoreArg>,
    /// `--score probe:`: random views of the shipped photos per call [default: 16].
    #[arg(long)]
    probe_views: Option<usize>,
    /// `--score probe:`: seed of those views (`masterkey probe` uses seed 0 by default, so it
    /// evaluates the bank on other views than the ones that chose it) [default: 1].
    #[arg(long)]
    probe_seed: Option<u64>,
    /// |cos| thresholds for coverage.
    #[arg(long, value_delimiter = ',', default_values_t = FitOptions::default().thresholds)]
    thresholds: Vec<f32>,
    /// Bank file to write (safetensors); the curve goes beside it as `<bank>.curve.json`.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    read: ReadOptions,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_k(s: &str) -> Result<KChoice, String> {
    match s {
        "auto" => Ok(KChoice::Elbow),
        _ => match s.parse::<usize>() {
            Ok(k) if k > 0 => Ok(KChoice::Fixed(k)),
            _ => Err(format!("expected a positive number of keys or `auto`, found `{s}`")),
        },
    }
}

/// What the autoencoder's elimination keeps high.
#[derive(Clone)]
enum ScoreArg {
    Fit(FitObjective),
    /// A network's behaviour (see `masterkey_surgery::ProbeScorer`); the model as given.
    Probe(String),
}

fn parse_score(s: &str) -> Result<ScoreArg, String> {
    if s == "mean" {
        return Ok(ScoreArg::Fit(FitObjective::MeanAbsCos));
    }
    if let Some(model) = s.strip_prefix("probe:").filter(|m| !m.is_empty()) {
        return Ok(ScoreArg::Probe(model.to_string()));
    }
    match s.strip_prefix("coverage:").map(str::parse::<f32>) {
        Some(Ok(t)) if (0.0..=1.0).contains(&t) => Ok(ScoreArg::Fit(FitObjective::Coverage(t))),
        _ => Err(format!("expected `mean`, `coverage:T` with T in [0, 1], or `probe:MODEL`, found `{s}`")),
    }
}

/// The probe scorer of `--score probe:MODEL` for banks of `kernel` keys.
fn probe_scorer(model: &str, kernel: KernelSize, views: usize, seed: u64) -> Result<ProbeScorer<Cpu>> {
    let model = crate::replace_cmd::resolve_model(model)?;
    let images = ImageSet::Shipped { views, seed };
    let probe = Probe::<Cpu>::new(StateDict::read(&model)?, &images.inputs()?, &Default::default())?;
    Ok(ProbeScorer::new(probe, kernel, format!("{} ({})", images.describe(), model.display()))?)
}

#[derive(Serialize)]
struct SearchOutput<'a> {
    #[serde(flatten)]
    summary: SearchSummary<'a>,
    bank_file: Option<String>,
    curve_file: Option<String>,
}

/// `<bank>.curve.json` beside the bank file.
fn curve_path(bank: &Path) -> PathBuf {
    bank.with_extension("curve.json")
}

/// Writes the bank, its curve (`<bank>.curve.json`) and its keys as a PNG (`<bank>.png`).
pub fn save_outcome(outcome: &SearchOutcome, bank_file: &Path) -> Result<()> {
    outcome.bank.save(bank_file)?;
    masterkey_core::atomic::write_file(&curve_path(bank_file), &serde_json::to_vec_pretty(&outcome.curve)?)?;
    crate::pictures::bank_png(&outcome.bank, &bank_file.with_extension("png"))
}

const DEFAULT_SEED: u64 = 1;
const DEFAULT_PROBE_VIEWS: usize = 16;
const DEFAULT_PROBE_SEED: u64 = 1;

/// Refuses the options in `given` that were given, unless `applies`.
fn refuse_unless(applies: bool, context: &str, given: &[(&str, bool)]) -> Result<()> {
    match given.iter().find(|(_, was_given)| *was_given) {
        Some((option, _)) if !applies => bail!("{option} applies to {context} only"),
        _ => Ok(()),
    }
}

pub fn run(args: Args) -> Result<()> {
    // Before any model is read: refusing an option costs nothing.
    let is_kmeans = matches!(args.method, MethodArg::Kmeans);
    let is_autoencoder = matches!(args.method, MethodArg::Autoencoder);
    let is_probe = matches!(args.score, Some(ScoreArg::Probe(_)));
    refuse_unless(
        is_kmeans,
        "--method kmeans",
        &[("--restarts", args.restarts.is_some()), ("--max-iter", args.max_iter.is_some())],
    )?;
    refuse_unless(
        is_autoencoder,
        "--method autoencoder",
        &[
            ("--candidates", args.candidates.is_some()),
            ("--steps", args.steps.is_some()),
            ("--refine-rounds", args.refine_rounds.is_some()),
            ("--score", args.score.is_some()),
        ],
    )?;
    refuse_unless(
        is_probe,
        "--score probe:MODEL",
        &[("--probe-views", args.probe_views.is_some()), ("--probe-seed", args.probe_seed.is_some())],
    )?;
    if matches!(args.method, MethodArg::Pca) && args.seed.is_some() {
        bail!("--seed applies to --method kmeans and autoencoder only (PCA draws nothing)");
    }
    let (set, _) = crate::extract::read_models(&args.inputs, args.read.dead_tol)?;
    let group = pick_group(&set, args.kernel)?;
    let filters = NormalisedFilters::from_group(group);
    if filters.is_empty() {
        bail!("all {} filters of kernel {} are dead; nothing to search", group.len(), group.kernel);
    }
    let score = args.score.clone().unwrap_or(ScoreArg::Fit(AutoencoderOptions::default().objective));
    let method = match args.method {
        MethodArg::Kmeans => {
            let defaults = KMeansOptions::default();
            Method::KMeans(KMeansOptions {
                restarts: args.restarts.unwrap_or(defaults.restarts),
                max_iter: args.max_iter.unwrap_or(defaults.max_iter),
                seed: args.seed.unwrap_or(DEFAULT_SEED),
                ..defaults
            })
        }
        MethodArg::Autoencoder => {
            let defaults = AutoencoderOptions::default();
            Method::Autoencoder(AutoencoderOptions {
                candidates: args.candidates.unwrap_or(defaults.candidates),
                steps: args.steps.unwrap_or(defaults.steps),
                refine_rounds: args.refine_rounds.unwrap_or(defaults.refine_rounds),
                objective: match score {
                    ScoreArg::Fit(objective) => objective,
                    ScoreArg::Probe(_) => defaults.objective,
                },
                seed: args.seed.unwrap_or(DEFAULT_SEED),
                ..defaults
            })
        }
        MethodArg::Pca => Method::Pca,
    };
    let options = SearchOptions { method, k: args.keys, max_k: args.max_k, thresholds: args.thresholds.clone() };
    let set_label = args.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");

    let probe = match &score {
        ScoreArg::Probe(model) => Some(probe_scorer(
            model,
            filters.kernel,
            args.probe_views.unwrap_or(DEFAULT_PROBE_VIEWS),
            args.probe_seed.unwrap_or(DEFAULT_PROBE_SEED),
        )?),
        ScoreArg::Fit(_) => None,
    };

    let bar = ui::progress(0, "searching");
    let outcome =
        search(&filters, &set_label, &options, probe.as_ref().map(|p| p as &dyn Scorer), &|stage, done, total| {
            bar.set_message(stage.to_string());
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        });
    bar.finish_and_clear();
    if let Some(failure) = probe.as_ref().and_then(ProbeScorer::failure) {
        bail!("the probe scorer failed, so the search's choices are void: {failure}");
    }
    let outcome = outcome?;

    let curve_file = args.output.as_deref().map(curve_path);
    if let Some(bank_file) = &args.output {
        save_outcome(&outcome, bank_file)?;
    }
    let bank = &outcome.bank;
    if args.json {
        return print_json(&SearchOutput {
            summary: SearchSummary::new(
                args.inputs.iter().map(|p| p.display().to_string()).collect(),
                &options.method,
                &filters,
                &outcome,
            ),
            bank_file: args.output.as_ref().map(|p| p.display().to_string()),
            curve_file: curve_file.as_ref().map(|p| p.display().to_string()),
        });
    }

    println!("Bank `{}`: {} keys ({}), {}.", bank.name, bank.len(), outcome.k_rule, bank.source);
    let sizes: Vec<String> = set.kernel_counts().iter().map(|(k, n)| format!("{k}: {n}")).collect();
    println!("Filters by kernel size: {}; searched {}.\n", sizes.join(", "), filters.kernel);
    let mut t = ui::table(&["key", "filters", "share", "mean |cos|"]);
    for u in &outcome.usage {
        t.add_row(vec![
            comfy_table::Cell::new(&u.label),
            ui::num(u.filters),
            ui::pct(u.share),
            ui::num(format!("{:.3}", u.mean_abs_cos)),
        ]);
    }
    println!("Key usage (filters whose best key it is):\n{t}");

    let curve = &outcome.curve;
    let mut header = vec!["K".to_string(), "mean |cos|".into()];
    header.extend(curve.thresholds.iter().map(|t| format!("|cos|>={t}")));
    header.push(String::new());
    let mut t = ui::table(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for p in &curve.points {
        let mut row = vec![ui::num(p.k), ui::num(format!("{:.4}", p.mean_abs_cos))];
        row.extend(p.coverage.values().map(|&c| ui::pct(c)));
        let mut marks = Vec::new();
        if p.k == curve.elbow_k {
            marks.push("elbow");
        }
        if p.k == bank.len() {
            marks.push("chosen");
        }
        row.push(comfy_table::Cell::new(marks.join(", ")));
        t.add_row(row);
    }
    println!("Coverage versus K (share of the {} non-dead filters whose best key reaches |cos|):\n{t}", curve.filters);
    println!("Elbow rule: {}.", curve.elbow_rule);
    if let (Some(bank_file), Some(curve_file)) = (&args.output, &curve_file) {
        println!(
            "bank written to {} (curve: {}, keys drawn: {})",
            bank_file.display(),
            curve_file.display(),
            bank_file.with_extension("png").display()
        );
    }
    Ok(())
}
