"""The privacy officer's controls: shares, caps and approval policies, and the budget views.

Scoped by organisation (privacy/scope.py): a hospital's officers and auditors act on its own
datasets only, and another organisation's dataset is NOT_FOUND; the operator's act platform-wide."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from sqlalchemy.orm import Session

from cleanroom.domain.approvals import ApprovalPolicy
from cleanroom.domain.budgets import BudgetLine, BudgetView
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.organisations import platform_wide
from cleanroom.domain.privacy import Balance, EventKind, LedgerEvent, Privacy, dataset_budget_id, share_budget_id
from cleanroom.privacy import composition
from cleanroom.privacy.ledger import record
from cleanroom.privacy.scope import governed_dataset
from cleanroom.storage import audit_repo, clock, dataset_repo, principal_repo, privacy_repo
from cleanroom.storage.db import Database

NOT_FOUND = "dataset not found"
T = TypeVar("T")


def retry_after_release(action: Callable[[], T], *, refused: type[Exception], release: Callable[[], bool]) -> T:
    """Runs `action`; if budget held but unused on this server (statistics allowances) may be why
    it was `refused`, frees it and runs `action` once more."""
    try:
        return action()
    except refused:
        if not release():
            raise
        return action()


def require_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > 1000:
        raise bad_request("every budget change needs a reason (1 to 1000 characters)", FieldViolation("reason", "required"))
    return reason


def load_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = dataset_repo.get_dataset(session, dataset_id)
    if dataset is None:
        raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
    return dataset


def load_manufacturer(session: Session, manufacturer_id: str) -> Principal:
    principal = principal_repo.get_principal(session, manufacturer_id)
    if principal is None or principal.role is not Role.MANUFACTURER:
        raise CleanroomError(ErrorCode.NOT_FOUND, "manufacturer not found")
    return principal


class CapBelowUse(CleanroomError):
    def __init__(self) -> None:
        super().__init__(
            ErrorCode.FAILED_PRECONDITION,
            "the new cap is below what this budget has already spent or reserved",
            violations=[FieldViolation("cap", "at least the spent plus reserved amount")],
        )


class BudgetService:
    def __init__(self, db: Database, release_held: Callable[[str], bool] = lambda dataset_id: False) -> None:
        self._db = db
        # Frees budget this server holds but has not used on a dataset (statistics allowances),
        # so a cap lowered to what is really spent is not refused for it.
        self._release_held = release_held

    def _retrying(self, dataset_id: str, action: Callable[[], T]) -> T:
        return retry_after_release(action, refused=CapBelowUse, release=lambda: self._release_held(dataset_id))

    def share(self, officer: Principal, dataset_id: str, manufacturer_id: str, cap: Privacy, reason: str) -> None:
        """Shares a dataset with a manufacturer and sets that pair's cap, in one transaction."""
        reason = require_reason(reason)
        self._retrying(dataset_id, lambda: self._share(officer, dataset_id, manufacturer_id, cap, reason))

    def _share(self, officer: Principal, dataset_id: str, manufacturer_id: str, cap: Privacy, reason: str) -> None:
        with self._db.transaction() as session:
            governed_dataset(session, officer, dataset_id)
            load_manufacturer(session, manufacturer_id)
            if privacy_repo.add_share(session, dataset_id, manufacturer_id, officer.id):
                audit_repo.append(session, actor=officer.resource_name, action="dataset.share",
                                  target=f"datasets/{dataset_id}", details={"manufacturer": f"principals/{manufacturer_id}", "reason": reason})
            self._set_cap(session, officer, dataset_id, manufacturer_id, cap, reason)

    def set_cap(self, officer: Principal, dataset_id: str, manufacturer_id: str | None, cap: Privacy, reason: str) -> Balance:
        """manufacturer_id None sets the dataset-wide cap (the hospital's total leakage)."""
        reason = require_reason(reason)
        return self._retrying(dataset_id, lambda: self._set_cap_alone(officer, dataset_id, manufacturer_id, cap, reason))

    def _set_cap_alone(self, officer: Principal, dataset_id: str, manufacturer_id: str | None, cap: Privacy, reason: str) -> Balance:
        with self._db.transaction() as session:
            governed_dataset(session, officer, dataset_id)
            if manufacturer_id is not None and not privacy_repo.is_shared(session, dataset_id, manufacturer_id):
                raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "share the dataset with this manufacturer first")
            return self._set_cap(session, officer, dataset_id, manufacturer_id, cap, reason)

    def _set_cap(self, session: Session, officer: Principal, dataset_id: str, manufacturer_id: str | None, cap: Privacy, reason: str) -> Balance:
        budget_id = share_budget_id(dataset_id, manufacturer_id) if manufacturer_id else dataset_budget_id(dataset_id)
        if not privacy_repo.set_cap(session, budget_id, dataset_id, manufacturer_id, cap):
            raise CapBelowUse()
        event = LedgerEvent(EventKind.CAP, (budget_id,), cap, officer.id, clock.now(), reason=reason)
        record(session, event, None, dataset_id=dataset_id, manufacturer_id=manufacturer_id)
        return privacy_repo.get_balance(session, budget_id)  # type: ignore[return-value]

    def set_policy(self, officer: Principal, dataset_id: str, policy: ApprovalPolicy, reason: str) -> ApprovalPolicy:
        reason = require_reason(reason)
        with self._db.transaction() as session:
            governed_dataset(session, officer, dataset_id)
            privacy_repo.put_policy(session, dataset_id, policy)
            audit_repo.append(session, actor=officer.resource_name, action="policy.set", target=f"datasets/{dataset_id}",
                              details={"max_epsilon": policy.max_epsilon, "max_delta": policy.max_delta,
                                       "auto_approve_epsilon": policy.auto_approve_epsilon,
                                       "stats_rows_per_patient": policy.stats_rows_per_patient,
                                       "require_privacy_audit": policy.require_privacy_audit, "reason": reason})
        return policy

    def view(self, principal: Principal, dataset_id: str) -> BudgetView:
        """Officers see every budget of the dataset; a manufacturer only its own share's budget."""
        with self._db.read() as session:
            dataset = self._readable(session, principal, dataset_id)
            lines = []
            balances = privacy_repo.dataset_balances(session, dataset_id)
            for budget_id, (manufacturer_id, balance) in balances.items():
                if principal.role is Role.MANUFACTURER and manufacturer_id != principal.id:
                    continue
                who = principal_repo.get_principal(session, manufacturer_id) if manufacturer_id else None
                lines.append(BudgetLine(budget_id, who, balance))
            commits = privacy_repo.events(session, privacy_repo.EventFilter(dataset_id=dataset_id, kind=EventKind.COMMIT))
            policy = privacy_repo.get_policy(session, dataset_id)
        return BudgetView(dataset, tuple(_with_composition(line, commits) for line in lines), policy,
                          dataset_cap_set=dataset_budget_id(dataset_id) in balances)


    @staticmethod
    def _readable(session: Session, principal: Principal, dataset_id: str) -> Dataset:
        """A manufacturer reads a dataset shared with it; oversight, a dataset its organisation governs."""
        if principal.role is not Role.MANUFACTURER:
            return governed_dataset(session, principal, dataset_id)
        dataset = load_dataset(session, dataset_id)
        if not privacy_repo.is_shared(session, dataset_id, principal.id):
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        return dataset

    def check_governed(self, principal: Principal, dataset_id: str) -> None:
        """NOT_FOUND unless `principal`'s organisation governs the dataset (an officer's estimate)."""
        with self._db.read() as session:
            governed_dataset(session, principal, dataset_id)

    def ledger_events(self, principal: Principal, *, dataset_id: str | None, manufacturer_id: str | None,
                      kind: EventKind | None, after_seq: int, limit: int) -> list[LedgerEvent]:
        """A page of the ledger within the principal's scope: a hospital's officers and auditors see
        the events of their organisation's datasets (deleted ones too), never another's."""
        where = privacy_repo.EventFilter(dataset_id=dataset_id, manufacturer_id=manufacturer_id, kind=kind,
                                         after_seq=after_seq, limit=limit)
        with self._db.read() as session:
            if platform_wide(principal.organisation_id):
                return privacy_repo.events(session, where)
            own = dataset_repo.organisation_dataset_ids(session, principal.organisation_id, deleted_too=True)
            if where.dataset_id is not None and where.dataset_id not in own:
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            return privacy_repo.events(session, replace(where, dataset_ids=frozenset(own)))


def _with_composition(line: BudgetLine, commits: list[LedgerEvent]) -> BudgetLine:
    mine = [e for e in commits if line.budget_id in e.budget_ids]
    delta = line.balance.spent.delta_value or line.balance.cap.delta_value
    return replace(line, basic_epsilon=composition.basic_epsilon(mine), rdp_epsilon=composition.rdp_epsilon(mine, delta))
