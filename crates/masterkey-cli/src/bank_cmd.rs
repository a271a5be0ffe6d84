use std::path::PathBuf;

use anyhow::Result;
use masterkey_core::Bank;
use serde::Serialize;

use crate::{print_json, ui};

#[derive(clap::Subcommand)]
pub enum BankCommand {
    /// Describe a bank and draw its keys as a PNG grid.
    Show {
        /// A built-in name (published8) or a bank file.
        bank: String,
        /// PNG to draw the keys to.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write a bank (e.g. a built-in one) to a safetensors bank file.
    Save {
        bank: String,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Serialize)]
struct KeyInfo {
    label: String,
    /// Where the key's positive and negative mass sit, relative to the centre
    /// (rows down, columns right): derived from the numbers, not from labels.
    positive_centroid: [f32; 2],
    negative_centroid: [f32; 2],
    centre_tap: f32,
}

#[derive(Serialize)]
struct BankInfo {
    name: String,
    kernel: String,
    keys: Vec<KeyInfo>,
    source: String,
    licence: String,
    png: Option<String>,
}

/// Centre of mass of the positive and of the negative taps, relative to the
/// filter's centre: this is how key orientation is told from the numbers.
fn centroids(bank: &Bank, i: usize) -> ([f32; 2], [f32; 2]) {
    let k = bank.kernel;
    let (cy, cx) = ((k.h as f32 - 1.0) / 2.0, (k.w as f32 - 1.0) / 2.0);
    let mut acc = [[0.0f32; 3]; 2];
    for (t, &v) in bank.key(i).iter().enumerate() {
        let side = usize::from(v < 0.0);
        let m = v.abs();
        acc[side][0] += m * ((t / k.w) as f32 - cy);
        acc[side][1] += m * ((t % k.w) as f32 - cx);
        acc[side][2] += m;
    }
    let c = |a: [f32; 3]| if a[2] > 0.0 { [a[0] / a[2], a[1] / a[2]] } else { [0.0, 0.0] };
    (c(acc[0]), c(acc[1]))
}

pub fn run(cmd: BankCommand) -> Result<()> {
    match cmd {
        BankCommand::Show { bank, output, json } => {
            let bank = Bank::resolve(&bank)?;
            if let Some(path) = &output {
                crate::pictures::bank_png(&bank, path)?;
            }
            let info = BankInfo {
                name: bank.name.clone(),
                kernel: bank.kernel.to_string(),
                keys: (0..bank.len())
                    .map(|i| {
                        let (positive_centroid, negative_centroid) = centroids(&bank, i);
                        let centre = bank.key(i)[bank.kernel.h / 2 * bank.kernel.w + bank.kernel.w / 2];
                        KeyInfo {
                            label: bank.labels[i].clone(),
                            positive_centroid,
                            negative_centroid,
                            centre_tap: centre,
                        }
                    })
                    .collect(),
                source: bank.source.clone(),
                licence: bank.licence.clone(),
                png: output.map(|p| p.display().to_string()),
            };
            if json {
                return print_json(&info);
            }
            println!("bank `{}`: {} keys of {}", info.name, info.keys.len(), info.kernel);
            println!("source: {}\nlicence: {}", info.source, info.licence);
            let mut t = ui::table(&["key", "centre tap", "+ mass at (row, col)", "- mass at (row, col)"]);
            for k in &info.keys {
                let at = |c: [f32; 2]| format!("({:+.2}, {:+.2})", c[0], c[1]);
                t.add_row(vec![
                    comfy_table::Cell::new(&k.label),
                    ui::num(format!("{:+.3}", k.centre_tap)),
                    ui::num(at(k.positive_centroid)),
                    ui::num(at(k.negative_centroid)),
                ]);
            }
            println!("{t}\n(row offsets grow downwards, column offsets to the right, relative to the centre tap)");
            if let Some(png) = &info.png {
                println!("keys drawn in one row, in bank order: {png}");
            }
            Ok(())
        }
        BankCommand::Save { bank, output } => {
            let bank = Bank::resolve(&bank)?;
            bank.save(&output)?;
            println!("bank `{}` ({} keys of {}) written to {}", bank.name, bank.len(), bank.kernel, output.display());
            Ok(())
        }
    }
}
