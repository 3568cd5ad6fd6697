"""The pure statistics of the membership-inference proof: the (ε, δ) ceilings, the attack scores,
the operating points with their confidence bounds, and the verdict. No torch, no service.

Ceiling. For any (ε, δ)-DP mechanism and any test that tells "x was in the training data" from
"x was not" (Kairouz, Oh & Viswanath, ICML 2015; the hypothesis-testing view of DP):

    TPR <= min(e^ε FPR + δ, 1 - e^-ε (1 - δ - FPR))    (and <= 1)

The bound is concave in FPR, so it also holds for a threshold applied to many patients at once
(the ROC of the pooled test averages per-patient ROCs, each under the concave bound). The AUC
ceiling is the area under it (e^ε / (1 + e^ε) when δ = 0).

"Above the ceiling with confidence" (the check that fails the proof): at a threshold chosen where
the attack's empirical FPR is at most the target (0.1%, 1%), the Clopper-Pearson lower bound of the
TPR exceeds the ceiling at the Clopper-Pearson upper bound of the FPR, each one-sided 97.5%, so the
pair holds jointly with 95% confidence (Bonferroni); for AUC, the DeLong one-sided 95% lower bound
exceeds the AUC ceiling. Treating the patients' outcomes as independent trials is an
approximation (they share one model); see the section's caveats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

FPR_TARGETS = (0.001, 0.01)
CONFIDENCE = 0.95                       # of each "above the ceiling" claim
POINT_CONFIDENCE = 1 - (1 - CONFIDENCE) / 2   # per side of a (TPR, FPR) pair: Bonferroni over the two


def tpr_ceiling(fpr: float, *, epsilon: float, delta: float) -> float:
    """The largest TPR any test can reach at this FPR against an (ε, δ)-DP mechanism."""
    fpr = min(max(fpr, 0.0), 1.0)
    low_side = math.exp(epsilon) * fpr + delta
    high_side = 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr)
    return min(low_side, high_side, 1.0)


def auc_ceiling(*, epsilon: float, delta: float) -> float:
    """Area under tpr_ceiling over FPR in [0, 1], in closed form (three linear pieces)."""
    e, inv = math.exp(epsilon), math.exp(-epsilon)
    knee = (1.0 - delta) / (e + 1.0)           # where the two lines meet
    top = 1.0 - delta                          # where the upper line reaches TPR = 1
    first = e * knee**2 / 2 + delta * knee
    second = (1.0 - inv * (1.0 - delta)) * (top - knee) + inv * (top**2 - knee**2) / 2
    return first + second + delta              # TPR = 1 on [1 - δ, 1]


def clopper_pearson_lower(successes: int, trials: int, confidence: float) -> float:
    """One-sided lower bound of a binomial proportion (exact, conservative)."""
    if successes <= 0:
        return 0.0
    return float(stats.beta.ppf(1 - confidence, successes, trials - successes + 1))


def clopper_pearson_upper(successes: int, trials: int, confidence: float) -> float:
    """One-sided upper bound of a binomial proportion (exact, conservative)."""
    if successes >= trials:
        return 1.0
    return float(stats.beta.ppf(confidence, successes + 1, trials - successes))


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log(p_y / (1 - p_y)) of the true label, from logits [n, classes], computed stably: the
    LiRA statistic (Carlini et al. 2022), close to Gaussian over training runs where p_y is not."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return np.asarray(true - np.logaddexp.reduce(others, axis=1))


def lira_offline(target: np.ndarray, shadows: np.ndarray, *, per_patient_variance: bool) -> np.ndarray:
    """Offline LiRA scores (higher = more likely a member): how far above the shadow models' (all
    trained without the patient) Gaussian the target's confidence lies, in standard deviations
    (the one-sided test's statistic; its p-value is monotone in it). `shadows` is [K, patients].
    With few shadows a per-patient variance is too noisy; Carlini et al. then use one global
    variance (their 'fixed variance' variant)."""
    mean = shadows.mean(axis=0)
    if per_patient_variance:
        spread = shadows.std(axis=0, ddof=1)
    else:
        spread = np.full_like(mean, float(np.sqrt(np.mean(shadows.var(axis=0, ddof=1)))))
    return np.asarray((target - mean) / np.maximum(spread, 1e-6))


@dataclass(frozen=True)
class OperatingPoint:
    """The attack at one FPR target: counts at the threshold, and the bounds the check uses."""

    fpr_target: float
    true_positives: int
    members: int
    false_positives: int
    non_members: int

    @property
    def tpr(self) -> float:
        return self.true_positives / self.members

    @property
    def tpr_low(self) -> float:
        return clopper_pearson_lower(self.true_positives, self.members, POINT_CONFIDENCE)

    @property
    def fpr_high(self) -> float:
        return clopper_pearson_upper(self.false_positives, self.non_members, POINT_CONFIDENCE)


def operating_point(member_scores: np.ndarray, non_member_scores: np.ndarray, fpr_target: float) -> OperatingPoint:
    """Members flagged at the lowest threshold that flags at most fpr_target of the non-members
    (a score must be strictly above the threshold; ties never straddle it)."""
    allowed = math.floor(fpr_target * len(non_member_scores))
    ranked = np.sort(non_member_scores)[::-1]
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    return OperatingPoint(fpr_target, int((member_scores > threshold).sum()), len(member_scores),
                          int((non_member_scores > threshold).sum()), len(non_member_scores))


def auc_delong(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[float, float]:
    """(AUC, its standard error) by DeLong et al. 1988 (ties count one half), via midranks."""
    m, n = len(member_scores), len(non_member_scores)
    both = stats.rankdata(np.concatenate([member_scores, non_member_scores]))
    own_in, own_out = stats.rankdata(member_scores), stats.rankdata(non_member_scores)
    v_in = (both[:m] - own_in) / n            # per member: share of non-members below it
    v_out = 1.0 - (both[m:] - own_out) / m    # per non-member: share of members above it
    auc = float(v_in.mean())
    variance = v_in.var(ddof=1) / m + v_out.var(ddof=1) / n
    return auc, float(math.sqrt(max(variance, 0.0)))


@dataclass(frozen=True)
class AttackResult:
    """One attack on one model: AUC with its bound and the operating points."""

    attack: str
    auc: float
    auc_se: float
    points: tuple[OperatingPoint, ...]

    @property
    def auc_low(self) -> float:
        return self.auc - float(stats.norm.ppf(CONFIDENCE)) * self.auc_se


def measure(attack: str, scores: np.ndarray, member: np.ndarray) -> AttackResult:
    inside, outside = scores[member], scores[~member]
    auc, se = auc_delong(inside, outside)
    return AttackResult(attack, auc, se, tuple(operating_point(inside, outside, f) for f in FPR_TARGETS))


@dataclass(frozen=True)
class Finding:
    """A measured figure whose confidence bound lies above the (ε, δ) ceiling."""

    attack: str
    metric: str          # "AUC", "TPR at 0.1% FPR", "TPR at 1% FPR"
    bound: float         # the figure's lower confidence bound
    ceiling: float

    def __str__(self) -> str:
        return f"{self.attack} {self.metric}: lower bound {self.bound:.4f} > ceiling {self.ceiling:.4f}"


def point_ceiling(point: OperatingPoint, *, epsilon: float, delta: float) -> float:
    """The ceiling the check compares a TPR with: at the FPR's upper confidence bound."""
    return tpr_ceiling(point.fpr_high, epsilon=epsilon, delta=delta)


def above_ceiling(result: AttackResult, *, epsilon: float, delta: float) -> list[Finding]:
    """What this attack shows above the (ε, δ) ceiling with confidence (empty: nothing)."""
    found = []
    ceiling = auc_ceiling(epsilon=epsilon, delta=delta)
    if result.auc_low > ceiling:
        found.append(Finding(result.attack, "AUC", result.auc_low, ceiling))
    for p in result.points:
        bound = point_ceiling(p, epsilon=epsilon, delta=delta)
        if p.tpr_low > bound:
            found.append(Finding(result.attack, f"TPR at {p.fpr_target:.1%} FPR", p.tpr_low, bound))
    return found
