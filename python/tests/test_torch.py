"""masterkey.torch: frozen keys in a PyTorch model built here, their
gradients, state dicts, and a two-process DDP run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed in this venv (scripts/python-tests could not install it)"
)
from torch import nn  # noqa: E402

import masterkey  # noqa: E402
from masterkey.torch import FrozenDepthwiseConv2d, depthwise_convs, dw_filters, freeze_depthwise  # noqa: E402
from nets import small_net  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def other_state(model: nn.Module) -> dict:
    """Every parameter and buffer outside the depthwise layers."""
    dw = {name for name, _ in depthwise_convs(model)}
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in dw}


@pytest.mark.parametrize("channels_last", [False, True])
def test_freezing_replaces_only_the_depthwise_layers_with_the_resized_keys(channels_last):
    model, reference = small_net(), small_net()
    freeze_depthwise(model, "published8")
    frozen = [m for _, m in depthwise_convs(model)]
    assert len(frozen) == 4 and all(isinstance(m, FrozenDepthwiseConv2d) for m in frozen)
    before, after = other_state(reference), other_state(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    bank = masterkey.Bank("published8")
    for layer in frozen:
        keys, kept = bank.resized("x".join(map(str, layer.kernel_size)))
        expected = torch.from_numpy(keys[np.arange(layer.in_channels) % len(kept)]).unsqueeze(1)
        assert torch.equal(layer.key, expected)
        assert not layer.key.requires_grad and layer.offset.requires_grad and "scale" in dict(layer.named_buffers())
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    y = model(x)
    assert y.shape == (2, 4) and torch.isfinite(y).all()


def test_fitting_a_bank_of_the_layers_own_filters_changes_no_output():
    model = small_net(1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    # Every DW filter of the model, zero-padded to 7x7: resized back to a
    # layer's size by the bank's rule (centre crop) it is that filter again.
    own = []
    for _, conv in depthwise_convs(model):
        w = conv.weight.detach().numpy()[:, 0]
        pad = (7 - w.shape[1]) // 2
        own.append(np.pad(w, ((0, 0), (pad, pad), (pad, pad))))
    freeze_depthwise(model, masterkey.Bank(np.concatenate(own)), assignment="fit")
    assert all(isinstance(m, FrozenDepthwiseConv2d) for _, m in depthwise_convs(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trainer_fixture(tmp_path_factory):
    """Frozen DW layers of `masterkey train` with their inputs, outputs and
    gradients, written by the Rust example frozen_dw_fixture."""
    out = tmp_path_factory.mktemp("fixture") / "frozen_dw.json"
    # The example `cargo test --workspace` built (with the features that
    # scripts/test gives it; a `cargo run` without them would build the
    # training stack again), else built here.
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    built = target / "debug" / "examples" / "frozen_dw_fixture"
    command = [str(built)] if built.is_file() else [
        "cargo", "run", "-q", "-p", "masterkey-train", "--example", "frozen_dw_fixture", "--"
    ]
    subprocess.run([*command, str(out)], cwd=ROOT, check=True)
    return json.loads(out.read_text())["cases"]


def test_a_frozen_layer_computes_what_masterkey_trains(trainer_fixture):
    """Same keys, scale, offset, bias and input: the same output and
    gradients as the trainer's frozen layer (within 1e-5)."""
    for case in trainer_fixture:
        n, c, h, w = case["x_shape"]
        k, stride = case["kernel"], case["stride"]
        conv = nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c)
        key = torch.tensor(case["key"]).reshape(c, 1, k, k)
        bank_keys, kept = masterkey.Bank().resized(f"{k}x{k}")
        assert torch.equal(key, torch.from_numpy(bank_keys[np.arange(c) % len(kept)]).unsqueeze(1)), "round-robin keys"
        layer = FrozenDepthwiseConv2d(
            conv, key, torch.tensor(case["scale"]), torch.tensor(case["offset"]), learn_scale=case["learn_scale"]
        )
        with torch.no_grad():
            layer.bias.copy_(torch.tensor(case["bias"]))
        x = torch.tensor(case["x"]).reshape(n, c, h, w).requires_grad_()
        y = layer(x)
        assert list(y.shape) == case["y_shape"]
        close = lambda got, want, what: torch.testing.assert_close(  # noqa: E731
            got.flatten(), torch.tensor(want), rtol=1e-5, atol=1e-5, msg=lambda m: f"stride {stride} {what}: {m}"
        )
        close(y.detach(), case["y"], "output")
        (y * torch.tensor(case["g"]).reshape(y.shape)).sum().backward()
        close(x.grad, case["dx"], "input gradient")
        close(layer.offset.grad, case["doffset"], "offset gradient")
        close(layer.bias.grad, case["dbias"], "bias gradient")
        if case["learn_scale"]:
            close(layer.scale.grad, case["dscale"], "scale gradient")


def test_gradients_reach_the_offsets_and_the_scale_only_when_asked():
    for learn_scale in (False, True):
        model = freeze_depthwise(small_net(), learn_scale=learn_scale).train()
        model(torch.randn(2, 3, 16, 16)).square().sum().backward()
        for _, layer in depthwise_convs(model):
            assert layer.offset.grad is not None and layer.offset.grad.abs().sum() > 0
            assert isinstance(layer.scale, nn.Parameter) == learn_scale
            if learn_scale:
                assert layer.scale.grad.abs().sum() > 0
        # The offset gradient is that of a filter offset: the sum of the filter gradient's taps.
        layer = next(m for _, m in depthwise_convs(model))
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        with torch.no_grad():
            conv.weight.copy_(layer.weight)
            conv.bias.copy_(layer.bias)
        x = torch.randn(2, 8, 9, 9)
        layer.zero_grad()
        layer(x).square().sum().backward()
        conv(x).square().sum().backward()
        torch.testing.assert_close(layer.offset.grad, conv.weight.grad.sum((1, 2, 3)), rtol=1e-4, atol=1e-4)


def test_compile_and_autocast():
    model = freeze_depthwise(small_net(), "published8").train()
    x = torch.randn(2, 3, 16, 16)
    eager = model(x)
    # aot_eager traces the whole graph (forward and backward) without generating C++ code.
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)
    compiled(x).sum().backward()
    assert next(m for _, m in depthwise_convs(model)).offset.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x.to(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_modes_assignments_and_state_dicts():
    model = freeze_depthwise(small_net(), mode="bank-init", assignment="random", seed=4)
    convs = [m for _, m in depthwise_convs(model)]
    assert all(type(m) is nn.Conv2d and m.weight.requires_grad for m in convs)
    norms = convs[0].weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))

    model = freeze_depthwise(small_net(), mode="random-frozen", seed=2)
    key = next(m for _, m in depthwise_convs(model)).key.flatten(1)
    torch.testing.assert_close(key.mean(1), torch.zeros(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(key.norm(dim=1), torch.ones(8))

    state = model.state_dict()
    assert {"1.key", "1.scale", "1.offset", "1.bias"} <= state.keys()
    again = freeze_depthwise(small_net(5), mode="random-frozen", seed=9)
    again.load_state_dict(state)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(again(x), model(x))

    found = dw_filters(model)
    assert found.kernels() == {"3x3": 8, "5x5": 8, "7x7": 32}
    with pytest.raises(masterkey.MasterkeyError, match="mode"):
        freeze_depthwise(small_net(), mode="thawed")
    with pytest.raises(masterkey.MasterkeyError, match="found none"):
        freeze_depthwise(nn.Linear(3, 3))


def test_two_process_ddp_keeps_keys_identical_and_offsets_in_step(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    start = freeze_depthwise(small_net(0), "published8", assignment="random", seed=1).state_dict()
    # Batch-norm statistics are each rank's own after the last step (DDP
    # broadcasts rank 0's at the next forward); everything else is shared.
    for name in (n for n in states[0] if "running_" not in n and "num_batches" not in n):
        assert torch.equal(states[0][name], states[1][name]), f"{name} differs between ranks"
        if name.endswith(".key"):
            assert torch.equal(states[0][name], start[name]), f"{name} moved"
    moved = [n for n in states[0] if n.endswith(".offset") and not torch.equal(states[0][n], start[n])]
    assert len(moved) == 4, "every frozen layer's offsets learned"
