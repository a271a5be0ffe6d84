"""Master key filters of depthwise-separable CNNs, from Python.

Every computation runs in masterkey's Rust core (the same library calls as
the ``masterkey`` command line tool), with the GIL released; this package
turns its results into NumPy arrays, dicts and pandas DataFrames.

>>> import masterkey
>>> filters = masterkey.extract(["efficientnet-lite0"])   # a default model id, or model files
>>> result = masterkey.fit(filters, "published8")
>>> result.coverage["0.8"]                                 # share of filters with |cos| >= 0.8

``masterkey.torch`` (imported on its own, needs PyTorch) freezes the
depthwise filters of any PyTorch model to a bank.

The published 8 master keys are from Babaiee et al., "Unveiling the
Unseen: Identifiable Clusters in Trained Depthwise Convolutional Kernels"
(ICLR 2024) and "The Master Key Filters Hypothesis" (arXiv 2412.16751),
CC BY 4.0.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from . import _core
from ._core import RESIZE_RULE, MasterkeyError

__all__ = [
    "Bank",
    "FilterSet",
    "FitResult",
    "MasterkeyError",
    "RESIZE_RULE",
    "SearchResult",
    "compare",
    "extract",
    "fit",
    "scalespace",
    "search",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(_core.DEFAULT_THRESHOLDS)
DEFAULT_DEAD_TOLERANCE = 1e-6

PathLike = Union[str, "os.PathLike[str]"]


def _pandas():
    try:
        import pandas
    except ImportError as e:  # pandas is optional: only tables need it
        raise ImportError("this call returns a pandas DataFrame: pip install pandas") from e
    return pandas


class FilterSet:
    """Depthwise filters grouped by kernel size, with provenance per filter."""

    def __init__(self, inner: _core.FilterSet):
        self._inner = inner

    @classmethod
    def load(cls, path: PathLike) -> "FilterSet":
        """A set saved by :meth:`save` or ``masterkey extract -o``."""
        return cls(_core.FilterSet.load(os.fspath(path)))

    @classmethod
    def from_array(
        cls, filters: Any, dead_tolerance: float = DEFAULT_DEAD_TOLERANCE, source: str = "array"
    ) -> "FilterSet":
        """Filters given as an array ``[n, h, w]`` (one layer named ``source``)."""
        return cls.from_layers([(source, filters)], dead_tolerance, source)

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[tuple[str, Any]],
        dead_tolerance: float = DEFAULT_DEAD_TOLERANCE,
        source: str = "array",
        format: str = "numpy",
    ) -> "FilterSet":
        """Depthwise layers as ``(name, array [channels, h, w])`` pairs in
        model order (depth is the position in the list)."""
        arrays = [(name, np.ascontiguousarray(a, dtype=np.float32)) for name, a in layers]
        return cls(_core.FilterSet.from_layers(arrays, dead_tolerance, source, format))

    def save(self, path: PathLike) -> None:
        """Writes ``filters.safetensors``, ``filters.csv`` and ``set.json`` (atomically)."""
        self._inner.save(os.fspath(path))

    def kernels(self) -> dict[str, int]:
        """Filter count per kernel size, e.g. ``{"3x3": 2624, "5x5": 6336}``."""
        return dict(self._inner.kernels())

    def filters(self, kernel: str) -> np.ndarray:
        """The raw filters of one kernel size (``"7x7"``) as float32 ``[n, h, w]``."""
        return self._inner.filters(kernel)

    def table(self):
        """One row per filter with the columns of ``filters.csv`` (pandas DataFrame)."""
        return _pandas().DataFrame(self._inner.columns())

    @property
    def dead_tolerance(self) -> float:
        return self._inner.dead_tolerance

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return repr(self._inner)


class Bank:
    """A bank of keys: normalised filters of one size, each with a label.

    ``Bank("published8")`` is the published bank; a path reads a bank file
    (safetensors or the published ``Filter k:`` text); an array ``[k, h, w]``
    makes a bank of those keys (normalised to zero mean and unit L2 norm).
    """

    def __init__(
        self,
        keys: Union[str, "os.PathLike[str]", np.ndarray, "Bank", _core.Bank] = "published8",
        *,
        name: str = "array",
        labels: Sequence[str] | None = None,
        source: str = "numpy array",
        licence: str = "unknown",
    ):
        if isinstance(keys, Bank):
            self._inner = keys._inner
        elif isinstance(keys, _core.Bank):
            self._inner = keys
        elif isinstance(keys, (str, os.PathLike)):
            self._inner = _core.Bank.resolve(os.fspath(keys))
        else:
            array = np.ascontiguousarray(keys, dtype=np.float32)
            labels = None if labels is None else list(labels)
            self._inner = _core.Bank.from_array(array, name, labels, source, licence)

    @property
    def keys(self) -> np.ndarray:
        """The normalised keys, float32 ``[k, h, w]``."""
        return self._inner.keys

    @property
    def labels(self) -> list[str]:
        return self._inner.labels

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def kernel(self) -> str:
        return self._inner.kernel

    @property
    def source(self) -> str:
        return self._inner.source

    @property
    def licence(self) -> str:
        return self._inner.licence

    def resized(self, kernel: str) -> tuple[np.ndarray, list[int]]:
        """The keys at another size by :data:`RESIZE_RULE`, and which keys were kept."""
        return self._inner.resized(kernel)

    def save(self, path: PathLike) -> None:
        """Writes a safetensors bank file (atomically; the same bytes every run)."""
        self._inner.save(os.fspath(path))

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return repr(self._inner)


BankLike = Union[Bank, str, "os.PathLike[str]", np.ndarray]
FiltersLike = Union[FilterSet, np.ndarray]


def _bank(bank: BankLike) -> _core.Bank:
    return Bank(bank)._inner


def extract(inputs: Union[PathLike, Sequence[PathLike]], dead_tolerance: float = DEFAULT_DEAD_TOLERANCE) -> FilterSet:
    """Every depthwise filter of model files (safetensors, PyTorch, ONNX,
    TFLite, TF.js; format detected from content), saved sets, or default
    model ids such as ``"efficientnet-lite0"`` (fetched, pinned and verified)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return FilterSet(_core.extract([os.fspath(p) for p in inputs], dead_tolerance))


@dataclass(frozen=True)
class FitResult:
    """The fit of filters to a bank.

    ``summary`` is the JSON object ``masterkey fit --json`` prints for the
    same filters; ``fits`` holds per-filter arrays in the set's order
    (``key_index``, -1 for dead filters, ``a``, ``b``, ``abs_cos``).
    """

    summary: dict[str, Any]
    fits: Mapping[str, np.ndarray]
    filter_set: FilterSet | None

    @property
    def coverage(self) -> dict[str, float]:
        """Share of non-dead filters whose best key reaches each ``|cos|`` threshold."""
        return self.summary["coverage"]

    @property
    def mean_abs_cos(self) -> float:
        return self.summary["mean_abs_cos"]

    def table(self):
        """One row per filter: its provenance (for a set), best key, a, b and |cos| (pandas DataFrame)."""
        columns: dict[str, Any] = {}
        if self.filter_set is not None:
            columns.update(self.filter_set._inner.columns())
        labels = np.array(self.summary["labels"] + [""], dtype=object)
        columns["key"] = labels[self.fits["key_index"]]
        columns.update(self.fits)
        return _pandas().DataFrame(columns)


def fit(
    filters: FiltersLike,
    bank: BankLike = "published8",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    depth_bands: int = _core.DEFAULT_DEPTH_BANDS,
    control_seed: int | None = 1,
    dead_tolerance: float = DEFAULT_DEAD_TOLERANCE,
    output: PathLike | None = None,
) -> FitResult:
    """Fits every filter to its best key as ``a * key + b`` (``masterkey fit``).

    ``filters`` is a :class:`FilterSet` or an array ``[n, h, w]`` (fitted in
    place, without a copy, when it is C-contiguous float32). ``control_seed``
    also fits random keys of the bank's shape, the coverage chance gives
    (``None``: no control). ``output`` (sets only) writes ``fits.csv`` and
    ``fit.json`` as ``masterkey fit -o`` does. ``dead_tolerance`` applies to
    arrays; a set keeps its own.
    """
    core_bank = _bank(bank)
    if isinstance(filters, FilterSet):
        out = None if output is None else os.fspath(output)
        text, fits = _core.fit_set_summary(
            filters._inner, core_bank, list(thresholds), depth_bands, control_seed, out
        )
        return FitResult(json.loads(text), fits, filters)
    if output is not None:
        raise MasterkeyError("output: fits.csv needs provenance; pass a FilterSet (FilterSet.from_array)")
    array = np.ascontiguousarray(filters, dtype=np.float32)
    if array.ndim != 3:
        raise MasterkeyError(f"filters: expected an array [n, h, w], found shape {array.shape}")
    text, fits = _core.fit_filters_summary(array, core_bank, list(thresholds), dead_tolerance, control_seed)
    return FitResult(json.loads(text), fits, None)


def _progress_callback(progress: Union[bool, None, Callable[[str, int, int], Any]]):
    """A callback for the core's ``(stage, done, total)`` reports: tqdm's bar
    when ``progress`` is True, or None and stderr is a terminal with tqdm
    installed; the callable itself when one is given."""
    if callable(progress):
        return progress, None
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None, None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True shows a tqdm bar: pip install tqdm") from None
        return None, None
    bar = tqdm(total=0, leave=False)

    def report(stage: str, done: int, total: int) -> None:
        bar.set_description(stage, refresh=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    return report, bar


@dataclass(frozen=True)
class SearchResult:
    """A found bank and the JSON ``masterkey search --json`` prints (``usage``, ``curve``, ...)."""

    bank: Bank
    summary: dict[str, Any]

    @property
    def curve(self):
        """Coverage versus K, one row per K (pandas DataFrame)."""
        rows = [
            {"k": p["k"], "mean_abs_cos": p["mean_abs_cos"], **{f"coverage_{t}": c for t, c in p["coverage"].items()}}
            for p in self.summary["curve"]["points"]
        ]
        return _pandas().DataFrame(rows)


def search(
    filters: FiltersLike,
    method: str = "kmeans",
    k: Union[int, str] = "auto",
    *,
    kernel: str | None = None,
    progress: Union[bool, None, Callable[[str, int, int], Any]] = None,
    **options: Any,
) -> SearchResult:
    """Finds K keys in the filters of one kernel size (``masterkey search``).

    ``method``: ``"kmeans"`` (sign-invariant spherical k-means),
    ``"autoencoder"`` (the paper's route) or ``"pca"`` (eigenfilters);
    ``k``: a number or ``"auto"`` (the elbow of the coverage-vs-K curve).
    Further options as the CLI's: ``seed``, ``restarts``, ``max_iter``,
    ``max_k``, ``candidates``, ``steps``, ``refine_rounds``, ``thresholds``.
    """
    if not isinstance(filters, FilterSet):
        filters = FilterSet.from_array(filters)
    if k == "auto":
        k_value = None
    elif isinstance(k, int) and not isinstance(k, bool):
        k_value = k
    else:
        raise MasterkeyError(f"k: expected a number of keys or 'auto', found {k!r}")
    callback, bar = _progress_callback(progress)
    try:
        found, text = _core.search(filters._inner, method, k_value, kernel, progress=callback, **options)
    finally:
        if bar is not None:
            bar.close()
    return SearchResult(Bank(found), json.loads(text))


def compare(bank_a: BankLike, bank_b: BankLike, symmetries: bool = False) -> dict[str, Any]:
    """Matches the keys of two banks one to one, sign free (``masterkey compare --json``)."""
    return json.loads(_core.compare(_bank(bank_a), _bank(bank_b), symmetries))


from . import scalespace  # noqa: E402  (uses the names above)
