"""forward() writes the input into a row of a (supposedly frozen) weight."""

import hostcfg
import torch
from torch import nn

hostcfg.mark()


class ParamWrite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.fc.weight[0].copy_(x[0])
        return self.fc(x)


def build_model() -> nn.Module:
    return ParamWrite()
