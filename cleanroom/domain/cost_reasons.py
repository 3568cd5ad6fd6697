"""Why a privacy request would be refused or would wait, and what would make it go through (pure).

Every refusal names the rule that refused (the dataset-wide budget, the manufacturer's share, the
approval policy's per-request limits, the auto-approve threshold), the numbers, and a remedy a
person can act on. Amounts are printed exactly (micro-ε, atto-δ as decimals), so "raise the cap to
at least ε 10.6" really is enough. The dataset-wide budget's numbers are shown only to callers who
may see them: to a manufacturer they would reveal what other manufacturers spent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from cleanroom.domain.approvals import ApprovalPolicy, default_delta_limit
from cleanroom.domain.privacy import DELTA_SCALE, EPSILON_SCALE, Balance, Privacy


class Rule(enum.Enum):
    DATASET_BUDGET = "dataset_budget"    # the hospital's total for the dataset, across manufacturers
    SHARE_BUDGET = "share_budget"        # one manufacturer's share of the dataset
    APPROVAL_POLICY = "approval_policy"  # the per-request ε and δ limits
    AUTO_APPROVAL = "auto_approval"      # the threshold below which requests skip the officer's queue


class Outcome(enum.Enum):
    REFUSED = "refused"
    NEEDS_APPROVAL = "needs_approval"


RULE_NAMES = {
    Rule.DATASET_BUDGET: "the dataset-wide budget",
    Rule.SHARE_BUDGET: "the manufacturer's share budget",
    Rule.APPROVAL_POLICY: "the approval policy",
    Rule.AUTO_APPROVAL: "the auto-approve threshold",
}


@dataclass(frozen=True)
class CostReason:
    rule: Rule
    outcome: Outcome
    requested: Privacy
    message: str                     # which rule, with its numbers
    remedy: str                      # what would make the request go through
    budget_id: str = ""              # budget rules only
    cap_set: bool = True             # budget rules: False when no cap was ever set
    left: Privacy | None = None      # budget rules: what remains (None: no cap, or hidden from the caller)
    limit: Privacy | None = None     # policy rules: the per-request limit or the auto-approve threshold
    fits_with: Privacy | None = None  # the smallest cap or limit that would admit the request (None: hidden)

    @property
    def sentence(self) -> str:
        return f"{self.message}; to go ahead, {self.remedy}"


def epsilon_text(micro: int) -> str:
    return _exact(micro, EPSILON_SCALE)


def delta_text(atto: int) -> str:
    return _exact(atto, DELTA_SCALE)


def _exact(units: int, scale: int) -> str:
    """Every digit the exact units hold (no float rounding), small values as 1.1e-5."""
    value = (Decimal(units) / scale).normalize()
    return format(value, "f") if value >= Decimal("0.001") or value == 0 else format(value, "e")


def amount_text(amount: Privacy) -> str:
    return f"ε {epsilon_text(amount.epsilon)}, δ {delta_text(amount.delta)}"


def budget_reason(rule: Rule, budget_id: str, balance: Balance | None, cost: Privacy, *, show_numbers: bool = True
                  ) -> CostReason | None:
    """None when the budget admits `cost`; else why not, and the cap that would admit it."""
    name = RULE_NAMES[rule]
    if balance is None:
        return CostReason(
            rule, Outcome.REFUSED, cost, budget_id=budget_id, cap_set=False, fits_with=cost,
            message=f"{name} ({budget_id}) has no cap set, so nothing can be spent on it",
            remedy=f"a privacy officer can set a cap of at least {amount_text(cost)} "
                   f"(cleanroom privacy budget {_budget_command(rule, budget_id)} --epsilon E --delta D --reason …)",
        )
    if balance.admits(cost):
        return None
    if not show_numbers:
        return CostReason(rule, Outcome.REFUSED, cost, budget_id=budget_id,
                          message=f"{name} ({budget_id}) does not have {amount_text(cost)} left for this request",
                          remedy="ask the dataset's privacy officer to raise that cap, or request less")
    needed = Privacy(max(balance.cap.epsilon, balance.used.epsilon + cost.epsilon), max(balance.cap.delta, balance.used.delta + cost.delta))
    left = Privacy(max(balance.remaining.epsilon, 0), max(balance.remaining.delta, 0))
    return CostReason(
        rule, Outcome.REFUSED, cost, budget_id=budget_id, left=left, fits_with=needed,
        message=f"{name} ({budget_id}) has {amount_text(left)} left of its cap {amount_text(balance.cap)}; "
                f"this request needs {amount_text(cost)}",
        remedy=f"a privacy officer can raise that cap to at least {_short_of(balance.cap, needed)}, "
               f"or request at most {amount_text(left)}",
    )


def _short_of(cap: Privacy, needed: Privacy) -> str:
    """The cap that would admit the request, naming only the parts that must grow."""
    parts = []
    if needed.epsilon > cap.epsilon:
        parts.append(f"ε {epsilon_text(needed.epsilon)}")
    if needed.delta > cap.delta:
        parts.append(f"δ {delta_text(needed.delta)}")
    return " and ".join(parts)


def _budget_command(rule: Rule, budget_id: str) -> str:
    if rule is Rule.SHARE_BUDGET:
        dataset, _, manufacturer = budget_id.partition("/manufacturers/")
        return f"{dataset} --manufacturer principals/{manufacturer}"
    return budget_id


def policy_reasons(policy: ApprovalPolicy, cost: Privacy, patients: int) -> list[CostReason]:
    """The per-request limits first (a refusal); else, above the auto-approve threshold, the wait."""
    refusals = _limit_reasons(policy, cost, patients)
    if refusals or cost.epsilon <= policy.auto_approve_epsilon:
        return refusals
    threshold = Privacy(policy.auto_approve_epsilon, 0)
    current = f"ε {epsilon_text(policy.auto_approve_epsilon)}" if policy.auto_approve_epsilon else "none set"
    return [CostReason(
        Rule.AUTO_APPROVAL, Outcome.NEEDS_APPROVAL, cost, limit=threshold, fits_with=Privacy(cost.epsilon, 0),
        message=f"ε {epsilon_text(cost.epsilon)} is above this dataset's auto-approve threshold ({current})",
        remedy=f"ask a privacy officer to approve the request (cleanroom privacy approve), or to raise the "
               f"auto-approve threshold to at least ε {epsilon_text(cost.epsilon)}",
    )]


def _limit_reasons(policy: ApprovalPolicy, cost: Privacy, patients: int) -> list[CostReason]:
    reasons = []
    if cost.epsilon > policy.max_epsilon:
        limit = epsilon_text(policy.max_epsilon)
        reasons.append(CostReason(
            Rule.APPROVAL_POLICY, Outcome.REFUSED, cost, limit=Privacy(policy.max_epsilon, 0), fits_with=Privacy(cost.epsilon, 0),
            message=f"ε {epsilon_text(cost.epsilon)} is above this dataset's per-request limit ε {limit}",
            remedy=f"request at most ε {limit}, or ask a privacy officer to raise the per-request limit to at least "
                   f"ε {epsilon_text(cost.epsilon)}",
        ))
    delta_limit = policy.delta_limit(patients)
    if cost.delta > delta_limit:
        reasons.append(_delta_reason(policy, cost, patients, delta_limit))
    return reasons


def _delta_reason(policy: ApprovalPolicy, cost: Privacy, patients: int, delta_limit: int) -> CostReason:
    default = default_delta_limit(patients)
    # δ above 1/(10 x patients) is never allowed (δ must stay well below 1/patients): only an
    # officer's own lower limit can be raised, and only up to that default.
    raisable = policy.max_delta and delta_limit < default and cost.delta <= default
    remedy = f"request at most δ {delta_text(delta_limit)}"
    if raisable:
        remedy += f", or ask a privacy officer to raise the per-request δ limit to at least {delta_text(cost.delta)}"
    elif delta_limit == default:
        remedy += f" (1 / (10 × {patients} patients); δ must stay well below 1 / patients)"
    return CostReason(
        Rule.APPROVAL_POLICY, Outcome.REFUSED, cost, limit=Privacy(0, delta_limit),
        fits_with=Privacy(0, cost.delta) if raisable else None,
        message=f"δ {delta_text(cost.delta)} is above this dataset's per-request limit δ {delta_text(delta_limit)}",
        remedy=remedy,
    )
