//! The small-data experiment: every DW mode (and every assignment of the
//! frozen mode) trained with the same budget and seeds on several shares of
//! the training set; results as mean and spread over seeds.
//!
//! Each run lives in its own folder and is resumed from its checkpoint, so an
//! interrupted experiment continues where it stopped and finished runs are
//! only read back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use masterkey_core::{atomic, Error, Result};
use serde::Serialize;

use crate::data::Dataset;
use crate::dw::{AssignmentKind, DwMode};
use crate::scalespace_dw::{family_means, FamilyMean, LearnedScales};
use crate::train::{train, EpochMetrics, Observer, Outcome, RunOptions, TrainConfig, CHECKPOINT_DIR, METRICS_FILE};
use crate::ModelAutodiffBackend;

/// One arm of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm {
    pub mode: DwMode,
    pub assignment: AssignmentKind,
}

impl Arm {
    pub fn label(&self) -> String {
        match self.mode {
            DwMode::Frozen | DwMode::BankInit => format!("{} ({})", self.mode, self.assignment),
            _ => self.mode.to_string(),
        }
    }
    fn folder(&self) -> String {
        match self.mode {
            DwMode::Frozen | DwMode::BankInit => format!("{}-{}", self.mode, self.assignment),
            _ => self.mode.to_string(),
        }
    }
}

/// Every arm; `trainable` first, as `from-checkpoint` fits its result.
/// `transfer-frozen` runs only where the experiment is given source checkpoints.
pub fn all_arms() -> Vec<Arm> {
    use AssignmentKind::*;
    let arm = |mode, assignment| Arm { mode, assignment };
    vec![
        arm(DwMode::Trainable, RoundRobin),
        arm(DwMode::Frozen, RoundRobin),
        arm(DwMode::Frozen, Random),
        arm(DwMode::Frozen, FitAndFreeze),
        arm(DwMode::Frozen, FromCheckpoint),
        arm(DwMode::BankInit, RoundRobin),
        arm(DwMode::RandomFrozen, RoundRobin),
        arm(DwMode::Scalespace, RoundRobin),
        arm(DwMode::TransferFrozen, RoundRobin),
    ]
}

/// A share of the training set and the budget every arm gets on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Share {
    pub fraction: f64,
    pub epochs: usize,
    /// `fit-and-freeze`: epochs trained trainable before the snap.
    pub freeze_after: usize,
    /// Only the first this many seeds of the experiment (long runs on big
    /// shares vary less and cost most); `None`: all.
    pub seeds: Option<usize>,
}

impl Share {
    /// `FRACTION[:EPOCHS[:FREEZE_AFTER[:SEEDS]]]`, the missing parts from `template`.
    pub fn parse(text: &str, template: &TrainConfig) -> Result<Share> {
        let bad = || {
            Error::Other(format!(
                "a share is FRACTION[:EPOCHS[:FREEZE_AFTER[:SEEDS]]], e.g. 0.01:20:5 or 1:2:1:2; got `{text}`"
            ))
        };
        let mut parts = text.split(':');
        let fraction = parts.next().and_then(|p| p.trim().parse().ok()).ok_or_else(bad)?;
        let mut number = |default: Option<usize>| -> Result<Option<usize>> {
            parts.next().map_or(Ok(default), |p| p.trim().parse().map(Some).map_err(|_| bad()))
        };
        let epochs = number(Some(template.epochs))?.unwrap_or(template.epochs);
        let freeze_after = number(Some(template.dw.freeze_after))?.unwrap_or(template.dw.freeze_after);
        let seeds = number(None)?;
        if parts.next().is_some() || seeds == Some(0) {
            return Err(bad());
        }
        Ok(Share { fraction, epochs, freeze_after, seeds })
    }

    fn seeds<'a>(&self, seeds: &'a [u64]) -> &'a [u64] {
        &seeds[..self.seeds.map_or(seeds.len(), |n| n.min(seeds.len()))]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub arm: String,
    pub fraction: f64,
    pub seed: u64,
    pub test_accuracy: f64,
    pub train_images: usize,
    pub train_images_per_s: f64,
    pub train_seconds: f64,
    pub initial_dw_filter_norm: f32,
    /// Test accuracy after each epoch; `None` where the epoch was not evaluated.
    pub curve: Vec<Option<f64>>,
    /// `scalespace` runs: what the sigmas learned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learned_scales: Option<LearnedScales>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmStats {
    pub arm: String,
    pub fraction: f64,
    pub runs: usize,
    pub mean: f64,
    /// Sample standard deviation over seeds (0 for one seed).
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Mean minus the trainable arm's mean at the same fraction.
    pub vs_trainable: f64,
    /// This arm minus trainable seed by seed (a seed gives every arm the same
    /// non-DW weights, subset and batches), where both ran at least two seeds.
    pub paired: Option<PairedDifference>,
    pub mean_curve: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExperimentReport {
    pub model: String,
    pub dataset: String,
    pub batch_size: usize,
    pub lr: f64,
    pub layer_scale_init: Option<f32>,
    pub eval_every: usize,
    pub seeds: Vec<u64>,
    pub shares: Vec<Share>,
    /// Wall time of this call (small when finished runs are only read back).
    pub total_seconds: f64,
    /// Training time summed over the runs (evaluation not included).
    pub training_seconds: f64,
    pub stats: Vec<ArmStats>,
    /// Per share where a `scalespace` arm ran: its learned scales per family.
    pub learned_scales: Vec<ShareScales>,
    pub runs: Vec<RunResult>,
}

/// The scales the `scalespace` arm learned at one share, per family, over
/// channels and seeds, beside those fitted to the bank's keys (where its
/// channels start).
#[derive(Debug, Clone, Serialize)]
pub struct ShareScales {
    pub fraction: f64,
    pub runs: usize,
    pub bank: String,
    pub discretisation: String,
    pub fitted_to_keys: Vec<FamilyMean>,
    pub learned: Vec<FamilyMean>,
}

fn share_scales(runs: &[RunResult], fractions: &[f64]) -> Vec<ShareScales> {
    fractions
        .iter()
        .filter_map(|&fraction| {
            let mine: Vec<&LearnedScales> =
                runs.iter().filter(|r| r.fraction == fraction).filter_map(|r| r.learned_scales.as_ref()).collect();
            let first = mine.first()?;
            let channels: Vec<_> = mine.iter().flat_map(|l| l.channels.concat()).collect();
            Some(ShareScales {
                fraction,
                runs: mine.len(),
                bank: first.bank.clone(),
                discretisation: first.discretisation.clone(),
                fitted_to_keys: first.fitted_to_keys.clone(),
                learned: family_means(&channels),
            })
        })
        .collect()
}

fn run_dir(out: &Path, fraction: f64, seed: u64, arm: &Arm) -> PathBuf {
    out.join("runs").join(format!("fraction-{fraction}")).join(format!("seed-{seed}")).join(arm.folder())
}

/// Trains (or reads back) every arm x share x seed of `template`. The
/// `transfer-frozen` arm freezes the filters of `transfer_sources` (trained
/// checkpoints), the `i`-th seed those of source `i` modulo their number.
#[allow(clippy::too_many_arguments)]
pub fn run_experiment<B: ModelAutodiffBackend>(
    template: &TrainConfig,
    data: &Dataset,
    arms: &[Arm],
    shares: &[Share],
    seeds: &[u64],
    transfer_sources: &[PathBuf],
    out: &Path,
    observer: &mut dyn Observer,
) -> Result<ExperimentReport> {
    if arms.iter().any(|a| a.mode == DwMode::TransferFrozen) && transfer_sources.is_empty() {
        return Err(Error::Other("the transfer-frozen arm needs source checkpoints (--transfer-sources)".into()));
    }
    let started = std::time::Instant::now();
    let mut runs = Vec::new();
    for share in shares {
        let fraction = share.fraction;
        for (seed_index, &seed) in share.seeds(seeds).iter().enumerate() {
            let trainable = Arm { mode: DwMode::Trainable, assignment: AssignmentKind::RoundRobin };
            for arm in arms {
                let mut config = template.clone();
                config.seed = seed;
                config.data.fraction = fraction;
                config.epochs = share.epochs;
                config.dw.freeze_after = share.freeze_after;
                config.dw.mode = arm.mode;
                config.dw.assignment = arm.assignment;
                if arm.assignment == AssignmentKind::FromCheckpoint {
                    let source = run_dir(out, fraction, seed, &trainable).join(CHECKPOINT_DIR);
                    if !source.is_dir() {
                        return Err(Error::Other(
                            "the from-checkpoint arm needs the trainable arm in the same experiment".into(),
                        ));
                    }
                    config.dw.source_checkpoint = Some(source);
                }
                if arm.mode == DwMode::TransferFrozen {
                    config.dw.source_checkpoint = Some(transfer_sources[seed_index % transfer_sources.len()].clone());
                }
                let dir = run_dir(out, fraction, seed, arm);
                observer.note(&format!("== {} | fraction {fraction} | seed {seed}", arm.label()));
                let options = RunOptions { resume: true, halt_after_steps: None, dw_snapshots: false };
                let summary = match train::<B>(&config, data, &dir, &options, observer)? {
                    Outcome::Finished(s) => s,
                    Outcome::Halted { .. } => unreachable!("experiments never halt"),
                };
                let curve = read_curve(&dir.join(METRICS_FILE))?;
                runs.push(RunResult {
                    arm: arm.label(),
                    fraction,
                    seed,
                    test_accuracy: summary.test_accuracy,
                    train_images: summary.train_images,
                    train_images_per_s: summary.train_images_per_s,
                    train_seconds: summary.train_seconds,
                    initial_dw_filter_norm: summary.initial_dw_filter_norm,
                    curve,
                    learned_scales: summary.scalespace,
                });
            }
        }
    }
    let fractions: Vec<f64> = shares.iter().map(|s| s.fraction).collect();
    let stats = summarise(&runs, arms, &fractions);
    let learned_scales = share_scales(&runs, &fractions);
    Ok(ExperimentReport {
        model: template.model.name.clone(),
        dataset: data.name.clone(),
        batch_size: template.batch_size,
        lr: template.lr,
        layer_scale_init: template.model.layer_scale_init,
        eval_every: template.eval_every,
        seeds: seeds.to_vec(),
        shares: shares.to_vec(),
        total_seconds: started.elapsed().as_secs_f64(),
        training_seconds: runs.iter().map(|r| r.train_seconds).sum(),
        stats,
        learned_scales,
        runs,
    })
}

fn read_curve(path: &Path) -> Result<Vec<Option<f64>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .map(|l| {
            let m: EpochMetrics = serde_json::from_str(l).map_err(|e| Error::invalid(path, e.to_string()))?;
            Ok(m.test_accuracy)
        })
        .collect()
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_and_sample_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    (mean, (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
}

/// The mean of per-seed differences with its 95% Student t interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedDifference {
    pub pairs: usize,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// Two-sided 95% quantiles of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// `None` below two pairs (no spread to estimate).
pub fn paired_difference(diffs: &[f64]) -> Option<PairedDifference> {
    let n = diffs.len();
    if n < 2 {
        return None;
    }
    let (mean, sd) = mean_and_sample_std(diffs);
    let t = T_975.get(n - 2).copied().unwrap_or(1.96);
    let half = t * sd / (n as f64).sqrt();
    Some(PairedDifference { pairs: n, mean, low: mean - half, high: mean + half })
}

fn summarise(runs: &[RunResult], arms: &[Arm], fractions: &[f64]) -> Vec<ArmStats> {
    let mut stats = Vec::new();
    for &fraction in fractions {
        let mut trainable_mean = None;
        for arm in arms {
            let mine: Vec<&RunResult> =
                runs.iter().filter(|r| r.fraction == fraction && r.arm == arm.label()).collect();
            let acc: Vec<f64> = mine.iter().map(|r| r.test_accuracy).collect();
            let n = acc.len() as f64;
            let (mean, std) = mean_and_sample_std(&acc);
            if arm.mode == DwMode::Trainable {
                trainable_mean = Some(mean);
            }
            let trainable_at =
                |seed| runs.iter().find(|r| r.fraction == fraction && r.seed == seed && r.arm == "trainable");
            let diffs: Vec<f64> =
                mine.iter().filter_map(|r| trainable_at(r.seed).map(|t| r.test_accuracy - t.test_accuracy)).collect();
            let paired = if arm.mode == DwMode::Trainable { None } else { paired_difference(&diffs) };
            let epochs = mine.iter().map(|r| r.curve.len()).min().unwrap_or(0);
            let mean_curve =
                (0..epochs).map(|e| mine.iter().map(|r| r.curve[e]).sum::<Option<f64>>().map(|sum| sum / n)).collect();
            stats.push(ArmStats {
                arm: arm.label(),
                fraction,
                runs: acc.len(),
                mean,
                std,
                min: acc.iter().copied().fold(f64::INFINITY, f64::min),
                max: acc.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                vs_trainable: trainable_mean.map_or(f64::NAN, |t| mean - t),
                paired,
                mean_curve,
            });
        }
    }
    stats
}

/// The results table in Markdown: one row per arm, one column per fraction.
pub fn markdown(report: &ExperimentReport) -> String {
    let mut md = String::new();
    let budget: Vec<String> = report
        .shares
        .iter()
        .map(|s| {
            let seeds = s.seeds(&report.seeds);
            format!(
                "{}%: {} epochs (fit-and-freeze snaps after {}), seeds {seeds:?}",
                s.fraction * 100.0,
                s.epochs,
                s.freeze_after
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "Test accuracy (%) on {}, {}, batch {}, peak lr {}, layer-scale init {}; budget per share of the training set: {}; \
         mean ± sample std over seeds {:?} (in brackets: the mean of the per-seed differences to trainable, with its 95% t interval where there are two seeds or more). {:.0} s of training summed over the runs (evaluation \
         not included); this call {:.0} s.\n",
        report.dataset,
        report.model,
        report.batch_size,
        report.lr,
        report.layer_scale_init.map_or("none".into(), |v| v.to_string()),
        budget.join(", "),
        report.seeds,
        report.training_seconds,
        report.total_seconds
    );
    let mut by_arm: BTreeMap<usize, (String, Vec<&ArmStats>)> = BTreeMap::new();
    let order: Vec<String> = report.stats.iter().map(|s| s.arm.clone()).fold(Vec::new(), |mut v, a| {
        if !v.contains(&a) {
            v.push(a);
        }
        v
    });
    for s in &report.stats {
        let i = order.iter().position(|a| *a == s.arm).unwrap();
        by_arm.entry(i).or_insert_with(|| (s.arm.clone(), Vec::new())).1.push(s);
    }
    let _ = write!(md, "| DW filters |");
    for share in &report.shares {
        let _ = write!(md, " {}% of train |", share.fraction * 100.0);
    }
    let _ = write!(md, "\n|---|");
    for _ in &report.shares {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for (arm, cells) in by_arm.values() {
        let _ = write!(md, "| {arm} |");
        for s in cells {
            let diff = match s.paired {
                Some(p) => format!(" ({:+.2}, 95% CI {:+.2} to {:+.2})", 100.0 * p.mean, 100.0 * p.low, 100.0 * p.high),
                None if s.vs_trainable.is_nan() || s.arm == "trainable" => String::new(),
                None => format!(" ({:+.2})", 100.0 * s.vs_trainable),
            };
            // One run has no spread to show.
            let spread = if s.runs > 1 { format!(" ± {:.2}", 100.0 * s.std) } else { " (1 seed)".into() };
            let _ = write!(md, " {:.2}{spread}{diff} |", 100.0 * s.mean);
        }
        md.push('\n');
    }
    learned_scales_markdown(report, &mut md);
    md
}

/// Per family: the sigmas fitted to the bank's keys (where the scale-space
/// channels start) and the mean learned at each share, over channels and seeds.
fn learned_scales_markdown(report: &ExperimentReport, md: &mut String) {
    let Some(first) = report.learned_scales.first() else { return };
    let _ = write!(
        md,
        "\nScale-space arm: sigma_x / sigma_y (alpha for sharpen) per family, fitted to the keys of {} ({} \
         discretisation) and learned (mean over channels and seeds).\n\n| family | fitted |",
        first.bank, first.discretisation
    );
    for share in &report.learned_scales {
        let _ = write!(md, " learned, {}% of train |", share.fraction * 100.0);
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &report.learned_scales {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let cell = |m: &FamilyMean| {
        let alpha = m.alpha.map_or(String::new(), |a| format!(" ({a:.3})"));
        format!("{:.3} / {:.3}{alpha}", m.sigma_x, m.sigma_y)
    };
    for fitted in &first.fitted_to_keys {
        let _ = write!(md, "| {} | {} |", fitted.family, cell(fitted));
        for share in &report.learned_scales {
            let text = share.learned.iter().find(|m| m.family == fitted.family).map_or("-".into(), cell);
            let _ = write!(md, " {text} |");
        }
        md.push('\n');
    }
}

/// Learning curves (mean test accuracy per epoch) of every arm at one
/// fraction, as an SVG line chart.
pub fn curves_svg(report: &ExperimentReport, fraction: f64) -> String {
    const COLOURS: [&str; 10] =
        ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
    // The legend gets its own column right of the plot, so it never covers a curve.
    let (w, h, margin, legend) = (820.0, 400.0, 50.0, 220.0);
    let right = w - legend - 10.0;
    let curves: Vec<&ArmStats> = report.stats.iter().filter(|s| s.fraction == fraction).collect();
    let epochs = curves.iter().map(|s| s.mean_curve.len()).max().unwrap_or(1).max(2);
    let values = || curves.iter().flat_map(|s| s.mean_curve.iter().flatten().copied());
    let lo = values().fold(1.0, f64::min).min(0.9);
    let hi = (values().fold(0.0, f64::max) + 0.05).min(1.0).max(lo + 0.05);
    let x = |e: usize| margin + (right - margin) * e as f64 / (epochs - 1) as f64;
    let y = |a: f64| h - margin - (h - 2.0 * margin) * (a - lo) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{margin}\" y=\"20\">{} on {}, {}% of train: mean test accuracy per epoch</text>\n\
         <line x1=\"{margin}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"5\" y=\"{}\">{:.0}%</text><text x=\"5\" y=\"{}\">{:.0}%</text>\n\
         <text x=\"{margin}\" y=\"{}\">epoch 1</text><text x=\"{}\" y=\"{}\">epoch {epochs}</text>\n",
        report.model,
        report.dataset,
        fraction * 100.0,
        h - margin,
        right,
        h - margin,
        h - margin,
        y(lo),
        lo * 100.0,
        y(hi) + 4.0,
        hi * 100.0,
        h - margin + 20.0,
        right - 50.0,
        h - margin + 20.0,
    );
    for (i, s) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Epochs not evaluated (`--eval-every`) have no point; the line joins the evaluated ones.
        let points: Vec<(f64, f64)> =
            s.mean_curve.iter().enumerate().filter_map(|(e, a)| a.map(|a| (x(e), y(a)))).collect();
        let text: Vec<String> = points.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            text.join(" ")
        );
        for (px, py) in points {
            let _ = writeln!(svg, "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{colour}\"/>");
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            w - legend,
            margin + 15.0 * i as f64,
            s.arm
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes `results.md`, `results.json` and one `curves-<fraction>.svg` per fraction.
pub fn write_report(report: &ExperimentReport, out: &Path) -> Result<()> {
    atomic::write_file(&out.join("results.md"), markdown(report).as_bytes())?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| Error::Other(e.to_string()))?;
    atomic::write_file(&out.join("results.json"), &json)?;
    for share in &report.shares {
        let f = share.fraction;
        atomic::write_file(&out.join(format!("curves-{f}.svg")), curves_svg(report, f).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tiny_config, tiny_data, Ad};
    use crate::train::{Quiet, RunOptions};

    #[test]
    fn paired_differences_get_a_student_t_interval() {
        let p = paired_difference(&[1.0, 2.0, 3.0]).unwrap();
        // Mean 2, sample sd 1, t(0.975, 2 df) = 4.303.
        assert_eq!((p.pairs, p.mean), (3, 2.0));
        assert!((p.high - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-9 && (p.low + p.high - 4.0).abs() < 1e-9);
        assert_eq!(paired_difference(&[0.5]), None);
    }

    #[test]
    fn an_experiment_trains_each_arm_reads_finished_runs_back_and_reports() {
        let data = tiny_data(90);
        let template =
            TrainConfig { epochs: 2, eval_every: 2, ..tiny_config(DwMode::Trainable, AssignmentKind::RoundRobin) };
        let arms = [
            Arm { mode: DwMode::Trainable, assignment: AssignmentKind::RoundRobin },
            Arm { mode: DwMode::Frozen, assignment: AssignmentKind::FromCheckpoint },
            Arm { mode: DwMode::Scalespace, assignment: AssignmentKind::RoundRobin },
            Arm { mode: DwMode::TransferFrozen, assignment: AssignmentKind::RoundRobin },
        ];
        let shares = [Share::parse("0.5:3", &template).unwrap(), Share::parse("1:2:1:1", &template).unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let options = RunOptions { resume: false, halt_after_steps: None, dw_snapshots: false };
        train::<Ad>(&TrainConfig { seed: 11, ..template.clone() }, &data, &source, &options, &mut Quiet).unwrap();
        let sources = [source.join(CHECKPOINT_DIR)];
        let out = dir.path().join("experiment");
        let run = || run_experiment::<Ad>(&template, &data, &arms, &shares, &[1, 2], &sources, &out, &mut Quiet);
        assert!(run_experiment::<Ad>(&template, &data, &arms, &shares, &[1], &[], &out, &mut Quiet)
            .unwrap_err()
            .to_string()
            .contains("--transfer-sources"));
        let report = run().unwrap();
        // Two seeds at 50%, the first one only at 100%.
        assert_eq!(report.runs.len(), 12);
        for run in &report.runs {
            // eval_every 2: the second epoch and the last are evaluated.
            let expected = if run.fraction == 0.5 { vec![false, true, true] } else { vec![false, true] };
            assert_eq!(run.curve.iter().map(Option::is_some).collect::<Vec<_>>(), expected);
            assert_eq!(run.curve.last().unwrap().unwrap(), run.test_accuracy);
        }
        assert_eq!(report.runs.iter().filter(|r| r.fraction == 0.5).map(|r| r.train_images).max(), Some(45));
        let frozen = report.stats.iter().find(|s| s.arm == "frozen (from-checkpoint)" && s.fraction == 1.0).unwrap();
        assert_eq!(frozen.runs, 1);
        let trainable = report.stats.iter().find(|s| s.arm == "trainable" && s.fraction == 1.0).unwrap();
        assert!((frozen.vs_trainable - (frozen.mean - trainable.mean)).abs() < 1e-12);
        assert_eq!(frozen.paired, None, "one seed: no interval");
        let half = report.stats.iter().find(|s| s.arm == "frozen (from-checkpoint)" && s.fraction == 0.5).unwrap();
        let paired = half.paired.expect("two seeds at 50%");
        let at = |arm: &str, seed| {
            report.runs.iter().find(|r| r.arm == arm && r.seed == seed && r.fraction == 0.5).unwrap().test_accuracy
        };
        let diffs = [1, 2].map(|seed| at("frozen (from-checkpoint)", seed) - at("trainable", seed));
        assert_eq!(paired.pairs, 2);
        assert!((paired.mean - (diffs[0] + diffs[1]) / 2.0).abs() < 1e-12);
        assert!(paired.low <= paired.mean && paired.mean <= paired.high);

        // Only the scale-space runs report learned scales.
        for run in &report.runs {
            assert_eq!(run.learned_scales.is_some(), run.arm == "scalespace", "{}", run.arm);
        }

        // A second call finds every run finished and only reads it back.
        let again = run().unwrap();
        assert_eq!(
            again.runs.iter().map(|r| r.test_accuracy).collect::<Vec<_>>(),
            report.runs.iter().map(|r| r.test_accuracy).collect::<Vec<_>>()
        );
        assert!(again.total_seconds < report.total_seconds);

        write_report(&report, &out).unwrap();
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        assert!(md.contains("| DW filters | 50% of train | 100% of train |"), "{md}");
        assert!(
            md.contains("50%: 3 epochs (fit-and-freeze snaps after 1), seeds [1, 2], 100%: 2 epochs (fit-and-freeze snaps after 1), seeds [1]"),
            "{md}"
        );
        assert!(md.lines().any(|l| l.starts_with("| frozen (from-checkpoint) |") && l.contains(" ± ")), "{md}");
        assert!(md.contains("95% CI"), "{md}");
        assert!(md.lines().any(|l| l.starts_with("| transfer-frozen |")), "{md}");
        assert!(md.contains("| family | fitted | learned, 50% of train | learned, 100% of train |"), "{md}");
        let svg = std::fs::read_to_string(out.join("curves-1.svg")).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 4, "one evaluated epoch per arm at 100%");
        for bad in ["0.5:x", "0.5:1:1:0", "0.5:1:1:1:1"] {
            assert!(Share::parse(bad, &template).is_err(), "{bad}");
        }
    }
}
