"""Privacy amounts, budgets and ledger events: exact integers, pure functions, no storage.

ε is held in micro-units and δ in atto-units (1e-18), so sums never drift the way floats do.
Costs round up and caps round down when converted from the floats people type, so a conversion
can only ever make the accounting more conservative.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from cleanroom.domain.errors import FieldViolation, bad_request

EPSILON_SCALE = 10**6
DELTA_SCALE = 10**18
MAX_EPSILON = 1000.0


def _scaled(value: float, scale: int, rounding: str) -> int:
    return int((Decimal(repr(float(value))) * scale).to_integral_value(rounding=rounding))


@dataclass(frozen=True, order=True)
class Privacy:
    """An (ε, δ) amount in exact units: `epsilon` micro-ε, `delta` atto-δ."""

    epsilon: int = 0
    delta: int = 0

    @classmethod
    def cost(cls, epsilon: float, delta: float, *, field_prefix: str = "") -> Privacy:
        """A spend: ε > 0, 0 <= δ < 1 (pure-DP mechanisms spend no δ); rounded up."""
        _check(epsilon, delta, field_prefix, delta_may_be_zero=True)
        return cls(_scaled(epsilon, EPSILON_SCALE, ROUND_CEILING), _scaled(delta, DELTA_SCALE, ROUND_CEILING))

    @classmethod
    def cap(cls, epsilon: float, delta: float, *, field_prefix: str = "") -> Privacy:
        """A budget cap: ε > 0, 0 < δ < 1; rounded down."""
        _check(epsilon, delta, field_prefix, delta_may_be_zero=False)
        return cls(_scaled(epsilon, EPSILON_SCALE, ROUND_FLOOR), _scaled(delta, DELTA_SCALE, ROUND_FLOOR))

    def __add__(self, other: Privacy) -> Privacy:
        return Privacy(self.epsilon + other.epsilon, self.delta + other.delta)

    def __sub__(self, other: Privacy) -> Privacy:
        return Privacy(self.epsilon - other.epsilon, self.delta - other.delta)

    def fits_in(self, other: Privacy) -> bool:
        return self.epsilon <= other.epsilon and self.delta <= other.delta

    @property
    def epsilon_value(self) -> float:
        return self.epsilon / EPSILON_SCALE

    @property
    def delta_value(self) -> float:
        return self.delta / DELTA_SCALE

    def __str__(self) -> str:
        return f"ε={self.epsilon_value:g}, δ={self.delta_value:.3g}"


ZERO = Privacy()


def _check(epsilon: float, delta: float, prefix: str, *, delta_may_be_zero: bool) -> None:
    violations = []
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or not 0 < epsilon <= MAX_EPSILON:
        violations.append(FieldViolation(prefix + "epsilon", f"must be a finite number above 0 and at most {MAX_EPSILON:g}"))
    lowest_ok = 0 <= delta if delta_may_be_zero else 0 < delta
    if not isinstance(delta, (int, float)) or not math.isfinite(delta) or not (lowest_ok and delta < 1):
        bound = "0 or more" if delta_may_be_zero else "above 0"
        violations.append(FieldViolation(prefix + "delta", f"must be a finite number {bound} and below 1"))
    if violations:
        raise bad_request("the privacy parameters are out of range", *violations)


# --- budgets ------------------------------------------------------------------------------------


def dataset_budget_id(dataset_id: str) -> str:
    """The hospital's total leakage for a dataset, across every manufacturer."""
    return f"datasets/{dataset_id}"


def share_budget_id(dataset_id: str, manufacturer_id: str) -> str:
    return f"datasets/{dataset_id}/manufacturers/{manufacturer_id}"


@dataclass(frozen=True)
class Balance:
    cap: Privacy
    reserved: Privacy = ZERO
    spent: Privacy = ZERO

    @property
    def used(self) -> Privacy:
        return self.reserved + self.spent

    @property
    def remaining(self) -> Privacy:
        return self.cap - self.used

    def admits(self, cost: Privacy) -> bool:
        return (self.used + cost).fits_in(self.cap)


# --- ledger events ------------------------------------------------------------------------------


class EventKind(enum.Enum):
    CAP = "cap"          # an officer set a budget's cap (amount = the new cap)
    RESERVE = "reserve"  # held before any data is decrypted
    COMMIT = "commit"    # the actual spend, when a result is released or data was decrypted
    REFUND = "refund"    # the unused part of a reservation


@dataclass(frozen=True)
class Mechanism:
    """What a spend ran, kept so that tighter composition (RDP, PRV) can be computed later."""

    name: str                   # e.g. "subsampled-gaussian", "gaussian", "discrete-laplace"
    accountant: str = "basic"   # the accountant that produced the spend's ε
    parameters: tuple[tuple[str, float], ...] = ()

    def parameter(self, key: str) -> float | None:
        return dict(self.parameters).get(key)


@dataclass(frozen=True)
class LedgerEvent:
    kind: EventKind
    budget_ids: tuple[str, ...]
    amount: Privacy
    actor_id: str
    at: datetime
    spend_id: str | None = None
    mechanism: Mechanism | None = None
    reason: str = ""
    seq: int = 0  # assigned by storage; the log's order


def apply_event(balances: dict[str, Balance], event: LedgerEvent) -> dict[str, Balance]:
    """The one definition of what an event does to the balances it names (pure)."""
    updated = dict(balances)
    for budget_id in event.budget_ids:
        balance = updated.get(budget_id, Balance(ZERO))
        updated[budget_id] = _apply_one(balance, event)
    return updated


def _apply_one(balance: Balance, event: LedgerEvent) -> Balance:
    if event.kind is EventKind.CAP:
        return Balance(event.amount, balance.reserved, balance.spent)
    if event.kind is EventKind.RESERVE:
        return Balance(balance.cap, balance.reserved + event.amount, balance.spent)
    if event.kind is EventKind.COMMIT:
        return Balance(balance.cap, balance.reserved - event.amount, balance.spent + event.amount)
    return Balance(balance.cap, balance.reserved - event.amount, balance.spent)


def replay(events: list[LedgerEvent]) -> dict[str, Balance]:
    balances: dict[str, Balance] = {}
    for event in sorted(events, key=lambda e: e.seq):
        balances = apply_event(balances, event)
    return balances


# --- spends -------------------------------------------------------------------------------------


class SpendState(enum.Enum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class Spend:
    id: str
    dataset_id: str
    manufacturer_id: str
    kind: str            # "training", "evaluation", "statistics"
    reference: str       # the job or query this spend pays for
    reserved: Privacy
    state: SpendState
    mechanism: Mechanism | None = None
    committed: Privacy = ZERO
    decrypted: bool = False
    released: bool = False
    created_at: datetime | None = field(default=None, compare=False)
    workload: str | None = None  # the attested workload hash the reservation pays for
    # A cohort's other datasets (cleanroom/domain/cohort.py): each is charged the same amount, in the
    # same transaction, against its own dataset and share budgets; all settle together.
    cohort: tuple[str, ...] = ()

    @property
    def dataset_ids(self) -> tuple[str, ...]:
        return (self.dataset_id, *self.cohort)

    @property
    def budget_ids(self) -> tuple[str, ...]:
        return tuple(b for d in self.dataset_ids for b in budget_ids_of(d, self.manufacturer_id))


def budget_ids_of(dataset_id: str, manufacturer_id: str) -> tuple[str, str]:
    """The two budgets a spend on one dataset moves: the dataset's and the manufacturer's share of it."""
    return dataset_budget_id(dataset_id), share_budget_id(dataset_id, manufacturer_id)


def settlement_after_crash(spend: Spend) -> EventKind:
    """Start-up reconciliation: what an unfinished reservation becomes.

    Released -> commit (the result is out). Decrypted without release -> commit as spent (a failure
    is information too). Never decrypted -> refund (no data was touched).
    """
    return EventKind.COMMIT if spend.released or spend.decrypted else EventKind.REFUND
