"""Small models defined in the tests and exported the way intake does it (batch 1, core ATen)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, foreign_modules


def allowed_here() -> tuple[str, ...]:
    """The test process holds pytest and friends: allow what is loaded now (the guard has its own tests)."""
    return DEFAULT_ALLOWED_MODULES + tuple(foreign_modules())


class MLP(nn.Module):
    def __init__(self, d_in: int = 30, hidden: int = 64, out: int = 2) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(d_in, hidden), nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


class CNN1d(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv1d(1, 4, 5), nn.Linear(4 * 26, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))


class BatchMixer(MLP):
    """Adds the batch mean of its hidden layer: run on a real batch, rows leak into each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(x))
        return self.l2(h + h.mean(0, keepdim=True))


class NaNTrap(MLP):
    """Outputs NaN, with NaN gradients, for any example holding the value 42.0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trapped = (x == 42.0).any(dim=1, keepdim=True)
        return super().forward(x) * torch.where(trapped, float("nan"), 1.0)


def export(module: nn.Module, input_shape: tuple[int, ...] = (30,)) -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module.eval(), (torch.randn(1, *input_shape),)).run_decompositions()


def separable_data(n: int, *, seed: int = 0, d: int = 30, flip: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=d) > 0).astype(np.int64)
    flips = rng.random(n) < flip
    y[flips] = 1 - y[flips]
    return X, y


def fixed_seed(value: int):
    """A deterministic seed source, for tests only (the service uses os.urandom)."""
    counter = iter(range(value, value + 10**6))
    return lambda n: next(counter).to_bytes(n, "little")
