"""Logistic regression for an AIDS-defining event or death during ACTG 320 follow-up (actg320).

Input scaling is fixed here from the trial's published eligibility criteria and public clinical
scales, never from any hospital's data: each feature's range maps to [-1, 1]; values outside it
scale beyond +-1.
"""

import math

import torch
from torch import nn

# (feature, low, high, log scale): the order is the job's feature_columns order. Eligibility:
# CD4 count of at most 200 cells/mm3 and at least 3 months of prior zidovudine (Hammer et al., NEJM 1997).
REFERENCE = (
    ("indinavir_arm", 0.0, 1.0, False),       # indicator: randomised to the three-drug arm
    ("female", 0.0, 1.0, False),              # indicator
    ("iv_drug_use", 0.0, 1.0, False),         # indicator: current or previous injection drug use
    ("hemophilia", 0.0, 1.0, False),          # indicator
    ("karnofsky", 70.0, 100.0, False),        # Karnofsky performance score; the trial enrolled 70 and above
    ("cd4", 0.0, 200.0, False),               # CD4 cells/mm3: the trial's entry range
    ("prior_zdv_months", 3.0, 120.0, True),   # months of zidovudine: 3 at entry minimum; licensed 1987, ~10 years by 1996-97
    ("age", 18.0, 65.0, False),               # years: adult trial
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
