//! `masterkey._core`: the Rust core as a Python extension module. The
//! `masterkey` Python package (python/masterkey) wraps it with DataFrames,
//! progress bars and `masterkey.torch`; every computation happens here, in
//! the same library calls the CLI makes.
//!
//! Summaries cross the boundary as the JSON the CLI prints (parsed on the
//! Python side), so both report the same numbers by construction; filters,
//! keys and per-filter fits cross as NumPy arrays.

use std::path::PathBuf;

use masterkey_core::fit::{fit_array, save_fits_csv, FitRecord, RandomControl};
use masterkey_core::{fit_set, Bank, FilterSet, FitOptions, KernelSize, ModelFilters};
use numpy::{IntoPyArray, PyArray3, PyArrayMethods, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

mod analysis;

pyo3::create_exception!(
    _core,
    MasterkeyError,
    PyValueError,
    "A masterkey error: one line naming the file or setting, what was expected and what was found."
);

/// A masterkey error as a Python exception carrying the CLI's one-line message.
pub(crate) fn error(e: impl std::fmt::Display) -> PyErr {
    MasterkeyError::new_err(masterkey_core::one_line(&e.to_string()))
}

fn kernel_of(text: &str) -> PyResult<KernelSize> {
    text.parse::<KernelSize>().map_err(|e| error(format!("kernel `{text}`: {e}")))
}

/// `[n, h, w]` f32 array (C order) as a flat slice and its kernel size.
fn filters_of<'a>(array: &'a PyReadonlyArray3<'_, f32>) -> PyResult<(&'a [f32], KernelSize)> {
    let shape = array.shape();
    let values = array
        .as_slice()
        .map_err(|_| error("filters: expected a C-contiguous float32 array [n, h, w], found a strided one"))?;
    Ok((values, KernelSize::new(shape[1], shape[2])))
}

/// Model files, saved filter sets, or default model ids (fetched into the
/// cache, pinned and verified, as the CLI does).
fn resolve_inputs(inputs: Vec<String>) -> PyResult<Vec<PathBuf>> {
    inputs
        .into_iter()
        .map(|spec| {
            let path = PathBuf::from(&spec);
            match masterkey_fetch::model(&spec) {
                Some(member) if !path.exists() => masterkey_fetch::ensure(member).map_err(error),
                _ => Ok(path),
            }
        })
        .collect()
}

/// Every depthwise filter of some models, grouped by kernel size, with
/// provenance per filter.
#[pyclass(name = "FilterSet", module = "masterkey._core", frozen)]
pub struct PyFilterSet {
    pub(crate) set: FilterSet,
}

#[pymethods]
impl PyFilterSet {
    /// Reads a filter set saved by `save` or `masterkey extract -o`.
    #[staticmethod]
    fn load(py: Python<'_>, dir: PathBuf) -> PyResult<Self> {
        let set = py.detach(|| FilterSet::load(&dir)).map_err(error)?;
        Ok(PyFilterSet { set })
    }

    /// Depthwise layers given as `(name, array [channels, h, w])` pairs, in
    /// model order, from the model named `source` (depth = position in the list).
    #[staticmethod]
    #[pyo3(signature = (layers, dead_tolerance = masterkey_core::kernel::DEFAULT_DEAD_TOLERANCE, source = "array".to_string(), format = "numpy".to_string()))]
    fn from_layers(
        layers: Vec<(String, PyReadonlyArray3<'_, f32>)>,
        dead_tolerance: f32,
        source: String,
        format: String,
    ) -> PyResult<Self> {
        let layers = layers
            .iter()
            .map(|(name, filters)| {
                let (values, kernel) = filters_of(filters)?;
                masterkey_core::DwLayer::new(name.clone(), kernel, filters.shape()[0], values.to_vec())
                    .map_err(|e| error(format!("{source}: layer `{name}`: {e}")))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let mut set = FilterSet::new(dead_tolerance);
        set.add_model(&ModelFilters { source: source.into(), format, layers });
        Ok(PyFilterSet { set })
    }

    /// Writes the set (filters.safetensors, filters.csv, set.json), atomically.
    fn save(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        py.detach(|| self.set.save(&dir)).map_err(error)
    }

    fn __len__(&self) -> usize {
        self.set.len()
    }

    #[getter]
    fn dead_tolerance(&self) -> f32 {
        self.set.dead_tolerance
    }

    /// Filter count per kernel size, e.g. `{"3x3": 2624, "5x5": 6336}`.
    fn kernels(&self) -> std::collections::BTreeMap<String, usize> {
        self.set.kernel_counts()
    }

    /// The filters of one kernel size as a float32 array `[n, h, w]`, raw
    /// (not normalised), row 0 at the top.
    fn filters<'py>(&self, py: Python<'py>, kernel: &str) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let kernel = kernel_of(kernel)?;
        let group = self.set.groups.get(&kernel).ok_or_else(|| {
            error(format!("no filters of kernel {kernel} in the set (it has: {:?})", self.set.kernel_counts()))
        })?;
        group.weights.clone().into_pyarray(py).reshape([group.len(), kernel.h, kernel.w])
    }

    /// The columns of filters.csv (one entry per filter, kernel by kernel in
    /// the order of `kernels()`), as a dict of lists and arrays.
    fn columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let all = || self.set.groups.values().flat_map(|g| g.provenance.iter());
        let columns = PyDict::new(py);
        columns.set_item("kernel", all().map(|p| format!("{}x{}", p.kernel_h, p.kernel_w)).collect::<Vec<_>>())?;
        columns.set_item("source_file", all().map(|p| p.source_file.as_str()).collect::<Vec<_>>())?;
        columns.set_item("format", all().map(|p| p.format.as_str()).collect::<Vec<_>>())?;
        columns.set_item("layer_name", all().map(|p| p.layer_name.as_str()).collect::<Vec<_>>())?;
        columns.set_item("layer_index", all().map(|p| p.layer_index as u64).collect::<Vec<_>>().into_pyarray(py))?;
        columns.set_item("depth", all().map(|p| p.depth).collect::<Vec<_>>().into_pyarray(py))?;
        columns.set_item("channel", all().map(|p| p.channel as u64).collect::<Vec<_>>().into_pyarray(py))?;
        columns.set_item("mean", all().map(|p| p.mean).collect::<Vec<_>>().into_pyarray(py))?;
        columns.set_item("centered_norm", all().map(|p| p.centered_norm).collect::<Vec<_>>().into_pyarray(py))?;
        columns.set_item("dead", all().map(|p| p.dead).collect::<Vec<_>>().into_pyarray(py))?;
        Ok(columns)
    }

    fn __repr__(&self) -> String {
        format!(
            "FilterSet({} filters, {} dead, kernels {:?})",
            self.set.len(),
            self.set.dead_count(),
            self.set.kernel_counts()
        )
    }
}

/// Reads every depthwise filter of `inputs` (model files of any supported
/// format, saved sets, or default model ids), without the GIL.
#[pyfunction]
#[pyo3(signature = (inputs, dead_tolerance = masterkey_core::kernel::DEFAULT_DEAD_TOLERANCE))]
fn extract(py: Python<'_>, inputs: Vec<String>, dead_tolerance: f32) -> PyResult<PyFilterSet> {
    let set = py.detach(|| {
        let paths = resolve_inputs(inputs)?;
        masterkey_formats::read_inputs(&paths, dead_tolerance, |_, _| {}).map_err(error)
    })?;
    Ok(PyFilterSet { set })
}

/// A bank of keys: normalised filters of one size, each with a label.
#[pyclass(name = "Bank", module = "masterkey._core", frozen)]
pub struct PyBank {
    pub(crate) bank: Bank,
}

#[pymethods]
impl PyBank {
    /// A built-in bank (`published8`) or a bank file (safetensors or the
    /// published `Filter k:` text).
    #[staticmethod]
    fn resolve(spec: &str) -> PyResult<Self> {
        Ok(PyBank { bank: Bank::resolve(spec).map_err(error)? })
    }

    /// Keys given as an array `[k, h, w]` (normalised here: zero mean, unit L2 norm).
    #[staticmethod]
    #[pyo3(signature = (keys, name = "array".to_string(), labels = None, source = "numpy array".to_string(), licence = "unknown".to_string()))]
    fn from_array(
        keys: PyReadonlyArray3<'_, f32>,
        name: String,
        labels: Option<Vec<String>>,
        source: String,
        licence: String,
    ) -> PyResult<Self> {
        let (values, kernel) = filters_of(&keys)?;
        let k = keys.shape()[0];
        let labels = labels.unwrap_or_else(|| (1..=k).map(|i| format!("key{i}")).collect());
        let bank = Bank::new(&name, kernel, values.to_vec(), labels, &source, &licence)
            .map_err(|e| error(format!("bank `{name}`: {e}")))?;
        Ok(PyBank { bank })
    }

    /// The normalised keys as a float32 array `[k, h, w]`.
    #[getter]
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let b = &self.bank;
        b.keys.clone().into_pyarray(py).reshape([b.len(), b.kernel.h, b.kernel.w])
    }

    /// The keys resized to `kernel` by the bank's resize rule (centre crop or
    /// zero pad, renormalised), and the indices of the keys kept (a key that
    /// becomes constant is dropped).
    fn resized<'py>(&self, py: Python<'py>, kernel: &str) -> PyResult<(Bound<'py, PyArray3<f32>>, Vec<usize>)> {
        let kernel = kernel_of(kernel)?;
        let (keys, kept) = self.bank.resized(kernel);
        Ok((keys.into_pyarray(py).reshape([kept.len(), kernel.h, kernel.w])?, kept))
    }

    #[getter]
    fn labels(&self) -> Vec<String> {
        self.bank.labels.clone()
    }
    #[getter]
    fn name(&self) -> String {
        self.bank.name.clone()
    }
    #[getter]
    fn kernel(&self) -> String {
        self.bank.kernel.to_string()
    }
    #[getter]
    fn source(&self) -> String {
        self.bank.source.clone()
    }
    #[getter]
    fn licence(&self) -> String {
        self.bank.licence.clone()
    }

    /// Writes the bank as a safetensors bank file (atomically, same bytes every run).
    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.bank.save(&path).map_err(error)
    }

    fn __len__(&self) -> usize {
        self.bank.len()
    }

    fn __repr__(&self) -> String {
        format!("Bank({:?}, {} keys of {})", self.bank.name, self.bank.len(), self.bank.kernel)
    }
}

/// Per-filter fits of a set as arrays: key index (-1 for dead), a, b, |cos|,
/// the four columns gathered in parallel (arrays of filters get them from
/// `fit_array` directly).
fn fit_arrays<'py>(py: Python<'py>, fits: &[masterkey_core::FilterFit]) -> PyResult<Bound<'py, PyDict>> {
    use rayon::prelude::*;
    let column = |f: fn(&masterkey_core::FilterFit) -> f32| fits.par_iter().map(f).collect::<Vec<f32>>();
    let ((key_index, a), (b, abs_cos)) = py.detach(|| {
        rayon::join(
            || {
                rayon::join(
                    || fits.par_iter().map(|f| f.key.map_or(-1, i32::from)).collect::<Vec<_>>(),
                    || column(|f| f.a),
                )
            },
            || rayon::join(|| column(|f| f.b), || column(|f| f.abs_cos)),
        )
    });
    let out = PyDict::new(py);
    out.set_item("key_index", key_index.into_pyarray(py))?;
    out.set_item("a", a.into_pyarray(py))?;
    out.set_item("b", b.into_pyarray(py))?;
    out.set_item("abs_cos", abs_cos.into_pyarray(py))?;
    Ok(out)
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(error)
}

/// Fits a filter set to a bank as `masterkey fit` does: the summary as the
/// JSON `fit --json` prints (random control included), per-filter fits as
/// arrays in the set's order; with `output`, also `fits.csv` and `fit.json`.
#[pyfunction]
#[pyo3(signature = (set, bank, thresholds, depth_bands, control_seed, output = None))]
fn fit_set_summary<'py>(
    py: Python<'py>,
    set: &PyFilterSet,
    bank: &PyBank,
    thresholds: Vec<f32>,
    depth_bands: usize,
    control_seed: Option<u64>,
    output: Option<PathBuf>,
) -> PyResult<(String, Bound<'py, PyDict>)> {
    let (set, bank) = (&set.set, &bank.bank);
    let (fits, record) = py
        .detach(|| {
            let options = FitOptions { thresholds, depth_bands };
            let (fits, report) = fit_set(set, bank, &options);
            let record = FitRecord {
                inputs: set.sources(),
                dead_tolerance: set.dead_tolerance,
                random_control: control_seed.map(|seed| RandomControl::compute(set, bank, &options, seed)),
                report,
            };
            if let Some(dir) = &output {
                save_fits_csv(set, &fits, bank, &dir.join("fits.csv"))?;
                let text =
                    serde_json::to_vec_pretty(&record).map_err(|e| masterkey_core::Error::Other(e.to_string()))?;
                masterkey_core::atomic::write_file(&dir.join("fit.json"), &text)?;
            }
            Ok::<_, masterkey_core::Error>((fits, record))
        })
        .map_err(error)?;
    let all: Vec<_> = fits.values().flatten().copied().collect();
    Ok((json(&record)?, fit_arrays(py, &all)?))
}

/// Fits raw filters `[n, h, w]` to a bank without copying them and without
/// the GIL: the summary JSON (one kernel, no depth bands; with `control_seed`,
/// the random control as `fit` computes it) and per-filter arrays.
#[pyfunction]
#[pyo3(signature = (filters, bank, thresholds, dead_tolerance, control_seed = None))]
fn fit_filters_summary<'py>(
    py: Python<'py>,
    filters: PyReadonlyArray3<'py, f32>,
    bank: &PyBank,
    thresholds: Vec<f32>,
    dead_tolerance: f32,
    control_seed: Option<u64>,
) -> PyResult<(String, Bound<'py, PyDict>)> {
    let (values, kernel) = filters_of(&filters)?;
    let bank = &bank.bank;
    let (columns, record) = py.detach(|| {
        let (columns, report) = fit_array(values, kernel, dead_tolerance, bank, &thresholds, "array");
        let random_control = control_seed.map(|seed| {
            let random = Bank::random(bank.len(), bank.kernel, seed);
            let (_, report) = fit_array(values, kernel, dead_tolerance, &random, &thresholds, "array");
            RandomControl { bank: random.name, seed, overall: report.overall, per_kernel: report.per_kernel }
        });
        (columns, FitRecord { inputs: vec!["array".into()], dead_tolerance, report, random_control })
    });
    // The columns move into NumPy arrays without a copy.
    let out = PyDict::new(py);
    out.set_item("key_index", columns.key_index.into_pyarray(py))?;
    out.set_item("a", columns.a.into_pyarray(py))?;
    out.set_item("b", columns.b.into_pyarray(py))?;
    out.set_item("abs_cos", columns.abs_cos.into_pyarray(py))?;
    Ok((json(&record)?, out))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MasterkeyError", m.py().get_type::<MasterkeyError>())?;
    m.add("RESIZE_RULE", masterkey_core::RESIZE_RULE)?;
    m.add("DEFAULT_THRESHOLDS", FitOptions::default().thresholds)?;
    m.add("DEFAULT_DEPTH_BANDS", FitOptions::default().depth_bands)?;
    m.add_class::<PyFilterSet>()?;
    m.add_class::<PyBank>()?;
    m.add_function(wrap_pyfunction!(extract, m)?)?;
    m.add_function(wrap_pyfunction!(fit_set_summary, m)?)?;
    m.add_function(wrap_pyfunction!(fit_filters_summary, m)?)?;
    analysis::register(m)
}
