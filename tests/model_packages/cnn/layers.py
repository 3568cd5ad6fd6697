"""A second module of the package, to prove that model.py may import its siblings."""

from torch import nn


def conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2),
                         nn.GroupNorm(4, c_out), nn.ReLU())
