"""A small MLP over the 30 Wisconsin breast-cancer features: two logits (benign, malignant)."""

from torch import nn


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 32), nn.Tanh(), nn.Linear(32, 2))
