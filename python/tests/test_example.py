"""examples/imagenet_frozen.py end to end: torchrun with two CPU processes
(gloo) on a tiny ImageFolder written here, then --resume."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed in this venv (scripts/python-tests could not install it)"
)
pytest.importorskip("timm", reason="timm is not installed in this venv (scripts/python-tests could not install it)")
Image = pytest.importorskip("PIL.Image", reason="Pillow (a torchvision dependency) is not installed")

import masterkey  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imagenet_frozen.py"


def write_folder(root: Path) -> None:
    """Two classes (bright and dark noise), 8 training and 4 validation images each."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for label, level in (("bright", 180), ("dark", 60)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def run(*args: str) -> str:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(EXAMPLE), *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_two_processes_train_frozen_keys_and_resume(tmp_path):
    write_folder(tmp_path / "data")
    common = ["--data", str(tmp_path / "data"), "--model", "convnextv2_atto", "--image-size", "32"]
    common += ["--batch-size", "4", "--workers", "0", "--warmup-epochs", "1", "--output", str(tmp_path / "run")]
    first = run(*common, "--epochs", "2")
    assert "epoch 2/2" in first and "2 process(es)" in first and "val top-1" in first, first
    state = torch.load(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 2
    keys = {k: v for k, v in state["model"].items() if k.endswith(".key")}
    assert keys, "the depthwise layers were frozen"
    published, _ = masterkey.Bank().resized("7x7")
    for name, key in keys.items():
        expected = published[np.arange(key.shape[0]) % len(published)]
        np.testing.assert_array_equal(key.numpy()[:, 0], expected, err_msg=name)

    resumed = run(*common, "--epochs", "3", "--resume")
    assert "epoch 3/3" in resumed and "epoch 1/3" not in resumed, resumed
    assert torch.load(tmp_path / "run" / "checkpoint.pt")["epoch"] == 3
