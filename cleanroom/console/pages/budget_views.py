"""Budgets as the console shows them: plain numbers from the API's Budget messages, formatted once.

The inbox and the budgets pages both show a budget's cap, spent, reserved and remaining, and a gauge
of what remains; this is the one place that turns the wire message into those figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cleanroom.v1 import privacy_pb2


def epsilon_text(value: float) -> str:
    """ε to six significant digits: enough to tell budgets apart, without float noise."""
    return f"{value:.6g}"


def delta_text(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class BudgetLine:
    """One budget (dataset-wide or one manufacturer's share) in ε and δ."""

    name: str
    manufacturer: str
    who: str  # "whole dataset" or the manufacturer's display name
    cap_epsilon: float
    cap_delta: float
    spent_epsilon: float
    reserved_epsilon: float
    remaining_epsilon: float
    remaining_delta: float
    share_state: str

    @property
    def is_share(self) -> bool:
        return bool(self.manufacturer)

    @property
    def used_fraction(self) -> float:
        return 0.0 if self.cap_epsilon <= 0 else min(1.0, (self.spent_epsilon + self.reserved_epsilon) / self.cap_epsilon)


def line(budget: privacy_pb2.Budget) -> BudgetLine:
    who = (budget.manufacturer_display_name or budget.manufacturer) if budget.manufacturer else "whole dataset"
    return BudgetLine(
        name=budget.name, manufacturer=budget.manufacturer, who=who,
        cap_epsilon=budget.cap.epsilon, cap_delta=budget.cap.delta,
        spent_epsilon=budget.spent.epsilon, reserved_epsilon=budget.reserved.epsilon,
        remaining_epsilon=budget.remaining.epsilon, remaining_delta=budget.remaining.delta,
        share_state=budget.share_state,
    )


def lines(budgets: Iterable[privacy_pb2.Budget]) -> list[BudgetLine]:
    """Dataset-wide first, then the shares by manufacturer name."""
    return sorted((line(b) for b in budgets), key=lambda b: (b.is_share, b.who.lower(), b.name))


@dataclass(frozen=True)
class Gauge:
    """What remains of one budget before and after something is approved (a <meter> and its words)."""

    budget: BudgetLine
    after_epsilon: float | None  # None: the request no longer fits this budget

    @property
    def cap(self) -> float:
        return self.budget.cap_epsilon

    @property
    def before(self) -> float:
        return self.budget.remaining_epsilon


def gauges(before: Sequence[privacy_pb2.Budget], after: Sequence[privacy_pb2.Budget]) -> list[Gauge]:
    """Each budget's remaining ε now and once approved, matched by budget name."""
    after_by_name = {b.name: b.remaining.epsilon for b in after}
    return [Gauge(b, after_by_name.get(b.name)) for b in lines(before)]


def tightest(gauges_: Sequence[Gauge]) -> Gauge | None:
    """The budget that limits the request most: the least ε left afterwards (or now, if it does not fit)."""
    if not gauges_:
        return None
    return min(gauges_, key=lambda g: (g.after_epsilon is not None, g.after_epsilon if g.after_epsilon is not None else g.before))
