"""Shared fixtures: the masterkey CLI (to check that Python and the CLI give
the same numbers) and the real EfficientNet-Lite0 checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import masterkey

ROOT = Path(__file__).resolve().parents[2]
# The helper modules beside the tests (nets.py), importable under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def cli():
    """Runs the masterkey CLI (``MASTERKEY_BIN``, else the workspace's debug
    build in ``CARGO_TARGET_DIR`` or ``target/``, built here if missing) and
    returns its parsed ``--json`` output."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = Path(os.environ.get("MASTERKEY_BIN", target / "debug" / "masterkey"))
    if not binary.is_file():
        subprocess.run(["cargo", "build", "-p", "masterkey-cli"], cwd=ROOT, check=True)

    def run(*args: str, parse: bool = True):
        out = subprocess.run([str(binary), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.splitlines()[-1]) if parse else out

    return run


@pytest.fixture(scope="session")
def lite0() -> masterkey.FilterSet:
    """Every depthwise filter of the real EfficientNet-Lite0 (fetched once into the cache)."""
    return masterkey.extract(["efficientnet-lite0"])
