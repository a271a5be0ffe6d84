"""A small network for the masterkey.torch tests and the DDP worker."""

import torch
from torch import nn


def small_net(seed: int = 0) -> nn.Sequential:
    """DW layers of 3, 5 and 7 taps, strides 1 and 2, with and without bias,
    between pointwise layers and a batch norm."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False),
        nn.Conv2d(8, 16, 1),
        nn.GELU(),
        nn.Conv2d(16, 16, 7, padding=3, groups=16),
        nn.Conv2d(16, 16, 7, stride=2, padding=3, groups=16, padding_mode="reflect"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()
