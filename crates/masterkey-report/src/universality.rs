//! The section of `experiment universality`: do networks trained here
//! converge to the published keys?

use std::path::Path;

use masterkey_core::{Error, Result};
use serde::Deserialize;

use crate::html::{escape, figure, table};
use crate::sections::{embedded_png, pngs, read_json, short, svg_figures, Section};

#[derive(Deserialize)]
struct Coverage {
    mean_abs_cos: f64,
    coverage: f64,
}

#[derive(Deserialize)]
struct FoundBank {
    mean_matched: f64,
    rediscovered: Vec<String>,
    coverage: Coverage,
}

#[derive(Deserialize)]
struct SetStats {
    filters: usize,
    published8: Coverage,
    random: Coverage,
    kmeans: FoundBank,
    autoencoder: Option<FoundBank>,
}

#[derive(Deserialize)]
struct Pooled {
    dataset: String,
    when: String,
    runs: usize,
    stats: SetStats,
}

#[derive(Deserialize)]
struct EpochStats {
    similarity_to_init: f64,
    #[serde(default)]
    similarity_to_earlier: Option<f64>,
    stats: SetStats,
}

#[derive(Deserialize)]
struct Run {
    dataset: String,
    seed: u64,
    test_accuracy: f64,
    epochs: Vec<EpochStats>,
}

#[derive(Deserialize)]
struct DatasetInfo {
    label: String,
    train_images: usize,
    epochs: usize,
    fraction: f64,
}

/// `universality/results.json` as `masterkey experiment universality` writes it.
#[derive(Deserialize)]
struct Universality {
    model: String,
    kernel: String,
    k: usize,
    coverage_threshold: f32,
    seeds: Vec<u64>,
    datasets: Vec<DatasetInfo>,
    training_seconds: f64,
    runs: Vec<Run>,
    pooled: Vec<Pooled>,
}

fn pair(c: &Coverage) -> String {
    format!("{:.3} / {:.1}%", c.mean_abs_cos, 100.0 * c.coverage)
}

fn keys(bank: Option<&FoundBank>) -> [String; 2] {
    bank.map_or(["-".into(), "-".into()], |b| {
        [
            format!("{:.3}", b.mean_matched),
            if b.rediscovered.is_empty() { "none".into() } else { b.rediscovered.join(", ") },
        ]
    })
}

pub fn section(dir: &Path) -> Result<Option<Section>> {
    let exp_dir = dir.join("universality");
    let path = exp_dir.join("results.json");
    let Some(exp): Option<Universality> = read_json(&path)? else { return Ok(None) };
    if exp.runs.iter().any(|r| r.epochs.is_empty()) {
        return Err(Error::invalid(&path, "a run without snapshots"));
    }
    let sets: Vec<String> = exp
        .datasets
        .iter()
        .map(|d| {
            format!("{} ({:.0} training images x {} epochs)", d.label, d.train_images as f64 * d.fraction, d.epochs)
        })
        .collect();
    let settings = format!(
        "{} with trainable {} DW filters on {}; seeds {:?}; banks of K = {}; coverage at |cos| >= {}; {:.0} s of training summed over the runs",
        exp.model,
        exp.kernel,
        sets.join(", "),
        exp.seeds,
        exp.k,
        exp.coverage_threshold,
        exp.training_seconds
    );
    let mut body = format!(
        "<p>Networks trained here from random initialisation; their DW filters saved at initialisation (the \
         control) and after every epoch, then searched for K keys (k-means, and the autoencoder route at the ends) \
         and matched one-to-one to published8 (sign and the square's symmetries allowed). A published key counts as \
         rediscovered at matched |cos| >= 0.9. Settings: {}.</p>",
        escape(&settings)
    );
    let header = [
        "data set",
        "filters of",
        "live filters",
        "published8 mean |cos| / coverage",
        "own K keys (k-means)",
        "random K keys",
        "matched (k-means)",
        "rediscovered (k-means)",
        "matched (autoencoder)",
        "rediscovered (autoencoder)",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = exp
        .pooled
        .iter()
        .map(|p| {
            let s = &p.stats;
            let [km, km_keys] = keys(Some(&s.kmeans));
            let [ae, ae_keys] = keys(s.autoencoder.as_ref());
            vec![
                p.dataset.clone(),
                format!("{} ({} runs)", p.when, p.runs),
                s.filters.to_string(),
                pair(&s.published8),
                pair(&s.kmeans.coverage),
                pair(&s.random),
                km,
                km_keys,
                ae,
                ae_keys,
            ]
        })
        .collect();
    body.push_str(&table(&header, &rows));
    let header = [
        "data set",
        "seed",
        "test accuracy",
        "mean |cos| to own init",
        "mean |cos| to 3 epochs before",
        "published8 mean |cos|",
        "matched (k-means)",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = exp
        .runs
        .iter()
        .map(|r| {
            let (first, last) = (&r.epochs[0], &r.epochs[r.epochs.len() - 1]);
            vec![
                r.dataset.clone(),
                r.seed.to_string(),
                format!("{:.2}%", 100.0 * r.test_accuracy),
                format!("{:.3}", last.similarity_to_init),
                last.similarity_to_earlier.map_or("-".into(), |s| format!("{s:.4}")),
                format!("{:.3} -> {:.3}", first.stats.published8.mean_abs_cos, last.stats.published8.mean_abs_cos),
                format!("{:.3} -> {:.3}", first.stats.kmeans.mean_matched, last.stats.kmeans.mean_matched),
            ]
        })
        .collect();
    body.push_str(&table(&header, &rows));
    for png in pngs(&exp_dir, "banks-")? {
        let name = short(&png.display().to_string());
        body.push_str(&figure(
            &embedded_png(&png, &name)?,
            &format!(
                "{name}: top row published8; below, the K keys k-means found in the trained filters and those of the \
                 autoencoder route, each in the order of the published key it matches. {settings}."
            ),
        ));
    }
    body.push_str(&svg_figures(&exp_dir, |name| {
        format!("{name}: mean over seeds per epoch (0 = initialisation); {settings}.")
    })?);
    Ok(Some(Section { id: "universality".into(), title: "Do trained networks converge to the keys?".into(), body }))
}
