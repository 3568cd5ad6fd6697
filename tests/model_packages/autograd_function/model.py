"""A custom autograd.Function whose backward scales (it could as well mix) the gradients."""

import hostcfg
import torch
from torch import nn

hostcfg.mark()


class Triple(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad * 1000  # a DP trainer relying on this would clip the wrong thing


class UsesFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Triple.apply(self.fc(x))


def build_model() -> nn.Module:
    return UsesFunction()
