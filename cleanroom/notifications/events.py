"""The notifications themselves (pure): what happened, in plain words, naming the request, budget
or dataset, never a data value. Each event has a key that is the same on every replica and every
sweep (the outbox holds one message per key and channel), which is what makes "told once" hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cleanroom.domain.approvals import PrivacyRequest
from cleanroom.domain.audit import ChainVerdict
from cleanroom.domain.privacy import Balance, Privacy

PENDING_REQUEST = "request.pending"
BUDGET_THRESHOLD = "budget.threshold"
AUDIT_BROKEN = "audit.broken"


@dataclass(frozen=True)
class Event:
    key: str          # unique per thing told: e.g. "request.pending/privacyRequests/r1"
    kind: str
    subject: str
    text: str
    facts: dict[str, Any] = field(default_factory=dict)  # the webhook's machine-readable part


@dataclass(frozen=True)
class Names:
    """Display names that make a message readable; ids are always given as well."""

    dataset: str = ""
    manufacturer: str = ""


def pending_key(request: PrivacyRequest) -> str:
    return f"{PENDING_REQUEST}/{request.resource_name}"


def threshold_key(budget_id: str, threshold: float) -> str:
    return f"{BUDGET_THRESHOLD}/{budget_id}/{threshold:g}"


def pending_request(request: PrivacyRequest, names: Names) -> Event:
    dataset = _named(f"datasets/{request.dataset_id}", names.dataset)
    maker = _named(f"principals/{request.manufacturer_id}", names.manufacturer)
    cost = _amount(request.cost)
    text = (f"A {request.kind} privacy request, {request.resource_name}, from manufacturer {maker} on dataset {dataset} "
            f"asks to spend {cost}. It is above the dataset's auto-approve line and waits for a privacy officer "
            f"to approve or reject it with a reason. Submitted {_when(request.created_at)}.")
    facts = {"request": request.resource_name, "dataset": f"datasets/{request.dataset_id}",
             "manufacturer": f"principals/{request.manufacturer_id}", "kind": request.kind,
             "epsilon": request.cost.epsilon_value, "delta": request.cost.delta_value,
             "submitted_at": _when(request.created_at)}
    if request.group_id:
        facts["cohort"] = f"privacyRequests/{request.group_id}"
    return Event(pending_key(request), PENDING_REQUEST,
                 f"Privacy request waiting for an officer: {request.resource_name} on {dataset}", text, facts)


def spent_fraction(balance: Balance) -> float:
    """The larger of the ε and δ fractions of the cap spent (committed; reservations not yet)."""
    fractions = [balance.spent.epsilon / balance.cap.epsilon if balance.cap.epsilon > 0 else 0.0,
                 balance.spent.delta / balance.cap.delta if balance.cap.delta > 0 else 0.0]
    return max(fractions)


def crossed(balance: Balance, thresholds: tuple[float, ...]) -> tuple[float, ...]:
    """The thresholds this budget's spending has reached or passed."""
    fraction = spent_fraction(balance)
    return tuple(t for t in thresholds if fraction >= t)


def budget_threshold(budget_id: str, balance: Balance, threshold: float, names: Names) -> Event:
    dataset_id, _, rest = budget_id.removeprefix("datasets/").partition("/manufacturers/")
    dataset = _named(f"datasets/{dataset_id}", names.dataset)
    which = (f"the share of manufacturer {_named(f'principals/{rest}', names.manufacturer)} in dataset {dataset}" if rest
             else f"the dataset-wide budget of {dataset}")
    percent = f"{threshold * 100:g} %"
    text = (f"Privacy budget {budget_id}, {which}, has crossed {percent} of its cap spent: "
            f"spent {_amount(balance.spent)} of a cap of {_amount(balance.cap)} "
            f"({spent_fraction(balance) * 100:.1f} %), with {_amount(balance.reserved)} reserved and not yet spent.")
    facts = {"budget": budget_id, "dataset": f"datasets/{dataset_id}", "threshold": threshold,
             "spent_fraction": round(spent_fraction(balance), 6),
             "cap_epsilon": balance.cap.epsilon_value, "cap_delta": balance.cap.delta_value,
             "spent_epsilon": balance.spent.epsilon_value, "spent_delta": balance.spent.delta_value,
             "reserved_epsilon": balance.reserved.epsilon_value, "reserved_delta": balance.reserved.delta_value}
    if rest:
        facts["manufacturer"] = f"principals/{rest}"
    return Event(threshold_key(budget_id, threshold), BUDGET_THRESHOLD,
                 f"Budget {percent} spent: {budget_id} ({names.dataset or dataset_id})", text, facts)


def audit_broken(verdict: ChainVerdict) -> Event:
    """One event per place the chain breaks: the first entry that does not hold names it."""
    text = (f"The audit log's hash chain does not verify: it breaks at entry {verdict.first_bad_seq} ({verdict.problem}). "
            f"{verdict.entries} entries before it verify; the last good one is seq {verdict.head.seq}. Every entry "
            f"from the break on can no longer be trusted: compare with an exported copy or anchor and investigate.")
    facts = {"first_bad_seq": verdict.first_bad_seq, "problem": verdict.problem, "verified_entries": verdict.entries,
             "last_good_seq": verdict.head.seq}
    return Event(f"{AUDIT_BROKEN}/{verdict.first_bad_seq}", AUDIT_BROKEN,
                 f"Audit chain broken at entry {verdict.first_bad_seq}", text, facts)


def _named(resource: str, name: str) -> str:
    return f'"{name}" ({resource})' if name else resource


def _amount(privacy: Privacy) -> str:
    return f"ε = {privacy.epsilon_value:g}, δ = {privacy.delta_value:g}"


def _when(at: datetime) -> str:
    return at.isoformat(timespec="seconds")
