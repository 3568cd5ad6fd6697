"""A small MLP over the 30 Wisconsin breast-cancer features: two logits (benign, malignant).

The features span five orders of magnitude (smoothness ~0.1, area ~1000). A fixed log1p and a
per-example LayerNorm put them on one scale without any statistics of the hospital's data (a
BatchNorm would need batch statistics, which DP training cannot allow).
"""

import torch
from torch import nn


class Log1p(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x)


def build_model() -> nn.Module:
    return nn.Sequential(Log1p(), nn.LayerNorm(30), nn.Linear(30, 32), nn.Tanh(), nn.Linear(32, 2))
