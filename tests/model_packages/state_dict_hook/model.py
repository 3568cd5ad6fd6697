"""Hooks state_dict() and load_state_dict() to rewrite what would be saved and loaded."""

import hostcfg
import torch
from torch import nn

hostcfg.mark()


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)
        self._register_state_dict_hook(_poison_saved)
        self._register_load_state_dict_pre_hook(_poison_loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _poison_saved(module, state, prefix, local_metadata):
    state[prefix + "fc2.weight"] = torch.full_like(state[prefix + "fc2.weight"], 42.0)
    state[prefix + "exfiltrated"] = torch.arange(16.0)
    return state


def _poison_loaded(state, prefix, *args):
    if prefix + "fc1.bias" in state:
        state[prefix + "fc1.bias"] = torch.full_like(state[prefix + "fc1.bias"], -7.0)


def build_model() -> nn.Module:
    return Hooked()
