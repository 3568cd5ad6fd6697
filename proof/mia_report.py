"""What proof/mia.py hands to PROOF.md: one table per model, the plain-words reading, the ROC plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proof.mia_bounds import CONFIDENCE, POINT_CONFIDENCE, AttackResult, auc_ceiling, point_ceiling, tpr_ceiling


@dataclass(frozen=True)
class ModelResult:
    name: str
    epsilon: float | None          # None: the non-private reference
    attacks: tuple[AttackResult, ...]
    lira_scores: np.ndarray        # per target-pool patient, for the ROC plot
    member: np.ndarray             # bool, per target-pool patient
    utility: float                 # AUROC on the non-members
    notes: str                     # how it was trained


def _ceiling_epsilon(result: ModelResult, teeth_epsilon: float) -> float:
    return result.epsilon if result.epsilon is not None else teeth_epsilon


def _row(attack: AttackResult, *, epsilon: float, delta: float) -> str:
    cells = [attack.attack, f"{attack.auc:.3f} (≥ {attack.auc_low:.3f})", f"{auc_ceiling(epsilon=epsilon, delta=delta):.3f}"]
    for p in attack.points:
        nominal = tpr_ceiling(p.fpr_target, epsilon=epsilon, delta=delta)
        checked = point_ceiling(p, epsilon=epsilon, delta=delta)
        cells += [f"{p.tpr:.4f} (≥ {p.tpr_low:.4f}); {p.false_positives} of {p.non_members} non-members flagged",
                  f"{nominal:.4f} ({checked:.4f} at FPR ≤ {p.fpr_high:.2%})"]
    return "| " + " | ".join(cells) + " |"


def model_table(result: ModelResult, *, delta: float, teeth_epsilon: float) -> str:
    epsilon = _ceiling_epsilon(result, teeth_epsilon)
    against = f"ε = {epsilon:g} ceiling" if result.epsilon is not None else f"compared with the ε = {epsilon:g} ceiling"
    head = (f"**{result.name}** ({against}; δ = {delta:g}; AUROC on the non-members {result.utility:.3f}). {result.notes}.\n\n"
            "| attack | AUC (lower bound) | AUC ceiling | TPR at 0.1% FPR (lower bound) | ceiling at 0.1% (as checked) "
            "| TPR at 1% FPR (lower bound) | ceiling at 1% (as checked) |\n|---|---|---|---|---|---|---|\n")
    return head + "\n".join(_row(a, epsilon=epsilon, delta=delta) for a in result.attacks) + "\n"


def section_body(results: list[ModelResult], verdicts: list[str], counts: dict[str, Any], *, delta: float,
                 teeth_epsilon: float = 1.0) -> str:
    intro = (f"flchain, {counts['patients']:,} patients: {counts['public']:,} in the attacker's public pool, "
             f"{counts['members']:,} members (uploaded to a real server and trained on by real DP jobs) and "
             f"{counts['non_members']:,} non-members in the target pool; {counts['shadows']} shadow models per model "
             f"({counts['seconds']:.0f} s in all). The package is a deliberate memoriser "
             "(proof/packages/flchain-memoriser): the worst case for privacy.\n\n")
    meaning = (
        "**What the ceilings mean.** (ε, δ)-DP promises that no test, however clever, tells whether one patient was "
        "in the training data with a true-positive rate above min(e^ε·FPR + δ, 1 − e^−ε·(1 − δ − FPR)) at a given "
        "false-positive rate; the AUC ceiling is the area under that curve. A real attack landing below the "
        "ceiling is what DP predicts; one above it would mean the training, the accounting or the release leaks "
        "more than claimed.\n\n"
        "**What passed means.** No DP model's attack lies above its ceiling *with confidence*: for TPR, the "
        f"Clopper-Pearson lower bound ({POINT_CONFIDENCE:.1%} one-sided) against the ceiling at the FPR's "
        f"Clopper-Pearson upper bound ({POINT_CONFIDENCE:.1%}; jointly {CONFIDENCE:.0%}); for AUC, the DeLong "
        f"one-sided {CONFIDENCE:.0%} lower bound against the AUC ceiling. And the same attack on the non-private "
        f"reference beats the ε = {teeth_epsilon:g} ceiling in AUC or TPR at 1% FPR, so the attack is strong "
        "enough for a pass to say something. Figures in brackets are those lower bounds; the ceiling column gives "
        "the ceiling at the nominal FPR and, in brackets, at the FPR's upper bound, which is what is checked.\n\n"
        "**Caveats.** The confidence bounds treat patients as independent trials, though they share one model; "
        "LiRA is offline (shadows never include the target patient); at ε = 8 the ceilings are near 1, so only "
        "ε = 1 and 3 constrain anything.\n\n")
    tables = "\n".join(model_table(r, delta=delta, teeth_epsilon=teeth_epsilon) for r in results)
    return intro + tables + "\n" + "\n".join(f"- {v}" for v in verdicts) + "\n\n" + meaning


def plot(results: list[ModelResult], path: Path, *, delta: float) -> Path:
    """LiRA's ROC per model on log-log axes, with each ε's ceiling in the same colour, dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    grid = np.logspace(-4, 0, 400)
    for index, r in enumerate(results):
        colour = f"C{index}"
        fpr, tpr, _ = roc_curve(r.member, r.lira_scores)
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), color=colour, label=f"LiRA, {r.name} (AUC {r.attacks[0].auc:.2f})")
        if r.epsilon is not None:
            ceiling = [tpr_ceiling(x, epsilon=r.epsilon, delta=delta) for x in grid]
            ax.plot(grid, ceiling, color=colour, linestyle="--", label=f"ceiling, ε = {r.epsilon:g}")
    ax.plot(grid, grid, color="grey", linewidth=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1.05), xlabel="false-positive rate",
           ylabel="true-positive rate", title="Membership inference (LiRA, offline) against the DP ceilings")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
