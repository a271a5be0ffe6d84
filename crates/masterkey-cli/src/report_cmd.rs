use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Results folder written by `demo` / `fit -o` (layout: see the README).
    results: PathBuf,
    /// HTML file to write (default: RESULTS/report.html).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let out = args.output.unwrap_or_else(|| args.results.join("report.html"));
    let report = masterkey_report::write(&args.results, &out)?;
    println!("report with sections: {}", report.sections.join(", "));
    println!("written to {}", out.display());
    Ok(())
}
