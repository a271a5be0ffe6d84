//! The universality experiment: do networks trained here converge to the
//! master keys?
//!
//! Networks with trainable DW layers are trained on several real data sets
//! (several seeds each); their DW filters are saved at initialisation and
//! after every epoch; every snapshot is analysed (published8 coverage against
//! the snapshot's own K-key bank and random keys of the same K, and which
//! published keys its own bank rediscovers), per run and pooled per data set
//! and over all runs. The untrained networks are the control.
//!
//! Runs live in `runs/<data set>/seed-<S>/` and resume from their checkpoints,
//! so an interrupted experiment continues where it stopped; the analysis is
//! recomputed from the saved snapshots every time (it takes seconds).

pub mod analysis;
pub mod output;

use std::path::{Path, PathBuf};
use std::time::Instant;

use masterkey_core::{Error, FilterSet, KernelSize, Result};
use masterkey_train::data::Dataset;
use masterkey_train::dw::DwMode;
use masterkey_train::train::{dw_snapshot_dir, train, Observer, Outcome, RunOptions, TrainConfig};
use masterkey_train::ModelAutodiffBackend;
use serde::{Deserialize, Serialize};

pub use analysis::{analyse, similarity_to, AnalysisOptions, Coverage, FoundBank, SetStats};

/// One data set and the training settings every seed gets on it (the seed
/// and the DW mode are set by the experiment).
pub struct TrainingSet {
    /// Folder name and label in the results.
    pub label: String,
    pub data: Dataset,
    pub config: TrainConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 0: at initialisation.
    pub epoch: usize,
    /// Mean `|cos|` of each filter to its own initial value.
    pub similarity_to_init: f64,
    /// Mean `|cos|` of each filter to itself [`SETTLE_GAP`] epochs earlier
    /// (from that epoch on): above [`SETTLED`], the filters have stopped moving.
    #[serde(default)]
    pub similarity_to_earlier: Option<f64>,
    pub stats: SetStats,
}

/// How many epochs back a snapshot is compared with to tell whether the
/// filters still move.
pub const SETTLE_GAP: usize = 3;
/// The mean `|cos|` to the earlier snapshot above which they do not.
pub const SETTLED: f64 = 0.99;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    pub dataset: String,
    pub seed: u64,
    pub test_accuracy: f64,
    /// Time in training steps (evaluation and analysis not included).
    pub train_seconds: f64,
    pub epochs: Vec<EpochStats>,
}

/// Filters of several runs analysed together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledStats {
    /// A data set's label, or `all`.
    pub dataset: String,
    /// `initialisation` or `trained`.
    pub when: String,
    pub runs: usize,
    pub stats: SetStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub label: String,
    pub name: String,
    pub train_images: usize,
    pub epochs: usize,
    pub fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniversalityReport {
    pub model: String,
    pub kernel: String,
    pub k: usize,
    pub coverage_threshold: f32,
    pub seeds: Vec<u64>,
    pub datasets: Vec<DatasetInfo>,
    /// Wall time of this call (small when finished runs are only read back).
    pub total_seconds: f64,
    /// Training time summed over the runs (evaluation and analysis not included).
    pub training_seconds: f64,
    pub runs: Vec<RunStats>,
    pub pooled: Vec<PooledStats>,
}

fn run_dir(out: &Path, label: &str, seed: u64) -> PathBuf {
    out.join("runs").join(label).join(format!("seed-{seed}"))
}

/// Trains (or reads back) every set x seed with trainable DW layers, then
/// analyses every snapshot (the autoencoder route at initialisation, at the
/// end and on the pooled sets only).
pub fn run_universality<B: ModelAutodiffBackend>(
    sets: &[TrainingSet],
    seeds: &[u64],
    analysis: &AnalysisOptions,
    out: &Path,
    observer: &mut dyn Observer,
) -> Result<UniversalityReport> {
    let first = sets.first().ok_or_else(|| Error::Other("the experiment needs at least one data set".into()))?;
    if seeds.is_empty() {
        return Err(Error::Other("the experiment needs at least one seed".into()));
    }
    let kernel = KernelSize::square(first.config.model.dw_kernel);
    if let Some(other) = sets.iter().find(|s| s.config.model.dw_kernel != kernel.h) {
        return Err(Error::Other(format!(
            "every data set must train the same DW kernel size ({kernel}); {} trains {}x{}",
            other.label, other.config.model.dw_kernel, other.config.model.dw_kernel
        )));
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    let (mut all_init, mut all_trained) = (FilterSet::default(), FilterSet::default());
    let mut pooled = Vec::new();
    for set in sets {
        let (mut init, mut trained) = (FilterSet::default(), FilterSet::default());
        for &seed in seeds {
            let mut config = set.config.clone();
            config.seed = seed;
            config.dw.mode = DwMode::Trainable;
            let dir = run_dir(out, &set.label, seed);
            observer.note(&format!("== {} | seed {seed}", set.label));
            let options = RunOptions { resume: true, halt_after_steps: None, dw_snapshots: true };
            let summary = match train::<B>(&config, &set.data, &dir, &options, observer)? {
                Outcome::Finished(s) => s,
                Outcome::Halted { .. } => unreachable!("experiments never halt"),
            };
            observer.note(&format!("analysing the {} snapshots of {} | seed {seed}", config.epochs + 1, set.label));
            let snapshots =
                (0..=config.epochs).map(|e| FilterSet::load(&dw_snapshot_dir(&dir, e))).collect::<Result<Vec<_>>>()?;
            let mut epochs = Vec::new();
            for (epoch, snapshot) in snapshots.iter().enumerate() {
                let ends = epoch == 0 || epoch == config.epochs;
                epochs.push(EpochStats {
                    epoch,
                    similarity_to_init: similarity_to(&snapshots[0], snapshot, kernel)?,
                    similarity_to_earlier: match epoch.checked_sub(SETTLE_GAP) {
                        Some(earlier) => Some(similarity_to(&snapshots[earlier], snapshot, kernel)?),
                        None => None,
                    },
                    stats: analyse(snapshot, kernel, analysis, ends, seed)?,
                });
            }
            runs.push(RunStats {
                dataset: set.label.clone(),
                seed,
                test_accuracy: summary.test_accuracy,
                train_seconds: summary.train_seconds,
                epochs,
            });
            let [first, .., last] = &snapshots[..] else { unreachable!("at least two snapshots") };
            init.merge(first.clone());
            trained.merge(last.clone());
        }
        for (when, pool) in [("initialisation", &init), ("trained", &trained)] {
            pooled.push(PooledStats {
                dataset: set.label.clone(),
                when: when.into(),
                runs: seeds.len(),
                stats: analyse(pool, kernel, analysis, true, seeds[0])?,
            });
        }
        all_init.merge(init);
        all_trained.merge(trained);
    }
    if sets.len() > 1 {
        for (when, pool) in [("initialisation", &all_init), ("trained", &all_trained)] {
            pooled.push(PooledStats {
                dataset: "all".into(),
                when: when.into(),
                runs: seeds.len() * sets.len(),
                stats: analyse(pool, kernel, analysis, true, seeds[0])?,
            });
        }
    }
    Ok(UniversalityReport {
        model: first.config.model.name.clone(),
        kernel: kernel.to_string(),
        k: analysis.k,
        coverage_threshold: analysis::COVERAGE_THRESHOLD,
        seeds: seeds.to_vec(),
        datasets: sets
            .iter()
            .map(|s| DatasetInfo {
                label: s.label.clone(),
                name: s.data.name.clone(),
                train_images: s.data.train.len(),
                epochs: s.config.epochs,
                fraction: s.config.data.fraction,
            })
            .collect(),
        total_seconds: started.elapsed().as_secs_f64(),
        training_seconds: runs.iter().map(|r| r.train_seconds).sum(),
        runs,
        pooled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use masterkey_train::data::{synthetic, DataKind, DataSpec, Normalisation, Split};
    use masterkey_train::models::ModelSpec;
    use masterkey_train::train::{DwSettings, Quiet, DW_SNAPSHOT_DIR};

    fn tiny_set(label: &str, seed: u64) -> TrainingSet {
        let train = synthetic::make(96, 16, seed);
        let test = synthetic::make(48, 16, seed + 100);
        let data = Dataset {
            name: format!("synthetic {label}"),
            classes: synthetic::CLASSES,
            shape: train.shape,
            normalisation: Normalisation::of(&train),
            train: Split::Memory(train),
            test: Split::Memory(test),
        };
        let mut model = ModelSpec::named("reference", 1, synthetic::CLASSES, true).unwrap();
        model.depths = vec![2];
        model.dims = vec![16];
        let config = TrainConfig {
            model,
            data: DataSpec::whole(DataKind::Idx),
            // The experiment makes it trainable.
            dw: DwSettings::new(DwMode::Frozen),
            epochs: 2,
            batch_size: 16,
            lr: 1e-2,
            min_lr: 1e-4,
            weight_decay: 0.05,
            warmup_epochs: 0.5,
            label_smoothing: 0.1,
            seed: 0,
            eval_every: 1,
        };
        TrainingSet { label: label.into(), data, config }
    }

    #[test]
    fn trains_snapshots_and_analyses_every_epoch_reproducibly() {
        let sets = [tiny_set("stripes", 1), tiny_set("other-stripes", 2)];
        let dir = tempfile::tempdir().unwrap();
        let analysis = AnalysisOptions {
            k: 4,
            autoencoder: masterkey_search::AutoencoderOptions {
                steps: 200,
                candidates: 12,
                refine_rounds: 1,
                ..Default::default()
            },
        };
        let run =
            || run_universality::<masterkey_train::TrainBackend>(&sets, &[3, 4], &analysis, dir.path(), &mut Quiet);
        let report = run().unwrap();
        assert_eq!(report.runs.len(), 4);
        for run in &report.runs {
            assert_eq!(run.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![0, 1, 2]);
            assert_eq!(run.epochs[0].similarity_to_init, 1.0);
            assert!(run.epochs[2].similarity_to_init < 1.0, "training moved no filter");
            assert_eq!(run.epochs[0].stats.filters, 32);
            // The autoencoder runs at initialisation and at the end only.
            let with_ae: Vec<bool> = run.epochs.iter().map(|e| e.stats.autoencoder.is_some()).collect();
            assert_eq!(with_ae, vec![true, false, true]);
            assert!(dir
                .path()
                .join("runs")
                .join(&run.dataset)
                .join(format!("seed-{}", run.seed))
                .join(DW_SNAPSHOT_DIR)
                .join("epoch-2")
                .is_dir());
        }
        // Per set and over all, at initialisation and trained.
        let pooled: Vec<(String, String, usize)> =
            report.pooled.iter().map(|p| (p.dataset.clone(), p.when.clone(), p.stats.filters)).collect();
        assert_eq!(pooled.len(), 6);
        assert_eq!(pooled[4], ("all".to_string(), "initialisation".to_string(), 128));

        // The same seeds give the same numbers, read back from the finished runs.
        let again = run().unwrap();
        assert_eq!(again.runs, report.runs);
        assert_eq!(again.pooled, report.pooled);

        let results = dir.path().join("report").join("universality");
        output::write_results(&report, &results).unwrap();
        let md = std::fs::read_to_string(results.join("results.md")).unwrap();
        assert!(md.contains("| all | trained (4 runs) | 128 |"), "{md}");
        assert!(
            md.contains(
                "| key | k-means, initialisation | k-means as oriented, initialisation | autoencoder, initialisation |"
            ),
            "{md}"
        );
        assert_eq!(md.lines().filter(|l| l.starts_with("| key")).count(), 1 + 8, "{md}");
        for file in ["banks-all.png", "banks-stripes.png", "matched-per-epoch.svg", "published8-per-epoch.svg"] {
            assert!(results.join(file).is_file(), "{file}");
        }
        let back: UniversalityReport =
            serde_json::from_slice(&std::fs::read(results.join("results.json")).unwrap()).unwrap();
        assert_eq!(back, report);

        // `masterkey report` reads the folder back: section, tables, pictures.
        let page = masterkey_report::render(&dir.path().join("report")).unwrap();
        assert_eq!(page.sections, vec!["Do trained networks converge to the keys?".to_string()]);
        let trained = &report.pooled[5].stats;
        assert!(page.html.contains(&format!("{:.3}", trained.kmeans.mean_matched)));
        assert_eq!(page.html.matches("data:image/png;base64,").count(), 3, "banks of stripes, other-stripes, all");
        assert_eq!(page.html.matches("<svg").count(), 2);
    }
}
