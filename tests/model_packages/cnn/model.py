"""A 1-D CNN over 12-lead ECG windows of 250 samples, four rhythm classes."""

import torch
from layers import conv_block
from torch import nn


class EcgCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_block(12, 16, 7)
        self.conv2 = conv_block(16, 32, 5, stride=2)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = nn.functional.max_pool1d(x, 2).mean(dim=-1)
        return self.head(self.dropout(x))


def build_model() -> nn.Module:
    return EcgCnn()
