"""Frozen master keys in any PyTorch model.

:func:`freeze_depthwise` replaces every depthwise ``nn.Conv2d`` of a model
(``groups == in_channels == out_channels``, kernel larger than 1x1) by a
:class:`FrozenDepthwiseConv2d` whose filter per channel is ``a_c * key_c + b_c``:
the key is a buffer (never trained; DDP broadcasts it), ``b_c`` a parameter
(and ``a_c`` one with ``learn_scale=True``), as ``masterkey train --dw-mode
frozen`` builds its layers. Keys come from a bank, resized to each layer's
kernel by the bank's rule; assignments and fits are computed by the Rust core.

Importing this module needs PyTorch; ``import masterkey`` does not.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import Bank, BankLike, FilterSet, MasterkeyError, fit

__all__ = ["FrozenDepthwiseConv2d", "depthwise_convs", "dw_filters", "freeze_depthwise"]

MODES = ("frozen", "bank-init", "random-frozen")
ASSIGNMENTS = ("round-robin", "random", "fit")


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels
        and tuple(module.kernel_size) != (1, 1)
    )


class FrozenDepthwiseConv2d(nn.Module):
    """A depthwise convolution whose filter of channel ``c`` is
    ``scale[c] * key[c] + offset[c]``, with ``key`` frozen.

    Stride, padding (and padding mode), dilation and bias are those of the
    convolution it replaces.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        key: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor,
        learn_scale: bool = False,
    ):
        super().__init__()
        channels = conv.in_channels
        if key.shape != conv.weight.shape:
            raise MasterkeyError(f"key: expected shape {tuple(conv.weight.shape)}, found {tuple(key.shape)}")
        like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.register_buffer("key", key.detach().to(**like).clone())
        scale = scale.detach().to(**like).reshape(channels).clone()
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.offset = nn.Parameter(offset.detach().to(**like).reshape(channels).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.in_channels = self.out_channels = self.groups = channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice

    @property
    def weight(self) -> torch.Tensor:
        """The filters applied, ``[C, 1, kh, kw]``."""
        shape = (-1, 1, 1, 1)
        return self.scale.view(shape) * self.key + self.offset.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        learn = "learnable" if isinstance(self.scale, nn.Parameter) else "frozen"
        return (
            f"{self.in_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, scale {learn}, bias={self.bias is not None}"
        )


def depthwise_convs(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every depthwise convolution, frozen or not, in model order."""
    for name, module in model.named_modules():
        if _is_depthwise(module) or isinstance(module, FrozenDepthwiseConv2d):
            yield name, module


def dw_filters(model: nn.Module, dead_tolerance: float = 1e-6) -> FilterSet:
    """The depthwise filters of a live model (the applied ones, for frozen
    layers) as a :class:`~masterkey.FilterSet`, one layer per convolution."""
    layers = []
    for name, conv in depthwise_convs(model):
        weight = conv.weight.detach().float().cpu().numpy()
        layers.append((name, weight.reshape(weight.shape[0], weight.shape[2], weight.shape[3])))
    if not layers:
        raise MasterkeyError(f"{type(model).__name__}: expected depthwise nn.Conv2d layers, found none")
    return FilterSet.from_layers(layers, dead_tolerance, source=type(model).__name__, format="pytorch-module")


def _channel_keys(
    conv: nn.Conv2d, bank: Bank, assignment: str, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key filters ``[C, kh, kw]`` and ``a``, ``b`` per channel for one layer."""
    channels = conv.in_channels
    kh, kw = conv.kernel_size
    keys, kept = bank.resized(f"{kh}x{kw}")
    if not kept:
        raise MasterkeyError(f"bank `{bank.name}`: no key is usable at {kh}x{kw} (all constant once resized)")
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    if assignment == "round-robin":
        return keys[np.arange(channels) % len(kept)], ones, zeros
    if assignment == "random":
        return keys[generator.integers(0, len(kept), channels)], ones, zeros
    # "fit": each channel's own filter as a * key + b, fitted by the core.
    weights = conv.weight.detach().float().cpu().numpy().reshape(channels, kh, kw)
    fitted = fit(weights, Bank(keys, name=bank.name, labels=[bank.labels[i] for i in kept]), control_seed=None)
    index = fitted.fits["key_index"]
    dead = index < 0
    # A dead filter keeps its mean as the offset, with scale 0 (as masterkey train snaps them).
    a = np.where(dead, 0.0, fitted.fits["a"]).astype(np.float32)
    return keys[np.where(dead, 0, index)], a, fitted.fits["b"].astype(np.float32)


def freeze_depthwise(
    model: nn.Module,
    bank: BankLike = "published8",
    mode: str = "frozen",
    assignment: str = "round-robin",
    learn_scale: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Freezes (or initialises) every depthwise convolution of ``model`` to a bank, in place.

    - ``mode="frozen"``: each DW ``nn.Conv2d`` becomes a
      :class:`FrozenDepthwiseConv2d` holding ``a * key + b`` (``a = 1``,
      ``b = 0`` unless fitted); ``"bank-init"``: the keys become the initial
      weights of the unchanged, trainable convolution; ``"random-frozen"``:
      frozen random zero-mean unit-norm filters (the control).
    - ``assignment``: ``"round-robin"`` (channel ``c`` gets key ``c mod K``),
      ``"random"`` (seeded by ``seed``) or ``"fit"`` (each existing filter's
      best key with its fitted ``a`` and ``b``: fit-and-freeze, from a
      checkpoint's weights).

    Every other module and parameter is left as it was. Returns ``model``.
    """
    if mode not in MODES:
        raise MasterkeyError(f"mode: expected one of {', '.join(MODES)}, found {mode!r}")
    if assignment not in ASSIGNMENTS:
        raise MasterkeyError(f"assignment: expected one of {', '.join(ASSIGNMENTS)}, found {assignment!r}")
    if mode == "bank-init" and assignment == "fit":
        raise MasterkeyError("bank-init takes the round-robin or random assignment (fit would copy the filters back)")
    bank = Bank(bank)
    generator = np.random.default_rng(seed)
    targets = [(name, m) for name, m in model.named_modules() if _is_depthwise(m)]
    if not targets:
        raise MasterkeyError(f"{type(model).__name__}: expected depthwise nn.Conv2d layers, found none")
    for name, conv in targets:
        channels, kh, kw = conv.in_channels, *conv.kernel_size
        if mode == "random-frozen":
            # Normalised (zero mean, unit L2 norm) by the core, as bank keys are.
            drawn = generator.standard_normal((channels, kh, kw))
            keys = Bank(drawn.astype(np.float32), name="random").keys
            a, b = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        else:
            keys, a, b = _channel_keys(conv, bank, assignment, generator)
        key = torch.from_numpy(np.ascontiguousarray(keys)).reshape(conv.weight.shape)
        if mode == "bank-init":
            with torch.no_grad():
                conv.weight.copy_(key)
            continue
        frozen = FrozenDepthwiseConv2d(conv, key, torch.from_numpy(a), torch.from_numpy(b), learn_scale)
        _replace(model, name, frozen)
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
