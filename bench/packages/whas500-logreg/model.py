"""Logistic regression for death within 1 year of admission, Worcester Heart Attack Study (whas500).

Input scaling is fixed here from published adult reference ranges, never from any hospital's data:
each feature's range maps to [-1, 1]; values outside it (common after a heart attack) scale beyond +-1.
"""

import math

import torch
from torch import nn

# (feature, low, high, log scale): the order is the job's feature_columns order.
REFERENCE = (
    ("age", 40.0, 100.0, False),              # years: adult heart-attack admissions
    ("male", 0.0, 1.0, False),                # indicator
    ("heart_rate", 60.0, 100.0, False),       # beats/min: normal resting adult range (American Heart Association)
    ("systolic_bp", 90.0, 140.0, False),      # mmHg: from hypotension to the hypertension threshold (AHA/ESC)
    ("diastolic_bp", 60.0, 90.0, False),      # mmHg: same sources
    ("bmi", 18.5, 30.0, False),               # kg/m2: WHO normal to the obesity threshold
    ("cvd_history", 0.0, 1.0, False),         # indicators from here on
    ("atrial_fibrillation", 0.0, 1.0, False),
    ("cardiogenic_shock", 0.0, 1.0, False),
    ("heart_failure", 0.0, 1.0, False),
    ("av_block_3", 0.0, 1.0, False),
    ("mi_order_recurrent", 0.0, 1.0, False),
    ("mi_type_q_wave", 0.0, 1.0, False),
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
