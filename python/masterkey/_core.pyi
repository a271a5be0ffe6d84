"""Type stubs of the Rust extension module (crates/masterkey-py)."""

from typing import Callable, Optional, Sequence

import numpy as np
import numpy.typing as npt

RESIZE_RULE: str
DEFAULT_THRESHOLDS: list[float]
DEFAULT_DEPTH_BANDS: int

class MasterkeyError(ValueError): ...

class FilterSet:
    @staticmethod
    def load(dir: str) -> FilterSet: ...
    @staticmethod
    def from_layers(
        layers: list[tuple[str, npt.NDArray[np.float32]]],
        dead_tolerance: float = ...,
        source: str = ...,
        format: str = ...,
    ) -> FilterSet: ...
    def save(self, dir: str) -> None: ...
    def kernels(self) -> dict[str, int]: ...
    def filters(self, kernel: str) -> npt.NDArray[np.float32]: ...
    def columns(self) -> dict[str, object]: ...
    @property
    def dead_tolerance(self) -> float: ...
    def __len__(self) -> int: ...

class Bank:
    @staticmethod
    def resolve(spec: str) -> Bank: ...
    @staticmethod
    def from_array(
        keys: npt.NDArray[np.float32],
        name: str = ...,
        labels: Optional[list[str]] = ...,
        source: str = ...,
        licence: str = ...,
    ) -> Bank: ...
    @property
    def keys(self) -> npt.NDArray[np.float32]: ...
    def resized(self, kernel: str) -> tuple[npt.NDArray[np.float32], list[int]]: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def name(self) -> str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def licence(self) -> str: ...
    def save(self, path: str) -> None: ...
    def __len__(self) -> int: ...

def extract(inputs: list[str], dead_tolerance: float = ...) -> FilterSet: ...
def fit_set_summary(
    set: FilterSet,
    bank: Bank,
    thresholds: list[float],
    depth_bands: int,
    control_seed: Optional[int],
    output: Optional[str] = ...,
) -> tuple[str, dict[str, npt.NDArray[np.generic]]]: ...
def fit_filters_summary(
    filters: npt.NDArray[np.float32],
    bank: Bank,
    thresholds: list[float],
    dead_tolerance: float,
    control_seed: Optional[int] = ...,
) -> tuple[str, dict[str, npt.NDArray[np.generic]]]: ...
def search(
    set: FilterSet,
    method: str = ...,
    k: Optional[int] = ...,
    kernel: Optional[str] = ...,
    seed: int = ...,
    restarts: int = ...,
    max_iter: int = ...,
    max_k: int = ...,
    candidates: int = ...,
    steps: int = ...,
    refine_rounds: int = ...,
    thresholds: Sequence[float] = ...,
    progress: Optional[Callable[[str, int, int], object]] = ...,
) -> tuple[Bank, str]: ...
def compare(a: Bank, b: Bank, symmetries: bool = ...) -> str: ...
def scalespace_fit(bank: Bank, criterion: str = ...) -> str: ...
def scalespace_bank(size: int = ..., from_bank: Optional[Bank] = ...) -> Bank: ...
