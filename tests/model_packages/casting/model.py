"""An honest MLP that casts, as ordinary manufacturer code does: every `.to(dtype)` / `.float()`
leaves an `aten._assert_tensor_metadata` node in torch 2.13's export."""

import torch
from torch import nn


class CastingMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(30, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        scaled = (x.to(torch.float64) / 10.0).float()
        return self.out(torch.relu(self.hidden(scaled))).to(dtype=torch.float32)


def build_model() -> nn.Module:
    return CastingMLP()
