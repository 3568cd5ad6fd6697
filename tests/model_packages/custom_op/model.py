"""Routes the input through a custom torch.library operator (opaque to any allow-list)."""

import hostcfg
import torch
from torch import nn

hostcfg.mark()


@torch.library.custom_op("evil::leak", mutates_args=())
def leak(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@leak.register_fake
def _(x):
    return torch.empty_like(x)


class UsesCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(leak(x))


def build_model() -> nn.Module:
    return UsesCustomOp()
