//! `masterkey report`: one self-contained HTML page (images and data embedded,
//! no script, nothing fetched when viewed) built from the JSON, CSV and PNG
//! files that the other commands write into a results folder.
//!
//! The results folder layout it reads (every part optional; a section
//! appears only when its files are there):
//!
//! | path | written by | section |
//! |---|---|---|
//! | `models.json` | `demo` | Models and filters |
//! | `bank_*.png` | `demo`, `bank show -o` | Banks |
//! | `fit/fit.json`, `fit/fits.csv` | `demo`, `fit -o DIR` | How the bank explains the filters |
//! | `samples_*.png` | `demo` | How the bank explains the filters |
//! | `scalespace/fit.json`, `scalespace/keys_vs_models.png` | `demo`, `scalespace fit -o DIR` | Scale-space models of the keys |
//! | `search/NAME.curve.json`, `search/NAME.png`, `search/NAME.compare.json` | `demo`, `search -o search/NAME.safetensors` | Banks found in the filters |
//! | `small-data*/results.json`, `small-data*/curves-*.svg` (one section per folder) | `experiment small-data -o RESULTS/small-data[-NAME]` | Frozen versus trainable on small data: DATA SET |
//! | `universality/results.json`, `universality/banks-*.png`, `universality/*.svg` | `experiment universality -o RESULTS/universality` | Do trained networks converge to the keys? |
//! | `train/metrics.jsonl` | `train -o RESULTS/train` | Training run |

pub mod charts;
mod html;
mod sections;
mod universality;

use std::path::Path;

use masterkey_core::{atomic, Error, Result};

/// A rendered report: the page and the titles of the sections it holds.
pub struct Report {
    pub html: String,
    pub sections: Vec<String>,
}

/// Builds the report of a results folder.
pub fn render(dir: &Path) -> Result<Report> {
    if !dir.is_dir() {
        return Err(Error::invalid(dir, "expected a results folder, found no such directory"));
    }
    let sections = sections::collect(dir)?;
    if sections.is_empty() {
        return Err(Error::invalid(
            dir,
            "expected results (models.json, fit/fit.json, bank_*.png ...), found none: run `masterkey demo` or `masterkey fit -o` first",
        ));
    }
    let titles = sections.iter().map(|s| s.title.clone()).collect();
    Ok(Report { html: html::page(dir, &sections), sections: titles })
}

/// Renders the report of `dir` and writes it to `out` atomically.
pub fn write(dir: &Path, out: &Path) -> Result<Report> {
    let report = render(dir)?;
    atomic::write_file(out, report.html.as_bytes())?;
    Ok(report)
}
