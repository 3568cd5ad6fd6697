"""A small MLP over 30 tabular features, two logits."""

from torch import nn


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
