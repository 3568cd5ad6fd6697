"""The privacy ledger: reserve before data is touched, commit what a release spent, refund only
what no decryption ever saw. Every change is an immutable event plus an audit entry, written in
the same transaction as the balance it moves."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from cleanroom.domain.approvals import WorkSummary, new_spend_id
from cleanroom.domain.cost_reasons import CostReason, Outcome, Rule, amount_text, budget_reason
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation
from cleanroom.domain.privacy import (
    ZERO,
    Balance,
    EventKind,
    LedgerEvent,
    Mechanism,
    Privacy,
    Spend,
    SpendState,
    budget_ids_of,
    dataset_budget_id,
    settlement_after_crash,
    share_budget_id,
)
from cleanroom.observability.metrics import BudgetSnapshot, Metrics
from cleanroom.storage import audit_repo, clock, privacy_repo
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

SYSTEM = "system"


class BudgetExhausted(CleanroomError):
    """Not enough budget left. Each refusing budget is named in words with what would make the
    request fit; `budget_ids` are the QuotaFailure subjects."""

    def __init__(self, reasons: tuple[CostReason, ...]) -> None:
        super().__init__(
            ErrorCode.PRIVACY_BUDGET_EXHAUSTED,
            "not enough privacy budget: " + "; ".join(r.message for r in reasons),
            violations=[FieldViolation(r.budget_id, f"to go ahead, {r.remedy}") for r in reasons],
        )
        self.budget_ids = tuple(r.budget_id for r in reasons)
        self.reasons = reasons


def _budget_rule(budget_id: str) -> Rule:
    return Rule.SHARE_BUDGET if "/manufacturers/" in budget_id else Rule.DATASET_BUDGET


def refusal(budget_id: str, balance: Balance | None, cost: Privacy) -> CostReason:
    """Why `budget_id` refused `cost`. The dataset-wide numbers stay out: the caller may be a
    manufacturer, to whom they would reveal what others spent."""
    rule = _budget_rule(budget_id)
    reason = budget_reason(rule, budget_id, balance, cost, show_numbers=rule is Rule.SHARE_BUDGET)
    if reason is not None:
        return reason
    return CostReason(rule, Outcome.REFUSED, cost, budget_id=budget_id,  # it changed since the refusal: a race
                      message=f"the budget {budget_id} did not have {amount_text(cost)} left at that moment",
                      remedy="try again")


@dataclass(frozen=True)
class SpendRequest:
    dataset_id: str
    manufacturer_id: str
    kind: str
    reference: str
    cost: Privacy
    mechanism: Mechanism | None = None
    workload: str | None = None
    # The caller opens the data as soon as the reservation exists (a statistics query on a warm
    # worker): mark the spend decrypted in the reserving transaction, so it is spent from birth.
    decrypted_on_reserve: bool = False
    # A cohort's other datasets: one spend charges every dataset the same cost, all or none.
    cohort: tuple[str, ...] = ()
    work: WorkSummary | None = None  # what an officer reads when deciding (kept on the request)

    @property
    def dataset_ids(self) -> tuple[str, ...]:
        return (self.dataset_id, *self.cohort)


def record_spend_event(session: Session, event: LedgerEvent, spend: Spend) -> None:
    """A spend's event, as one event per dataset it charges: each hospital's ledger and audit trail
    hold its own part of a cohort spend (its two budgets), never the other sites'."""
    for dataset_id in spend.dataset_ids:
        own = budget_ids_of(dataset_id, spend.manufacturer_id)
        part = dataclasses.replace(event, budget_ids=tuple(b for b in event.budget_ids if b in own))
        record(session, part, spend, dataset_id=dataset_id, manufacturer_id=spend.manufacturer_id)


def record(session: Session, event: LedgerEvent, spend: Spend | None, *, dataset_id: str, manufacturer_id: str | None) -> None:
    """One ledger event and its audit entry (the audit entry last: it takes the chain's lock)."""
    privacy_repo.add_event(session, event, dataset_id=dataset_id, manufacturer_id=manufacturer_id)
    details = {"epsilon": event.amount.epsilon_value, "delta": event.amount.delta_value, "budgets": list(event.budget_ids)}
    if spend is not None:
        details.update(spend=spend.id, kind=spend.kind, reference=spend.reference)
    if event.reason:
        details["reason"] = event.reason
    actor = SYSTEM if event.actor_id == SYSTEM else f"principals/{event.actor_id}"
    audit_repo.append(session, actor=actor, action=f"ledger.{event.kind.value}", target=f"datasets/{dataset_id}", details=details)


def budget_snapshots(db: Database) -> list[BudgetSnapshot]:
    """Dataset-wide budgets for the metrics gauges (share budgets would name manufacturers)."""
    with db.read() as session:
        balances = privacy_repo.all_balances(session)
    return [
        BudgetSnapshot(budget_id.removeprefix("datasets/"), b.cap.epsilon_value, b.spent.epsilon_value, b.reserved.epsilon_value)
        for budget_id, b in sorted(balances.items())
        if "/" not in budget_id.removeprefix("datasets/")
    ]


class Ledger:
    def __init__(self, db: Database, metrics: Metrics | None = None, owner: str | None = None) -> None:
        self._db = db
        self._metrics = metrics
        self.owner = owner  # this server's instance id: its open reservations are its own (server/lease.py)

    def reserve_in(self, session: Session, request: SpendRequest, *, actor_id: str, spend_id: str | None = None) -> Spend:
        """Reserves on the dataset budget and the share budget together, inside the caller's transaction."""
        spend = Spend(spend_id or new_spend_id(), request.dataset_id, request.manufacturer_id, request.kind, request.reference,
                      request.cost, SpendState.RESERVED, request.mechanism, workload=request.workload, cohort=request.cohort)
        for dataset_id in spend.dataset_ids:  # a paused or withdrawn share takes no new reservation
            privacy_repo.require_active_share(session, dataset_id, request.manufacturer_id)
        refused = tuple(b for b in sorted(spend.budget_ids) if not privacy_repo.try_reserve(session, b, request.cost))
        if refused:
            self._count("exhausted")
            raise BudgetExhausted(tuple(refusal(b, privacy_repo.get_balance(session, b), request.cost) for b in refused))
        self._count("reserved")
        privacy_repo.add_spend(session, spend, owner=self.owner)
        if request.decrypted_on_reserve:
            session.flush()
            if not privacy_repo.mark_decrypted(session, spend.id):
                raise CleanroomError(ErrorCode.INTERNAL, "the new reservation could not be marked decrypted")
        event = LedgerEvent(EventKind.RESERVE, spend.budget_ids, request.cost, actor_id, clock.now(),
                            spend_id=spend.id, mechanism=request.mechanism)
        record_spend_event(session, event, spend)
        return spend

    def reserve(self, request: SpendRequest, *, actor_id: str) -> Spend:
        """All or nothing: a refusal on either budget rolls the whole reservation back."""
        with self._db.transaction() as session:
            return self.reserve_in(session, request, actor_id=actor_id)

    def reserve_sized(self, request: SpendRequest, size: Callable[[Balance, Balance], Privacy], *, actor_id: str) -> Spend:
        """A reservation whose amount depends on what is left: `size(dataset_balance, share_balance)`
        is read and reserved in one transaction (a statistics allowance)."""
        with self._db.transaction() as session:
            dataset = privacy_repo.get_balance(session, dataset_budget_id(request.dataset_id))
            share = privacy_repo.get_balance(session, share_budget_id(request.dataset_id, request.manufacturer_id))
            if dataset is None or share is None:
                self._count("exhausted")
                ids = (dataset_budget_id(request.dataset_id), share_budget_id(request.dataset_id, request.manufacturer_id))
                raise BudgetExhausted(tuple(refusal(i, None, request.cost) for i, b in zip(ids, (dataset, share)) if b is None))
            sized = dataclasses.replace(request, cost=size(dataset, share))
            return self.reserve_in(session, sized, actor_id=actor_id)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.reservations.labels(outcome).inc()

    def mark_decrypted(self, spend_id: str) -> None:
        """Called before the dataset key leaves the broker: from here on, a failure spends too."""
        with self._db.transaction() as session:
            if not privacy_repo.mark_decrypted(session, spend_id):
                raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "this spend holds no open reservation")

    def release(self, spend_id: str, actual: Privacy, *, actor_id: str = SYSTEM) -> Spend:
        """A result was released: commit what it spent (at most the reservation), refund the rest."""
        return self._close(spend_id, actual, released=True, actor_id=actor_id)

    def release_in(self, session: Session, spend_id: str, actual: Privacy, *, actor_id: str = SYSTEM) -> Spend:
        """`release` inside the caller's transaction (so the caller's own audit entry commits with it)."""
        return self._close_in(session, spend_id, actual, released=True, actor_id=actor_id)

    def settle_in(self, session: Session, spend_id: str, actual: Privacy, *, reason: str) -> Spend:
        """Closes a reservation inside the caller's transaction at `actual` (released when above zero)."""
        return self._close_in(session, spend_id, actual, released=actual != ZERO, actor_id=SYSTEM, reason=reason)

    def fail(self, spend_id: str, *, actor_id: str = SYSTEM, reason: str = "") -> Spend:
        """No release: refund if no data was ever decrypted, otherwise the reservation is spent."""
        with self._db.read() as session:
            spend = privacy_repo.get_spend(session, spend_id)
        if spend is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, "spend not found")
        actual = spend.reserved if spend.decrypted else ZERO
        return self._close(spend_id, actual, released=False, actor_id=actor_id, reason=reason)

    def _close(self, spend_id: str, actual: Privacy, *, released: bool, actor_id: str, reason: str = "") -> Spend:
        with self._db.transaction() as session:
            return self._close_in(session, spend_id, actual, released=released, actor_id=actor_id, reason=reason)

    def _close_in(self, session: Session, spend_id: str, actual: Privacy, *, released: bool, actor_id: str, reason: str = "") -> Spend:
        spend = privacy_repo.get_spend(session, spend_id, for_update=True)
        if spend is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, "spend not found")
        if spend.state is not SpendState.RESERVED:
            return spend  # already settled: settling twice must not count twice
        self._settle(session, spend, actual, released=released, actor_id=actor_id, reason=reason)
        return privacy_repo.get_spend(session, spend_id)  # type: ignore[return-value]

    def _settle(self, session: Session, spend: Spend, actual: Privacy, *, released: bool, actor_id: str, reason: str) -> None:
        if not actual.fits_in(spend.reserved):
            raise CleanroomError(ErrorCode.INTERNAL, "a release may not spend more than its reservation")
        state = SpendState.COMMITTED if (released or spend.decrypted) else SpendState.REFUNDED
        if not privacy_repo.close_spend(session, spend.id, state, actual, released=released):
            return
        for budget_id in sorted(spend.budget_ids):
            privacy_repo.settle(session, budget_id, spend.reserved, actual)
        refund = spend.reserved - actual
        for kind, amount in ((EventKind.COMMIT, actual), (EventKind.REFUND, refund)):
            if amount != ZERO:
                event = LedgerEvent(kind, spend.budget_ids, amount, actor_id, clock.now(), spend_id=spend.id,
                                    mechanism=spend.mechanism if kind is EventKind.COMMIT else None, reason=reason)
                record_spend_event(session, event, spend)

    def has_open_reservation(self, workload: str) -> bool:
        """The key broker's check: an open reservation exists for exactly this workload."""
        with self._db.read() as session:
            return privacy_repo.open_spend_for_workload(session, workload) is not None

    def events(self, *, dataset_id: str | None = None, manufacturer_id: str | None = None, kind: EventKind | None = None,
               after_seq: int = 0, limit: int) -> list[LedgerEvent]:
        """A page of ledger events after `after_seq`, optionally of one dataset, manufacturer or kind."""
        where = privacy_repo.EventFilter(dataset_id=dataset_id, manufacturer_id=manufacturer_id, kind=kind, after_seq=after_seq, limit=limit)
        with self._db.read() as session:
            return privacy_repo.events(session, where)

    def recover(self, keep: set[str] | frozenset[str] = frozenset(), *, orphaned_at: datetime | None = None) -> dict[str, int]:
        """Start-up and sweeper: settles every reservation left open by a crash, each exactly once.
        `keep` names reservations still wanted (jobs that will run or still run); with `orphaned_at`,
        only reservations whose server holds no live lease then are settled (never a live peer's)."""
        with self._db.read() as session:
            open_spends = [s for s in privacy_repo.open_spends(session, orphaned_at) if s.id not in keep]
        outcome = {"committed": 0, "refunded": 0}
        for spend in open_spends:
            kind = settlement_after_crash(spend)
            actual = spend.reserved if kind is EventKind.COMMIT else ZERO
            self._close(spend.id, actual, released=spend.released, actor_id=SYSTEM, reason="reconciled at start-up")
            outcome["committed" if kind is EventKind.COMMIT else "refunded"] += 1
        if open_spends:
            log.info("ledger reconciled: %(committed)d spends committed, %(refunded)d refunded", outcome)
        return outcome
