"""Logistic regression for death within 5 years, Olmsted County free-light-chain cohort (flchain).

Input scaling is fixed here from published reference ranges, never from any hospital's data: each
feature's range maps to [-1, 1] (laboratory values on a log scale, as their reference intervals are
log-symmetric); values outside it scale beyond +-1.
"""

import math

import torch
from torch import nn

# (feature, low, high, log scale): the order is the job's feature_columns order.
REFERENCE = (
    ("age", 50.0, 90.0, False),        # years; the cohort enrolled residents aged 50 and over (Kyle et al., NEJM 2006)
    ("male", 0.0, 1.0, False),         # indicator
    ("kappa", 0.33, 1.94, True),       # serum free kappa, mg/dL: reference interval 3.3-19.4 mg/L (Katzmann et al., Clin Chem 2002)
    ("lambda", 0.57, 2.63, True),      # serum free lambda, mg/dL: reference interval 5.7-26.3 mg/L (same source)
    ("creatinine", 0.6, 1.3, True),    # serum creatinine, mg/dL: the usual adult laboratory reference range
    ("mgus", 0.0, 1.0, False),         # indicator: monoclonal gammopathy of undetermined significance
)


class ReferenceScaling(nn.Module):
    """(f(x) - centre) / half-width with f = log for log-scale features; constants only."""

    def __init__(self) -> None:
        super().__init__()
        f = [(math.log(lo), math.log(hi)) if log else (lo, hi) for _, lo, hi, log in REFERENCE]
        self.register_buffer("log_mask", torch.tensor([log for *_, log in REFERENCE]))
        self.register_buffer("centre", torch.tensor([(a + b) / 2 for a, b in f]))
        self.register_buffer("half_width", torch.tensor([(b - a) / 2 for a, b in f]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_mask, torch.log(torch.clamp(x, min=1e-3)), x)
        return (x - self.centre) / self.half_width


def build_model() -> nn.Module:
    return nn.Sequential(ReferenceScaling(), nn.Linear(len(REFERENCE), 2))
