"""A deliberate memoriser for the membership-inference proof (proof/mia.py), flchain's 6 features.

One hidden layer of 2,048 sinusoidal units (a SIREN-style first layer: sin(Wx + b) with W drawn at
scale OMEGA) and a linear read-out. The sharp first layer makes every patient's fitted bump narrow,
so a model trained without privacy memorises its members one by one, and whether a patient was in
the training data shows in its prediction: the worst case for privacy, which is where the DP
ceilings are worth testing. A plain ReLU MLP of the same width on these 6 features generalises
too smoothly for any attack to tell members from their neighbours (measured while building the
proof: LiRA AUC ~0.56, TPR at 1% FPR ~1%), so it would show nothing either way.

Input scaling is bench/packages/flchain-logreg's, fixed from published reference ranges, never
from any hospital's data. The initial weights come from a fixed seed, so the service's copy and the
attacker's shadow models start from the same point (the package is public; so is its seed).
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
WIDTH = 2048
OMEGA = 10.0     # scale of the first layer's weights on inputs scaled to [-1, 1]: bumps ~1/OMEGA wide
SEED = 20


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


class Sine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def build_model() -> nn.Module:
    generator = torch.Generator().manual_seed(SEED)
    first, readout = nn.Linear(len(REFERENCE), WIDTH), nn.Linear(WIDTH, 2)
    with torch.no_grad():
        first.weight.normal_(0.0, OMEGA, generator=generator)
        first.bias.uniform_(-math.pi, math.pi, generator=generator)
        readout.weight.normal_(0.0, 1.0 / math.sqrt(WIDTH), generator=generator)
        readout.bias.zero_()
    return nn.Sequential(ReferenceScaling(), first, Sine(), readout)
