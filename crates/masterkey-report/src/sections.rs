//! One function per section; each returns `None` when its files are absent.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use masterkey_core::fit::{FitRecord, FitStats};
use masterkey_core::{Error, Result};
use serde::Deserialize;

use crate::charts::{self, Axes, Series};
use crate::html::{escape, figure, png_img, table};
use plotters::prelude::SeriesLabelPosition;

pub struct Section {
    pub id: String,
    pub title: String,
    pub body: String,
}

pub fn collect(dir: &Path) -> Result<Vec<Section>> {
    let mut sections = Vec::new();
    sections.extend(models(dir)?);
    sections.extend(banks(dir)?);
    sections.extend(fit(dir)?);
    sections.extend(scalespace(dir)?);
    sections.extend(found_banks(dir)?);
    sections.extend(small_data_sections(dir)?);
    sections.extend(crate::universality::section(dir)?);
    sections.extend(training_run(dir)?);
    Ok(sections)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::invalid(path, format!("unexpected content: {e}")))
}

/// Files in `dir` named `prefix*.png`, sorted.
pub(crate) fn pngs(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(prefix) && name.ends_with(".png")
        })
        .collect();
    out.sort();
    Ok(out)
}

pub(crate) fn embedded_png(path: &Path, alt: &str) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(Error::invalid(path, "expected a PNG image, found other bytes"));
    }
    Ok(png_img(&bytes, alt))
}

pub(crate) fn short(path: &str) -> String {
    Path::new(path).file_name().map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

fn pct(share: f64) -> String {
    format!("{:.1}%", 100.0 * share)
}

#[derive(Deserialize)]
struct ModelRow {
    source: String,
    format: String,
    layers: usize,
    filters: usize,
    kernels: BTreeMap<String, usize>,
}

fn models(dir: &Path) -> Result<Option<Section>> {
    let Some(rows): Option<Vec<ModelRow>> = read_json(&dir.join("models.json"))? else { return Ok(None) };
    let header = ["model", "format", "DW layers", "filters", "by kernel"].map(String::from);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            let kernels: Vec<String> = m.kernels.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            vec![short(&m.source), m.format.clone(), m.layers.to_string(), m.filters.to_string(), kernels.join(", ")]
        })
        .collect();
    let sources: Vec<String> = rows.iter().map(|m| escape(&m.source)).collect();
    let body = format!(
        "<p>Every depthwise filter read from these files (<code>models.json</code>).</p>{}<p>Files: {}</p>",
        table(&header, &cells),
        sources.join("; ")
    );
    Ok(Some(Section { id: "models".into(), title: "Models and filters".into(), body }))
}

fn banks(dir: &Path) -> Result<Option<Section>> {
    let files = pngs(dir, "bank_")?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut body = String::new();
    for path in files {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").trim_start_matches("bank_").to_string();
        let mut caption = format!(
            "Bank `{name}` ({}): its keys left to right in bank order, one colour scale for the grid \
             (blue negative, white zero, red positive).",
            short(&path.display().to_string())
        );
        if name == "published8" {
            caption.push_str(" The 8 master-key filters of Babaiee et al. (NeurIPS 2025) as published by Lindeberg et al.; CC BY 4.0.");
        }
        body.push_str(&figure(&embedded_png(&path, &format!("bank {name}"))?, &caption));
    }
    Ok(Some(Section { id: "banks".into(), title: "Banks".into(), body }))
}

/// The per-filter columns of `fits.csv` the report uses.
#[derive(Deserialize)]
struct FitRow {
    source_file: String,
    depth: f64,
    dead: bool,
    key_index: Option<u16>,
    abs_cos: f32,
}

fn read_fit_rows(path: &Path) -> Result<Option<Vec<FitRow>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::invalid(path, e.to_string()))?;
    let rows: std::result::Result<Vec<FitRow>, _> = reader.deserialize().collect();
    rows.map(Some).map_err(|e| Error::invalid(path, format!("unexpected row: {e}")))
}

fn stats_rows(record: &FitRecord) -> (Vec<String>, Vec<Vec<String>>) {
    let report = &record.report;
    let mut header = vec!["filters".to_string(), "count".into(), "dead".into(), "mean |cos|".into()];
    header.extend(report.thresholds.iter().map(|t| format!("|cos| >= {t}")));
    let row = |name: String, s: &FitStats| {
        let mut r = vec![name, s.filters.to_string(), s.dead.to_string(), format!("{:.3}", s.mean_abs_cos)];
        r.extend(s.coverage.values().map(|&c| pct(c)));
        r
    };
    let mut rows = vec![row("all".into(), &report.overall)];
    rows.extend(report.per_kernel.iter().map(|(k, s)| row(format!("kernel {k}"), s)));
    rows.extend(report.per_model.iter().map(|(m, s)| row(short(m), s)));
    rows.extend(report.per_depth_band.iter().map(|(b, s)| row(format!("depth {b}"), s)));
    if let Some(control) = &record.random_control {
        rows.push(row(format!("control: {}", control.bank), &control.overall));
        rows.extend(control.per_kernel.iter().map(|(k, s)| row(format!("control: {} at {k}", control.bank), s)));
    }
    (header, rows)
}

/// Coverage at every threshold from 0 to 1 in steps of 0.01, per model and overall.
fn coverage_curves(rows: &[FitRow]) -> Vec<Series> {
    let mut by_model: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    let mut all = Vec::new();
    for r in rows.iter().filter(|r| !r.dead && r.key_index.is_some()) {
        by_model.entry(&r.source_file).or_default().push(r.abs_cos);
        all.push(r.abs_cos);
    }
    let curve = |name: String, values: &[f32]| Series {
        name,
        points: (0..=100)
            .map(|i| {
                let t = i as f32 / 100.0;
                let covered = values.iter().filter(|&&v| v >= t).count();
                (t as f64, 100.0 * covered as f64 / values.len().max(1) as f64)
            })
            .collect(),
        markers: false,
    };
    let mut series = vec![curve("all models".into(), &all)];
    series.extend(by_model.iter().map(|(m, v)| curve(short(m), v)));
    series
}

const DEPTH_BINS: usize = 10;

/// Per model: for each key, its share of the non-dead filters in each depth bin.
fn usage_by_depth(rows: &[FitRow], keys: usize) -> BTreeMap<&str, Vec<Vec<f64>>> {
    let mut counts: BTreeMap<&str, (Vec<Vec<f64>>, Vec<f64>)> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.dead) {
        let Some(k) = r.key_index.map(usize::from).filter(|&k| k < keys) else { continue };
        let bin = ((r.depth * DEPTH_BINS as f64) as usize).min(DEPTH_BINS - 1);
        let (grid, totals) =
            counts.entry(&r.source_file).or_insert_with(|| (vec![vec![0.0; DEPTH_BINS]; keys], vec![0.0; DEPTH_BINS]));
        grid[k][bin] += 1.0;
        totals[bin] += 1.0;
    }
    counts
        .into_iter()
        .map(|(m, (grid, totals))| {
            let shares = grid
                .into_iter()
                .map(|row| row.iter().zip(&totals).map(|(c, t)| if *t > 0.0 { c / t } else { 0.0 }).collect())
                .collect();
            (m, shares)
        })
        .collect()
}

fn fit(dir: &Path) -> Result<Option<Section>> {
    let fit_dir = dir.join("fit");
    let Some(record): Option<FitRecord> = read_json(&fit_dir.join("fit.json"))? else { return Ok(None) };
    let report = &record.report;
    let inputs: Vec<String> = record.inputs.iter().map(|i| short(i)).collect();
    let settings = format!(
        "bank `{}` ({} keys, {}), filters of {} model file(s) ({}), dead tolerance {} on the centred L2 norm, resize rule: {}",
        report.bank,
        report.labels.len(),
        report.bank_kernel,
        record.inputs.len(),
        inputs.join(", "),
        record.dead_tolerance,
        report.resize_rule
    );
    let mut body = format!(
        "<p>Each filter <i>y</i> is fitted as <i>a</i>·key + <i>b</i> to its best key (largest |cos| between the centred \
         filter and the key). Coverage is the share of non-dead filters whose best key reaches the threshold. Settings: {}.</p>",
        escape(&settings)
    );
    let (header, rows) = stats_rows(&record);
    body.push_str(&table(&header, &rows));
    if let Some(control) = &record.random_control {
        body.push_str(&format!(
            "<p>Control rows: the same filters fitted to {} random normal keys of {} (seed {}), the coverage that \
             chance alone gives.</p>",
            control.overall.usage.len(),
            escape(&report.bank_kernel),
            control.seed
        ));
    }

    let mut usage_header = vec!["key".to_string(), "all".into()];
    usage_header.extend(report.per_model.keys().map(|m| short(m)));
    let share = |s: &FitStats, k: usize| pct(s.usage[k] as f64 / (s.filters - s.dead).max(1) as f64);
    let usage_rows: Vec<Vec<String>> = report
        .labels
        .iter()
        .enumerate()
        .map(|(k, label)| {
            let mut row = vec![label.clone(), share(&report.overall, k)];
            row.extend(report.per_model.values().map(|s| share(s, k)));
            row
        })
        .collect();
    body.push_str("<p>Key usage: share of each column's non-dead filters whose best key it is.</p>");
    body.push_str(&table(&usage_header, &usage_rows));

    if let Some(rows) = read_fit_rows(&fit_dir.join("fits.csv"))? {
        let axes = Axes {
            x_desc: "|cos| threshold",
            y_desc: "coverage (%)",
            x_range: 0.0..1.0,
            y_range: 0.0..100.0,
            legend: SeriesLabelPosition::LowerLeft,
        };
        let svg = charts::line_chart("Coverage versus threshold", &axes, &coverage_curves(&rows));
        body.push_str(&figure(&svg, &format!("Coverage versus |cos| threshold, from fit/fits.csv; {settings}.")));
        for (model, shares) in usage_by_depth(&rows, report.labels.len()) {
            let svg = charts::heatmap(
                &format!("Key usage by depth: {}", short(model)),
                "normalised depth of the DW layer (0 = first, 1 = last)",
                &report.labels,
                &shares,
            );
            body.push_str(&figure(
                &svg,
                &format!(
                    "Share of {}'s non-dead filters in each of {DEPTH_BINS} depth bins whose best key is each key \
                     (darker = larger share; scale per chart), from fit/fits.csv; bank `{}`.",
                    short(model),
                    report.bank
                ),
            ));
        }
    }
    for path in pngs(dir, "samples_")? {
        let kernel = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").trim_start_matches("samples_").to_string();
        body.push_str(&figure(
            &embedded_png(&path, &format!("samples {kernel}"))?,
            &format!(
                "{kernel} filters: one row per key of `{}` (the key, centre-cropped to {kernel}, first), then the filters \
                 that fit it best, normalised and multiplied by the sign of their a; one colour scale.",
                report.bank
            ),
        ));
    }
    Ok(Some(Section { id: "fit".into(), title: "How the bank explains the filters".into(), body }))
}

#[derive(Deserialize)]
struct ScaleParams {
    sigma_x: f64,
    sigma_y: f64,
    alpha: Option<f64>,
}

#[derive(Deserialize)]
struct ScaleModel {
    family: String,
    abs_cos: f64,
}

#[derive(Deserialize)]
struct ScaleKey {
    label: String,
    family: String,
    discretisation: String,
    params: ScaleParams,
    abs_cos: f64,
    l1_residual: f64,
    runner_up: Option<ScaleModel>,
}

/// `scalespace/fit.json` as `masterkey scalespace fit -o` writes it.
#[derive(Deserialize)]
struct ScaleFit {
    bank: String,
    kernel: String,
    criterion: String,
    normalisation: String,
    keys: Vec<ScaleKey>,
}

fn scalespace(dir: &Path) -> Result<Option<Section>> {
    let ss_dir = dir.join("scalespace");
    let Some(fit): Option<ScaleFit> = read_json(&ss_dir.join("fit.json"))? else { return Ok(None) };
    let header =
        ["key", "family", "discretisation", "sigma_x", "sigma_y", "alpha", "|cos|", "L1 residual", "runner-up"]
            .map(String::from);
    let rows: Vec<Vec<String>> = fit
        .keys
        .iter()
        .map(|k| {
            vec![
                k.label.clone(),
                k.family.clone(),
                k.discretisation.clone(),
                format!("{:.3}", k.params.sigma_x),
                format!("{:.3}", k.params.sigma_y),
                k.params.alpha.map(|a| format!("{a:.3}")).unwrap_or_default(),
                format!("{:.4}", k.abs_cos),
                format!("{:.4}", k.l1_residual),
                k.runner_up.as_ref().map(|r| format!("{} ({:.3})", r.family, r.abs_cos)).unwrap_or_default(),
            ]
        })
        .collect();
    let settings = format!("bank `{}` ({}), criterion {}; {}", fit.bank, fit.kernel, fit.criterion, fit.normalisation);
    let mut body = format!(
        "<p>Each key fitted to its best scale-space model (Gaussian, Gaussian derivatives, offset differences, \
         Laplacian and the DoG-like form delta - alpha Lap5 T; discrete, sampled or pixel-integrated Gaussian). \
         Sigmas in pixels, x rightwards, y downwards. Settings: {}.</p>",
        escape(&settings)
    );
    body.push_str(&table(&header, &rows));
    let picture = ss_dir.join("keys_vs_models.png");
    if picture.is_file() {
        body.push_str(&figure(
            &embedded_png(&picture, "keys and their models")?,
            &format!("Top row: the keys of `{}`; bottom row: each key's best model, normalised, with the fit's sign; one colour scale. {settings}.", fit.bank),
        ));
    }
    Ok(Some(Section { id: "scalespace".into(), title: "Scale-space models of the keys".into(), body }))
}

#[derive(Deserialize)]
struct CurvePoint {
    k: usize,
    mean_abs_cos: f64,
    coverage: BTreeMap<String, f64>,
}

/// A `*.curve.json` as `masterkey search -o` writes it.
#[derive(Deserialize)]
struct Curve {
    method: String,
    kernel: String,
    filters: usize,
    dead: usize,
    points: Vec<CurvePoint>,
    elbow_k: usize,
    elbow_rule: String,
}

#[derive(Deserialize)]
struct KeyMatch {
    label_a: String,
    label_b: String,
    abs_cos: f64,
    sign: i8,
}

/// A `*.compare.json`: the found bank matched one to one with a reference bank.
#[derive(Deserialize)]
struct Comparison {
    bank_a: String,
    bank_b: String,
    kernel: String,
    pairs: Vec<KeyMatch>,
    mean_abs_cos: f64,
}

/// Files in `dir` whose names end with `suffix`, sorted.
/// Every `*.svg` of `dir` inlined as a figure, captioned by `caption(file name)`.
pub(crate) fn svg_figures(dir: &Path, caption: impl Fn(&str) -> String) -> Result<String> {
    let mut out = String::new();
    for svg_path in files_ending(dir, ".svg")? {
        let svg = fs::read_to_string(&svg_path).map_err(|e| Error::io(&svg_path, e))?;
        if !svg.trim_start().starts_with("<svg") {
            return Err(Error::invalid(&svg_path, "expected an SVG image, found other content"));
        }
        out.push_str(&figure(&svg, &caption(&short(&svg_path.display().to_string()))));
    }
    Ok(out)
}

fn files_ending(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suffix)))
        .collect();
    out.sort();
    Ok(out)
}

const CURVE_SUFFIX: &str = ".curve.json";

fn found_banks(dir: &Path) -> Result<Option<Section>> {
    let search_dir = dir.join("search");
    let curves = files_ending(&search_dir, CURVE_SUFFIX)?;
    if curves.is_empty() {
        return Ok(None);
    }
    let fit: Option<FitRecord> = read_json(&dir.join("fit").join("fit.json"))?;
    let mut body = String::from(
        "<p>Banks searched for in the filters themselves, for K = 1, 2, ...: how much of the filters K keys can \
         explain, next to the fitted bank and to random keys at its K.</p>",
    );
    for curve_path in curves {
        let Some(curve): Option<Curve> = read_json(&curve_path)? else { continue };
        let stem = curve_path.to_string_lossy().trim_end_matches(CURVE_SUFFIX).to_string();
        let mut series = vec![Series {
            name: "mean |cos| (x100)".into(),
            points: curve.points.iter().map(|p| (p.k as f64, 100.0 * p.mean_abs_cos)).collect(),
            markers: false,
        }];
        for t in ["0.8", "0.9"] {
            series.push(Series {
                name: format!("coverage |cos| >= {t}"),
                points: curve
                    .points
                    .iter()
                    .filter_map(|p| p.coverage.get(t).map(|c| (p.k as f64, 100.0 * c)))
                    .collect(),
                markers: false,
            });
        }
        if let Some(fit) = &fit {
            let at_kernel = |stats: Option<&FitStats>, name: String| {
                stats.map(|s| Series {
                    name,
                    points: vec![
                        (fit.report.labels.len() as f64, 100.0 * s.mean_abs_cos),
                        (fit.report.labels.len() as f64, 100.0 * s.coverage.get("0.8").copied().unwrap_or(0.0)),
                    ],
                    markers: true,
                })
            };
            series.extend(at_kernel(
                fit.report.per_kernel.get(&curve.kernel),
                format!("{} (mean |cos|, cov. 0.8)", fit.report.bank),
            ));
            if let Some(control) = &fit.random_control {
                series.extend(at_kernel(control.per_kernel.get(&curve.kernel), format!("{} (same)", control.bank)));
            }
        }
        let max_k = curve.points.iter().map(|p| p.k).max().unwrap_or(1) as f64;
        let axes = Axes {
            x_desc: "K (keys in the bank)",
            y_desc: "percent",
            x_range: 0.5..max_k + 0.5,
            y_range: 0.0..100.0,
            legend: SeriesLabelPosition::LowerRight,
        };
        let svg = charts::line_chart(&format!("Coverage versus K, {} filters", curve.kernel), &axes, &series);
        body.push_str(&figure(
            &svg,
            &format!(
                "{} on {} non-dead {} filters ({} dead left out), K = 1..{}; elbow at K = {} ({}). Points: the fitted bank \
                 and the random control at their K, on the same filters (fit/fit.json). From {}.",
                curve.method,
                curve.filters,
                curve.kernel,
                curve.dead,
                max_k,
                curve.elbow_k,
                curve.elbow_rule,
                short(&curve_path.display().to_string())
            ),
        ));
        let png = PathBuf::from(format!("{stem}.png"));
        if png.is_file() {
            body.push_str(&figure(
                &embedded_png(&png, "found bank")?,
                &format!("The found bank's keys ({}), one colour scale.", short(&png.display().to_string())),
            ));
        }
        if let Some(cmp) = read_json::<Comparison>(&PathBuf::from(format!("{stem}.compare.json")))? {
            let header = ["found key", "matched key", "|cos|", "sign"].map(String::from);
            let rows: Vec<Vec<String>> = cmp
                .pairs
                .iter()
                .map(|p| {
                    vec![
                        p.label_a.clone(),
                        p.label_b.clone(),
                        format!("{:.3}", p.abs_cos),
                        if p.sign < 0 { "-".into() } else { "+".into() },
                    ]
                })
                .collect();
            body.push_str(&format!(
                "<p>One-to-one matching (Hungarian on |cos|, sign free, orientation kept) of `{}` with `{}` at {}: mean matched |cos| {:.3}.</p>",
                escape(&cmp.bank_a),
                escape(&cmp.bank_b),
                escape(&cmp.kernel),
                cmp.mean_abs_cos
            ));
            body.push_str(&table(&header, &rows));
        }
    }
    Ok(Some(Section { id: "search".into(), title: "Banks found in the filters".into(), body }))
}

#[derive(Deserialize)]
struct ArmStats {
    arm: String,
    fraction: f64,
    runs: usize,
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    vs_trainable: f64,
    /// Absent in results written before paired differences were reported.
    #[serde(default)]
    paired: Option<PairedDifference>,
}

#[derive(Deserialize)]
struct PairedDifference {
    pairs: usize,
    mean: f64,
    low: f64,
    high: f64,
}

#[derive(Deserialize)]
struct Share {
    fraction: f64,
    epochs: usize,
}

/// `small-data/results.json` as `masterkey experiment small-data` writes it.
#[derive(Deserialize)]
struct SmallData {
    model: String,
    dataset: String,
    shares: Vec<Share>,
    batch_size: usize,
    lr: f64,
    layer_scale_init: Option<f32>,
    seeds: Vec<u64>,
    training_seconds: f64,
    stats: Vec<ArmStats>,
    #[serde(default)]
    learned_scales: Vec<ShareScales>,
}

/// The scales the scale-space arm learned at one share, per family.
#[derive(Deserialize)]
struct ShareScales {
    fraction: f64,
    runs: usize,
    bank: String,
    discretisation: String,
    fitted_to_keys: Vec<FamilyMean>,
    learned: Vec<FamilyMean>,
}

#[derive(Deserialize)]
struct FamilyMean {
    family: String,
    channels: usize,
    sigma_x: f64,
    sigma_y: f64,
    alpha: Option<f64>,
}

/// Every `small-data*` folder (one experiment each: `small-data`,
/// `small-data-photos`, ...), in name order.
fn small_data_sections(dir: &Path) -> Result<Vec<Section>> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("small-data") && dir.join(n).join("results.json").is_file())
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    names.sort();
    names.iter().filter_map(|n| small_data(dir, n).transpose()).collect()
}

fn learned_scales_table(shares: &[ShareScales]) -> String {
    let Some(first) = shares.first() else { return String::new() };
    let mut header = vec!["family".to_string(), format!("fitted to {} keys", first.bank)];
    header.extend(shares.iter().map(|s| format!("learned, {}% ({} runs)", 100.0 * s.fraction, s.runs)));
    let cell = |m: &FamilyMean| {
        let alpha = m.alpha.map_or(String::new(), |a| format!(", alpha {a:.3}"));
        format!("{:.3} / {:.3}{alpha}", m.sigma_x, m.sigma_y)
    };
    let rows: Vec<Vec<String>> = first
        .fitted_to_keys
        .iter()
        .map(|fitted| {
            let mut row = vec![fitted.family.clone(), cell(fitted)];
            row.extend(shares.iter().map(|s| {
                s.learned
                    .iter()
                    .find(|m| m.family == fitted.family)
                    .map_or("-".into(), |m| format!("{} ({} channels)", cell(m), m.channels))
            }));
            row
        })
        .collect();
    format!(
        "<p>The scale-space arm: sigma_x / sigma_y in pixels per family, as fitted to the bank's keys ({} \
         discretisation; where its channels start) and as learned, mean over channels and seeds.</p>{}",
        escape(&first.discretisation),
        table(&header, &rows)
    )
}

fn small_data(dir: &Path, name: &str) -> Result<Option<Section>> {
    let exp_dir = dir.join(name);
    let Some(exp): Option<SmallData> = read_json(&exp_dir.join("results.json"))? else { return Ok(None) };
    let budget: Vec<String> =
        exp.shares.iter().map(|s| format!("{} epochs on {}%", s.epochs, 100.0 * s.fraction)).collect();
    let settings = format!(
        "model {}, data set {}, {}, batch {}, lr {}, layer-scale init {}, seeds {:?}, {:.0} s of training summed over the runs",
        exp.model,
        exp.dataset,
        budget.join(", "),
        exp.batch_size,
        exp.lr,
        exp.layer_scale_init.map_or("none".to_string(), |v| v.to_string()),
        exp.seeds,
        exp.training_seconds
    );
    let mut body = format!(
        "<p>The same budget and seeds for every depthwise mode, on a share of the training set; test accuracy in \
         percent (mean ± sample standard deviation over seeds; paired: the mean of this mode's accuracy minus \
         trainable's seed by seed, with its 95% Student t interval). Settings: {}.</p>",
        escape(&settings)
    );
    let header = [
        "share of training set",
        "depthwise mode",
        "runs",
        "mean",
        "± std",
        "min",
        "max",
        "vs trainable",
        "paired vs trainable (95% CI)",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = exp
        .stats
        .iter()
        .map(|a| {
            vec![
                format!("{}%", 100.0 * a.fraction),
                a.arm.clone(),
                a.runs.to_string(),
                format!("{:.2}", 100.0 * a.mean),
                format!("{:.2}", 100.0 * a.std),
                format!("{:.2}", 100.0 * a.min),
                format!("{:.2}", 100.0 * a.max),
                format!("{:+.2}", 100.0 * a.vs_trainable),
                a.paired.as_ref().map_or("".into(), |p| {
                    format!(
                        "{:+.2} ({:+.2} to {:+.2}; {} seeds)",
                        100.0 * p.mean,
                        100.0 * p.low,
                        100.0 * p.high,
                        p.pairs
                    )
                }),
            ]
        })
        .collect();
    body.push_str(&table(&header, &rows));
    body.push_str(&learned_scales_table(&exp.learned_scales));
    body.push_str(&svg_figures(&exp_dir, |name| {
        format!("Test accuracy after each epoch, mean over seeds ({name}); {settings}.")
    })?);
    let title = format!("Frozen versus trainable on small data: {}", exp.dataset);
    Ok(Some(Section { id: name.into(), title, body }))
}

/// One line of `train/metrics.jsonl` as `masterkey train` writes it.
#[derive(Deserialize)]
struct EpochMetrics {
    epoch: usize,
    train_loss: f64,
    train_accuracy: f64,
    /// Absent for epochs not evaluated.
    test_loss: Option<f64>,
    test_accuracy: Option<f64>,
    train_images_per_s: f64,
}

fn training_run(dir: &Path) -> Result<Option<Section>> {
    let path = dir.join("train").join("metrics.jsonl");
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let epochs: Vec<EpochMetrics> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::invalid(&path, format!("line {}: {e}", i + 1))))
        .collect::<Result<_>>()?;
    if epochs.is_empty() {
        return Ok(None);
    }
    let curve = |name: &str, value: fn(&EpochMetrics) -> Option<f64>| Series {
        name: name.into(),
        points: epochs.iter().filter_map(|m| value(m).map(|v| (m.epoch as f64, v))).collect(),
        markers: false,
    };
    let last_epoch = epochs.last().map_or(1, |m| m.epoch) as f64;
    let accuracy = charts::line_chart(
        "Accuracy per epoch",
        &Axes {
            x_desc: "epoch",
            y_desc: "accuracy (%)",
            x_range: 0.5..last_epoch + 0.5,
            y_range: 0.0..100.0,
            legend: SeriesLabelPosition::LowerRight,
        },
        &[curve("test", |m| m.test_accuracy.map(|a| 100.0 * a)), curve("train", |m| Some(100.0 * m.train_accuracy))],
    );
    let max_loss = epochs.iter().map(|m| m.train_loss.max(m.test_loss.unwrap_or(0.0))).fold(0.0f64, f64::max).max(1e-9);
    let loss = charts::line_chart(
        "Loss per epoch",
        &Axes {
            x_desc: "epoch",
            y_desc: "loss",
            x_range: 0.5..last_epoch + 0.5,
            y_range: 0.0..max_loss * 1.05,
            legend: SeriesLabelPosition::UpperRight,
        },
        &[curve("test", |m| m.test_loss), curve("train", |m| Some(m.train_loss))],
    );
    let last = epochs.last().expect("not empty");
    let Some(final_accuracy) = last.test_accuracy else {
        return Err(Error::invalid(&path, "its last epoch has no test evaluation (an unfinished run?)"));
    };
    let mut body = format!(
        "<p>The run in <code>train/</code> (settings in its checkpoint's <code>state.json</code>): {} epochs, final test \
         accuracy {:.2}%, {:.1} training images/s in its last epoch.</p>",
        epochs.len(),
        100.0 * final_accuracy,
        last.train_images_per_s
    );
    body.push_str(&figure(&accuracy, "Train and test accuracy after each epoch, from train/metrics.jsonl."));
    body.push_str(&figure(&loss, "Train and test loss after each epoch, from train/metrics.jsonl."));
    Ok(Some(Section { id: "training".into(), title: "Training run".into(), body }))
}
