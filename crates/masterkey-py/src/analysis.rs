//! Search, compare and the scale-space models, as the CLI's `search`,
//! `compare` and `scalespace` commands compute them.

use masterkey_core::KernelSize;
use masterkey_search::filters::{pick_group, NormalisedFilters};
use masterkey_search::{
    compare as compare_banks, search as search_keys, AutoencoderOptions, KChoice, KMeansOptions, Method, SearchOptions,
    SearchSummary,
};
use pyo3::prelude::*;

use crate::{error, PyBank, PyFilterSet};

/// Finds a bank of keys in the filters of one kernel size of `set` (the
/// largest group unless `kernel` names one), without the GIL; `progress`,
/// if given, is called as `progress(stage, done, total)`. Returns the bank
/// and the JSON `search --json` prints.
#[pyfunction]
#[pyo3(signature = (
    set, method = "kmeans", k = None, kernel = None, seed = 1,
    restarts = KMeansOptions::default().restarts, max_iter = KMeansOptions::default().max_iter, max_k = 16,
    candidates = AutoencoderOptions::default().candidates, steps = AutoencoderOptions::default().steps,
    refine_rounds = AutoencoderOptions::default().refine_rounds,
    thresholds = masterkey_core::FitOptions::default().thresholds, progress = None,
))]
#[allow(clippy::too_many_arguments)]
fn search(
    py: Python<'_>,
    set: &PyFilterSet,
    method: &str,
    k: Option<usize>,
    kernel: Option<&str>,
    seed: u64,
    restarts: usize,
    max_iter: usize,
    max_k: usize,
    candidates: usize,
    steps: usize,
    refine_rounds: usize,
    thresholds: Vec<f32>,
    progress: Option<Py<PyAny>>,
) -> PyResult<(PyBank, String)> {
    let kernel =
        kernel.map(|k| k.parse::<KernelSize>().map_err(|e| error(format!("kernel `{k}`: {e}")))).transpose()?;
    let method = match method {
        "kmeans" => Method::KMeans(KMeansOptions { restarts, max_iter, seed, ..KMeansOptions::default() }),
        "autoencoder" => Method::Autoencoder(AutoencoderOptions {
            candidates,
            steps,
            refine_rounds,
            seed,
            ..AutoencoderOptions::default()
        }),
        "pca" => Method::Pca,
        other => return Err(error(format!("method: expected kmeans, autoencoder or pca, found `{other}`"))),
    };
    let options = SearchOptions { method, k: k.map_or(KChoice::Elbow, KChoice::Fixed), max_k, thresholds };
    let set = &set.set;
    let outcome = py.detach(|| {
        let group = pick_group(set, kernel)?;
        let filters = NormalisedFilters::from_group(group);
        if filters.is_empty() {
            return Err(masterkey_core::Error::Other(format!(
                "all {} filters of kernel {} are dead; nothing to search",
                group.len(),
                group.kernel
            )));
        }
        let label = set.sources().join(", ");
        let report = |stage: &str, done: usize, total: usize| {
            if let Some(callback) = &progress {
                // A failing callback must not stop the search; its error is shown once by Python.
                Python::attach(|py| {
                    if let Err(e) = callback.call1(py, (stage, done, total)) {
                        e.print(py);
                    }
                });
            }
        };
        Ok((search_keys(&filters, &label, &options, None, &report)?, filters))
    });
    let (outcome, filters) = outcome.map_err(error)?;
    let summary = serde_json::to_string(&SearchSummary::new(set.sources(), &options.method, &filters, &outcome))
        .map_err(error)?;
    Ok((PyBank { bank: outcome.bank }, summary))
}

/// Matches the keys of two banks one to one (sign free; with `symmetries`,
/// B's keys may be rotated, flipped or transposed): the JSON `compare --json` prints.
#[pyfunction]
#[pyo3(signature = (a, b, symmetries = false))]
fn compare(a: &PyBank, b: &PyBank, symmetries: bool) -> PyResult<String> {
    serde_json::to_string(&compare_banks(&a.bank, &b.bank, symmetries)).map_err(error)
}

/// Fits each key of `bank` to the scale-space families (`criterion` l2 or
/// l1): the JSON `scalespace fit --json` prints.
#[pyfunction]
#[pyo3(signature = (bank, criterion = "l2"))]
fn scalespace_fit(py: Python<'_>, bank: &PyBank, criterion: &str) -> PyResult<String> {
    let criterion = criterion.parse().map_err(|e: String| error(format!("criterion: {e}")))?;
    let options = masterkey_scalespace::FitOptions { criterion, ..Default::default() };
    let fit = py.detach(|| masterkey_scalespace::fit_bank(&bank.bank, &options)).map_err(error)?;
    serde_json::to_string(&fit).map_err(error)
}

/// The idealised bank at an odd `size` (3 to 31): the models of the
/// published 8 keys, or with `from_bank` the best models (default fit) of
/// that bank's keys, as `scalespace bank --from-fit` makes it.
#[pyfunction]
#[pyo3(signature = (size = 7, from_bank = None))]
fn scalespace_bank(py: Python<'_>, size: usize, from_bank: Option<&PyBank>) -> PyResult<PyBank> {
    let bank = py
        .detach(|| match from_bank {
            None => masterkey_scalespace::ideal8(size),
            Some(source) => {
                let fit = masterkey_scalespace::fit_bank(&source.bank, &masterkey_scalespace::FitOptions::default())?;
                masterkey_scalespace::ideal_bank_from_fit(&fit, &source.bank.licence, size)
            }
        })
        .map_err(error)?;
    Ok(PyBank { bank })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(search, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(scalespace_fit, m)?)?;
    m.add_function(wrap_pyfunction!(scalespace_bank, m)?)?;
    Ok(())
}
