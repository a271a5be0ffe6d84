//! The experiment's results folder: `results.md`, `results.json`, the found
//! banks next to published8 (`banks-<data set>.png`) and the per-epoch
//! figures (`matched-per-epoch.svg`, `published8-per-epoch.svg`).

use std::fmt::Write as _;
use std::path::Path;

use masterkey_core::{atomic, Bank, Error, KernelSize, Result};
use masterkey_render::FilterGrid;
use masterkey_report::charts::{line_chart, Axes, Series, SeriesLabelPosition};

use crate::analysis::{Coverage, FoundBank, REDISCOVERED};
use crate::{PooledStats, UniversalityReport, SETTLED, SETTLE_GAP};

fn pair(c: &Coverage) -> String {
    format!("{:.3} / {:.1}%", c.mean_abs_cos, 100.0 * c.coverage)
}

fn found_cells(bank: Option<&FoundBank>) -> [String; 2] {
    match bank {
        Some(b) => [
            format!("{:.3}", b.mean_matched),
            if b.rediscovered.is_empty() { "none".into() } else { b.rediscovered.join(", ") },
        ],
        None => ["-".into(), "-".into()],
    }
}

/// The last epoch's mean `|cos|` to [`SETTLE_GAP`] epochs before, and the
/// first epoch from which it stayed at [`SETTLED`] or above (a cosine
/// schedule stops every filter at its end, so when they settled says more).
fn settled(run: &crate::RunStats) -> String {
    let values: Vec<(usize, f64)> =
        run.epochs.iter().filter_map(|e| e.similarity_to_earlier.map(|s| (e.epoch, s))).collect();
    let Some(&(_, last)) = values.last() else { return "-".into() };
    if last < SETTLED {
        return format!("{last:.4}, still moving");
    }
    let from = values.iter().rev().take_while(|(_, s)| *s >= SETTLED).last().map_or(0, |(epoch, _)| *epoch);
    format!("{last:.4}, settled from epoch {from}")
}

/// The results as Markdown: pooled table, per-run table, per-key table.
pub fn markdown(report: &UniversalityReport) -> String {
    let mut md = String::new();
    let sets: Vec<String> = report
        .datasets
        .iter()
        .map(|d| {
            format!(
                "{} ({} training images x {} epochs)",
                d.label,
                (d.train_images as f64 * d.fraction).round(),
                d.epochs
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "{} with trainable {} DW filters on {}; seeds {:?}; banks of K = {}; coverage = share of live filters with \
         best |cos| >= {}; matched = one-to-one |cos| of each published8 key to a found key (sign and the square's \
         symmetries allowed); rediscovered = matched >= {REDISCOVERED}. {:.0} s of training summed over the runs; \
         this call {:.0} s.\n",
        report.model,
        report.kernel,
        sets.join(", "),
        report.seeds,
        report.k,
        report.coverage_threshold,
        report.training_seconds,
        report.total_seconds
    );
    let _ = writeln!(
        md,
        "| data set | filters of | live filters | published8: mean \\|cos\\| / coverage | own K={k} (k-means) | random K={k} | \
         idealised scale-space 8 | matched (k-means) | rediscovered (k-means) | matched (autoencoder) | rediscovered (autoencoder) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|",
        k = report.k
    );
    for p in &report.pooled {
        let s = &p.stats;
        let [km, km_keys] = found_cells(Some(&s.kmeans));
        let [ae, ae_keys] = found_cells(s.autoencoder.as_ref());
        let _ = writeln!(
            md,
            "| {} | {} ({} runs) | {} | {} | {} | {} | {} | {km} | {km_keys} | {ae} | {ae_keys} |",
            p.dataset,
            p.when,
            p.runs,
            s.filters,
            pair(&s.published8),
            pair(&s.kmeans.coverage),
            pair(&s.random),
            s.scalespace.as_ref().map_or("-".into(), pair)
        );
    }
    let _ = writeln!(
        md,
        "\nPer run (initialisation -> trained):\n\n\
         | data set | seed | test accuracy | mean \\|cos\\| to own init | mean \\|cos\\| to {SETTLE_GAP} epochs before at the end (settled: >= {SETTLED}) | published8 mean \\|cos\\| | matched (k-means) | matched (autoencoder) |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for r in &report.runs {
        let (first, last) = (&r.epochs[0], &r.epochs[r.epochs.len() - 1]);
        let ae = |e: &crate::EpochStats| {
            e.stats.autoencoder.as_ref().map_or("-".into(), |b| format!("{:.3}", b.mean_matched))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}% | {:.3} | {} | {:.3} -> {:.3} | {:.3} -> {:.3} | {} -> {} |",
            r.dataset,
            r.seed,
            100.0 * r.test_accuracy,
            last.similarity_to_init,
            settled(r),
            first.stats.published8.mean_abs_cos,
            last.stats.published8.mean_abs_cos,
            first.stats.kmeans.mean_matched,
            last.stats.kmeans.mean_matched,
            ae(first),
            ae(last)
        );
    }
    let published = Bank::published8();
    let groups: Vec<&PooledStats> =
        report.pooled.iter().filter(|p| p.dataset == "all" || report.datasets.len() == 1).collect();
    if !groups.is_empty() {
        let _ = write!(
            md,
            "\nMatched |cos| per published8 key, all runs pooled (the square's symmetries allowed; k-means also \
             with each key as it is, orientation kept):\n\n| key |"
        );
        for g in &groups {
            let _ = write!(md, " k-means, {} | k-means as oriented, {} | autoencoder, {} |", g.when, g.when, g.when);
        }
        let _ = write!(md, "\n|---|");
        for _ in &groups {
            md.push_str("---|---|---|");
        }
        md.push('\n');
        for (i, label) in published.labels.iter().enumerate() {
            let _ = write!(md, "| {label} |");
            for g in &groups {
                let oriented = g.stats.kmeans.matched_oriented.get(i).map_or("-".into(), |m| format!("{m:.3}"));
                let ae = g.stats.autoencoder.as_ref().map_or("-".into(), |b| format!("{:.3}", b.matched[i]));
                let _ = write!(md, " {:.3} | {oriented} | {ae} |", g.stats.kmeans.matched[i]);
            }
            md.push('\n');
        }
    }
    md
}

/// Mean over a data set's runs of `value` at each epoch.
fn per_epoch(report: &UniversalityReport, label: &str, value: impl Fn(&crate::EpochStats) -> f64) -> Vec<(f64, f64)> {
    let runs: Vec<_> = report.runs.iter().filter(|r| r.dataset == label).collect();
    let epochs = runs.iter().map(|r| r.epochs.len()).min().unwrap_or(0);
    (0..epochs).map(|e| (e as f64, runs.iter().map(|r| value(&r.epochs[e])).sum::<f64>() / runs.len() as f64)).collect()
}

fn epoch_chart(
    report: &UniversalityReport,
    title: &str,
    y_desc: &str,
    value: impl Fn(&crate::EpochStats) -> f64,
) -> String {
    let series: Vec<Series> = report
        .datasets
        .iter()
        .map(|d| Series { name: d.label.clone(), points: per_epoch(report, &d.label, &value), markers: false })
        .collect();
    let last = report.datasets.iter().map(|d| d.epochs).max().unwrap_or(1).max(1) as f64;
    line_chart(
        title,
        &Axes {
            x_desc: "epoch (0 = initialisation)",
            y_desc,
            x_range: -0.2..last + 0.2,
            y_range: 0.0..1.0,
            legend: SeriesLabelPosition::LowerRight,
        },
        &series,
    )
}

/// Writes `results.md`, `results.json`, the bank pictures and the figures into `out`.
pub fn write_results(report: &UniversalityReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| Error::Other(e.to_string()))?;
    atomic::write_file(&out.join("results.json"), &json)?;
    atomic::write_file(&out.join("results.md"), markdown(report).as_bytes())?;
    let kernel: KernelSize = report.kernel.parse().map_err(|e: String| Error::invalid(out.join("results.json"), e))?;
    let (published, _) = Bank::published8().resized(kernel);
    let taps = kernel.taps();
    for p in report.pooled.iter().filter(|p| p.when == "trained") {
        // Rows: published8, then the k-means keys and the autoencoder keys in the order of the keys they match.
        let mut rows: Vec<&[f32]> = published.chunks_exact(taps).collect();
        for bank in std::iter::once(&p.stats.kmeans).chain(p.stats.autoencoder.as_ref()) {
            rows.extend(bank.keys.chunks_exact(taps));
        }
        let grid = FilterGrid { kernel, filters: rows, columns: report.k.max(published.len() / taps) };
        grid.save_png(&out.join(format!("banks-{}.png", p.dataset)))?;
    }
    let matched = epoch_chart(report, "Mean matched |cos| of the k-means keys to published8", "matched |cos|", |e| {
        e.stats.kmeans.mean_matched
    });
    atomic::write_file(&out.join("matched-per-epoch.svg"), matched.as_bytes())?;
    let covered = epoch_chart(report, "Mean best |cos| of the filters to published8", "mean |cos|", |e| {
        e.stats.published8.mean_abs_cos
    });
    atomic::write_file(&out.join("published8-per-epoch.svg"), covered.as_bytes())?;
    Ok(())
}
