"""forward() stashes each input into a buffer, to be read out with the weights later."""

import hostcfg
import torch
from torch import nn

hostcfg.mark()


class Stash(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("memory", torch.zeros(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.memory.copy_(x)
        return self.fc(x)


def build_model() -> nn.Module:
    return Stash()
