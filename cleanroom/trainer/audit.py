"""The one-run privacy audit's canaries inside a DP-SGD run (the bound: domain/privacy_audit.py).

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023), written
from the paper. m canaries, each included independently with probability 1/2 (bits from the OS
CSPRNG). White-box gradient canaries, the paper's strongest and cheapest setting: an included
canary is a virtual patient whose clipped gradient is a fixed secret direction u_i of norm exactly
C; it is Poisson-sampled at rate q like every patient and joins the clipped sum before the noise,
so each canary is an individual the DP-SGD guarantee covers. Directions are orthonormal when m <= d
(no canary masks another: signed disjoint coordinate sets, see Canaries), random unit vectors
otherwise. Score_i = Σ_t <u_i, released update_t>; the guesses and the bound
follow domain/privacy_audit.py.

The score reads the released updates only (the noisy directions the optimizer applied), never the
real patients' clipped sums: the verdict and the counts then are post-processing of DP outputs,
and may be released with the weights. The price: the data's own gradient, projected on u_i, is
part of every score, which blunts the audit when the model has few parameters next to the number
of patients (proof/audit.py measures where it catches a trainer without noise and where it cannot).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch

from cleanroom.domain.privacy_audit import MAX_CANARIES, AuditResult, declared_pairs

Tensors = dict[str, torch.Tensor]


def count_correct(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> int:
    """Correct guesses: "in" for the k+ highest scores, "out" for the k− lowest (ties by index)."""
    order = np.argsort(scores, kind="stable")
    return int(included[order[len(order) - k_plus:]].sum()) + int((~included[order[:k_minus]]).sum())


def audit(scores: np.ndarray, included: np.ndarray, *, claimed_epsilon: float, delta: float) -> AuditResult:
    pairs = tuple(declared_pairs(len(scores)))
    correct = tuple(count_correct(scores, included, kp, km) for kp, km in pairs)
    return AuditResult(len(scores), pairs, correct, claimed_epsilon, delta)


class Canaries:
    """The canaries of one run: secret inclusion bits and directions, the scores as the run goes.

    Direction i is held as coordinates `index[i]` and weights `weight[i]` (u_i = Σ_j weight[i, j]
    e_index[i, j]): with m <= d, disjoint random sets of d // m coordinates with random signs, so
    the directions are exactly orthonormal and each step costs O(d) (the paper's Dirac canaries
    are the case of one coordinate each); with m > d, m dense random unit vectors."""

    def __init__(self, count: int, shapes: dict[str, tuple[int, ...]], *, clipping_norm: float, sample_rate: float,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.shapes = shapes
        self.sizes = [math.prod(s) for s in shapes.values()]
        if not 2 <= count <= MAX_CANARIES:
            raise ValueError("canary count out of range")
        # Inclusion bits straight from the CSPRNG; directions and per-step sampling from PCG64 under
        # a 256-bit CSPRNG seed (as the trainer samples patients).
        self.included = np.unpackbits(np.frombuffer(random_bytes((count + 7) // 8), dtype=np.uint8))[:count].astype(bool)
        self._rng = np.random.Generator(np.random.PCG64(int.from_bytes(random_bytes(32), "little")))
        index, weight = _directions(self._rng, count, sum(self.sizes))
        self.index, self.weight = torch.from_numpy(index), torch.from_numpy(weight)
        self.clipping_norm, self.sample_rate = clipping_norm, sample_rate
        self.scores = torch.zeros(count, dtype=torch.float64)

    def inject(self, summed: Tensors) -> None:
        """Adds C·u_i for every included canary Poisson-sampled this step to the clipped sum."""
        sampled = torch.from_numpy(np.flatnonzero(self.included & (self._rng.random(len(self.included)) < self.sample_rate)))
        if not len(sampled):
            return
        flat = torch.zeros(sum(self.sizes))
        flat.index_add_(0, self.index[sampled].reshape(-1), self.weight[sampled].reshape(-1) * self.clipping_norm)
        for (name, shape), part in zip(self.shapes.items(), torch.split(flat, self.sizes)):
            summed[name] = summed[name] + part.view(shape).to(summed[name].dtype)

    def observe(self, update: Tensors) -> None:
        """Score_i += <u_i, the released update>."""
        flat = torch.cat([update[name].reshape(-1).float() for name in self.shapes])
        self.scores += (flat[self.index] * self.weight).sum(1).double()

    def result(self, *, claimed_epsilon: float, delta: float) -> AuditResult:
        return audit(self.scores.numpy(), self.included, claimed_epsilon=claimed_epsilon, delta=delta)


def _directions(rng: np.random.Generator, m: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), each m x s: orthonormal signed disjoint supports when m <= d, else dense."""
    if m <= d:
        s = d // m
        index = rng.permutation(d)[:m * s].reshape(m, s)
        weight = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(m, s)) / np.float32(math.sqrt(s))
        return index.astype(np.int64), weight.astype(np.float32)
    gaussian = rng.standard_normal((m, d), dtype=np.float32)
    unit: np.ndarray = gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)
    return np.tile(np.arange(d, dtype=np.int64), (m, 1)), unit
