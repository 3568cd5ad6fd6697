"""The one-run privacy audit's bound (pure math), shared by phase B and the release gate.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023), written
from the paper. m canaries are each included independently with probability 1/2; after the run the
auditor guesses "in" for the k+ highest scores and "out" for the k− lowest (r = k+ + k− guesses)
and counts its correct guesses v. Their Theorem 3.1: if the run is (ε, δ)-DP with respect to each
canary, then

    P[v correct or more] <= P[W >= v] + 2 m δ · max_{i = 1..v} P[v - i <= W < v] / i,
    W ~ Binomial(r, e^ε / (1 + e^ε)).

The lower bound at confidence 1 − β is the largest ε whose right-hand side is still below β (found
by bisection, as the paper does): a run as private as claimed shows an ε this large with
probability at most β. We look at a small FIXED set of (k+, k−) pairs, declared here before any
run (DECLARED_FRACTIONS), and pay for taking the best of them with a union bound: every pair is
tested at β / len(DECLARED_FRACTIONS), so the maximum over the set holds at 1 − β overall.
Binomial terms are summed in log space with math.lgamma (no scipy inside the sandbox).

The canaries themselves, and the scores, are cleanroom/trainer/audit.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

CONFIDENCE = 0.95
# (k+, k−) as fractions of m, fixed before any run; each pair is tested at β / 5 (union bound).
DECLARED_FRACTIONS = ((1 / 32, 1 / 32), (1 / 16, 1 / 16), (1 / 8, 1 / 8), (1 / 4, 1 / 4), (1 / 2, 1 / 2))
MIN_CANARIES, MAX_CANARIES = 64, 1024


def _log_pmf(r: int, k: int, log_p: float, log_q: float) -> float:
    return math.lgamma(r + 1) - math.lgamma(k + 1) - math.lgamma(r - k + 1) + k * log_p + (r - k) * log_q


def _log_probs(epsilon: float) -> tuple[float, float]:
    """log p and log(1 − p) for p = e^ε / (1 + e^ε), stable for large ε."""
    softplus = epsilon + math.log1p(math.exp(-epsilon))  # log(1 + e^ε)
    return epsilon - softplus, -softplus


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Theorem 3.1's bound on P[v or more correct of r guesses] for an (ε, δ)-DP run with m canaries."""
    if not 0 <= v <= r <= m or epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError("need 0 <= v <= r <= m, epsilon >= 0, delta in [0, 1]")
    log_p, log_q = _log_probs(epsilon)
    pmf = [math.exp(_log_pmf(r, k, log_p, log_q)) for k in range(r + 1)]
    tail = sum(pmf[v:])
    alpha, below = 0.0, 0.0
    for i in range(1, v + 1):  # max over i of P[v − i <= W < v] / i
        below += pmf[v - i]
        alpha = max(alpha, below / i)
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest ε the counts reject at level β (0 when they reject none), to 1e-6."""
    if p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) > beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) <= beta:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return lo
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) <= beta else (lo, mid)
    return lo


def declared_pairs(m: int) -> list[tuple[int, int]]:
    """The (k+, k−) pairs for m canaries, always len(DECLARED_FRACTIONS) of them (some may repeat)."""
    return [(max(1, int(m * a)), max(1, int(m * b))) for a, b in DECLARED_FRACTIONS]


@dataclass(frozen=True)
class AuditResult:
    canaries: int
    pairs: tuple[tuple[int, int], ...]   # the declared (k+, k−)
    correct: tuple[int, ...]             # correct guesses of each pair
    claimed_epsilon: float
    delta: float
    confidence: float = CONFIDENCE

    @cached_property
    def bounds(self) -> list[float]:
        beta = (1 - self.confidence) / len(self.pairs)
        return [epsilon_lower_bound(m=self.canaries, r=kp + km, v=v, delta=self.delta, beta=beta)
                for (kp, km), v in zip(self.pairs, self.correct, strict=True)]

    @property
    def best(self) -> int:
        bounds = self.bounds
        return max(range(len(bounds)), key=bounds.__getitem__)

    @property
    def epsilon_lower_bound(self) -> float:
        return max(self.bounds)

    @property
    def passed(self) -> bool:
        """The gate: the run may be released unless the audit proves more leakage than claimed."""
        return self.epsilon_lower_bound <= self.claimed_epsilon

    def to_json(self) -> dict[str, Any]:
        kp, km = self.pairs[self.best]
        return {"canaries": self.canaries, "guesses": kp + km, "correct": self.correct[self.best],
                "epsilon_lower_bound": self.epsilon_lower_bound, "confidence": self.confidence,
                "claimed_epsilon": self.claimed_epsilon, "delta": self.delta,
                "declared_pairs": [list(p) for p in self.pairs], "correct_per_pair": list(self.correct),
                "method": "one-run audit (Steinke, Nasr, Jagielski 2023), white-box gradient canaries"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditResult:
        """As the worker wrote it (untrusted: the gate recomputes the bound from the counts)."""
        pairs = tuple((int(a), int(b)) for a, b in data["declared_pairs"])
        correct = tuple(int(v) for v in data["correct_per_pair"])
        m = int(data["canaries"])
        if not MIN_CANARIES <= m <= MAX_CANARIES or pairs != tuple(declared_pairs(m)) or len(correct) != len(pairs):
            raise ValueError("the audit's pairs are not the declared ones")
        if any(not 0 <= v <= kp + km for (kp, km), v in zip(pairs, correct)):
            raise ValueError("an audit count is out of range")
        return cls(m, pairs, correct, float(data["claimed_epsilon"]), float(data["delta"]))


def canary_count(parameters: int) -> int:
    """m for a model with d trainable parameters: d clamped to [64, 1024], so that up to 1024 the
    directions are orthonormal (m <= d) and every canary is a guess the bound can use."""
    return min(MAX_CANARIES, max(MIN_CANARIES, parameters))


def audit_cost_statement(patients: int) -> str:
    """The audit's cost in time and utility, in words, for an estimate on a dataset of `patients`."""
    extra = MAX_CANARIES // 2
    return (f"this dataset's policy requires the one-run privacy audit before a training job's weights are released. "
            f"Time: the released run itself carries the canaries (one per trainable parameter, {MIN_CANARIES} to "
            f"{MAX_CANARIES}), each step adds and scores them in work proportional to the parameter count, small next to "
            f"the per-patient gradients; no second run. Utility: about half the canaries take part, each sampled like a "
            f"patient with a clipped gradient of norm C in a secret direction of its own, so the run learns from up to "
            f"{extra} virtual patients of pure noise next to the dataset's {patients}; their summed gradient per step, about "
            f"C·sqrt(q·m/2), stays below the Gaussian noise's C·σ·sqrt(parameters) by a factor sqrt(q/2)/σ or more. A job "
            f"whose audit shows more leakage than its ε (at {CONFIDENCE:.0%} confidence) fails with its budget spent; a run "
            f"as private as it claims fails it with probability at most {1 - CONFIDENCE:.0%}")
