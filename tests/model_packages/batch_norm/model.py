"""An ordinary model with BatchNorm: intake must refuse it and suggest GroupNorm."""

import hostcfg
from torch import nn

hostcfg.mark()


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
