"""Patient-level clipping and Gaussian noise, the arithmetic of one DP-SGD step.

Per-example gradients -> non-finite examples zeroed -> per-patient sums -> each patient clipped to
norm C (flat over all trainable tensors) -> sum -> + N(0, (σC)²) per coordinate -> / (q·n_patients).

The formulas match Opacus's DPOptimizer (clip factor min(1, C / (‖g‖ + 1e-6)), noise N(0, σC)
drawn tensor by tensor in parameter order, division by the expected batch size);
tests/test_trainer_dpsgd.py proves equality against a plain-loop reference and, with
noise.TorchGaussian, against DPOptimizer itself. The service draws from noise.SecureGaussian.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch

from cleanroom.trainer.tracing import Grad, Outer


class GaussianSource(Protocol):
    name: str

    def normals(self, shapes: list[tuple[int, ...]], std: float) -> list[torch.Tensor]: ...


Tensors = dict[str, torch.Tensor]
Grads = dict[str, Grad]
CLIP_EPS = 1e-6  # Opacus's guard against division by a zero norm


def _per_row(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return vector.view(-1, *([1] * (like.dim() - 1)))


def _dense(g: Grad) -> torch.Tensor:
    return g.dense() if isinstance(g, Outer) else g


def squared_norms(grads: Grads) -> torch.Tensor:
    """Flat squared norm of every row across all tensors; inf/nan if any coordinate is."""
    parts = [g.squared_norms() if isinstance(g, Outer) else
             torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim()))).square() for g in grads.values()]
    return torch.stack(parts).sum(0)


def _keep_rows(g: Grad, keep: torch.Tensor) -> Grad:
    if isinstance(g, Outer):
        return g.keep_rows(keep)
    return torch.where(_per_row(keep, g), g, torch.zeros((), dtype=g.dtype))


def zero_non_finite(grads: Grads) -> tuple[Grads, torch.Tensor]:
    """Zero every example with a non-finite gradient (a NaN trap must not poison the sum), and
    return the rows' squared norms. A squared norm that overflows float32 counts as non-finite."""
    sq = squared_norms(grads)
    if bool(torch.isfinite(sq.sum())):  # a finite sum of non-negative terms: every row is finite
        return grads, sq
    keep = torch.isfinite(sq)
    return {n: _keep_rows(g, keep) for n, g in grads.items()}, torch.where(keep, sq, torch.zeros((), dtype=sq.dtype))


def patient_sums(grads: Grads, segments: torch.Tensor | None, n_segments: int) -> Grads:
    """Sum the rows of each patient; segments[i] is row i's patient slot, None for one row each."""
    if segments is None:
        return grads  # nothing to add up, and factors stay factored
    return {n: _dense(g).new_zeros((n_segments, *_dense(g).shape[1:])).index_add_(0, segments, _dense(g))
            for n, g in grads.items()}


def _weighted_sum(g: Grad, weights: torch.Tensor) -> torch.Tensor:
    if isinstance(g, Outer):
        return g.weighted_sum(weights)
    return cast(torch.Tensor, torch.tensordot(weights, g, dims=1))


def clipped_sum(grads: Grads, segments: torch.Tensor | None, n_segments: int, *, clipping_norm: float) -> Tensors:
    """Σ_patients clip_C(Σ_rows g): each patient moves the sum by at most C, whatever its rows."""
    grads, sq = zero_non_finite(grads)
    if segments is not None:  # a sum of finite rows can still overflow: check the patients too
        grads, sq = zero_non_finite(patient_sums(grads, segments, n_segments))
    factor = (clipping_norm / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
    return {n: _weighted_sum(g, factor) for n, g in grads.items()}


def private_gradient(summed: Tensors, *, noise_multiplier: float, clipping_norm: float,
                     expected_batch: float, noise: GaussianSource) -> Tensors:
    """The released direction: (clipped sum + N(0, (σC)²)) / (q·n_patients), computed as
    N(0, (σC / (q·n))²) + sum / (q·n) in one op per tensor. Noise is drawn tensor by tensor in
    parameter order, as DPOptimizer draws it."""
    draws = noise.normals([tuple(s.shape) for s in summed.values()], noise_multiplier * clipping_norm / expected_batch)
    return {n: z.add_(s, alpha=1.0 / expected_batch) for z, (n, s) in zip(draws, summed.items())}
