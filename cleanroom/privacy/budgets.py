"""The privacy officer's controls: shares (and their state), caps and approval policies, and the
budget views.

Scoped by organisation (privacy/scope.py): a hospital's officers, auditors and data owners act on its
own datasets only, and another organisation's dataset is NOT_FOUND; the operator's officers and
auditors act platform-wide."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from sqlalchemy.orm import Session

from cleanroom.domain.approvals import ApprovalPolicy, RequestState
from cleanroom.domain.budgets import BudgetLine, BudgetView, ShareState, check_share_transition
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.organisations import platform_wide
from cleanroom.domain.privacy import Balance, EventKind, LedgerEvent, Privacy, dataset_budget_id, share_budget_id
from cleanroom.privacy import composition
from cleanroom.privacy.ledger import SYSTEM, record
from cleanroom.privacy.scope import governed_dataset
from cleanroom.storage import audit_repo, clock, dataset_repo, principal_repo, privacy_repo
from cleanroom.storage.db import Database

NOT_FOUND = "dataset not found"
SHARE_NOT_FOUND = "this dataset is not shared with that manufacturer"
WITHDRAWN_PENDING = "the share was withdrawn"
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
            if privacy_repo.share_state(session, dataset_id, manufacturer_id) is ShareState.WITHDRAWN:
                check_share_transition(ShareState.WITHDRAWN, ShareState.ACTIVE)
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

    def set_share_state(self, principal: Principal, dataset_id: str, manufacturer_id: str, state: ShareState, reason: str) -> None:
        """Pauses, resumes or withdraws a share: the dataset's data owners or its officers. Withdrawing
        also rejects the pair's pending requests (nothing of them was reserved)."""
        reason = require_reason(reason)
        with self._db.transaction() as session:
            governed_dataset(session, principal, dataset_id)
            current = privacy_repo.share_state(session, dataset_id, manufacturer_id)
            if current is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, SHARE_NOT_FOUND)
            check_share_transition(current, state)
            if not privacy_repo.set_share_state(session, dataset_id, manufacturer_id, state, by=principal.id, reason=reason):
                return  # already in that state: nothing to record
            audit_repo.append(session, actor=principal.resource_name, action=f"share.{state.value}", target=f"datasets/{dataset_id}",
                              details={"manufacturer": f"principals/{manufacturer_id}", "from": current.value, "reason": reason})
            if state is ShareState.WITHDRAWN:
                _reject_pending_of_share(session, dataset_id, manufacturer_id)

    def set_policy(self, officer: Principal, dataset_id: str, policy: ApprovalPolicy, reason: str) -> ApprovalPolicy:
        reason = require_reason(reason)
        with self._db.transaction() as session:
            governed_dataset(session, officer, dataset_id)
            privacy_repo.put_policy(session, dataset_id, policy)
            audit_repo.append(session, actor=officer.resource_name, action="policy.set", target=f"datasets/{dataset_id}",
                              details={"max_epsilon": policy.max_epsilon, "max_delta": policy.max_delta,
                                       "auto_approve_epsilon": policy.auto_approve_epsilon,
                                       "stats_rows_per_patient": policy.stats_rows_per_patient,
                                       "require_privacy_audit": policy.require_privacy_audit,
                                       "approvals_required": policy.approvals_required, "reason": reason})
        return policy

    def view(self, principal: Principal, dataset_id: str) -> BudgetView:
        """Officers see every budget of the dataset; a manufacturer only its own share's budget."""
        with self._db.read() as session:
            dataset = self._readable(session, principal, dataset_id)
            only = principal.id if principal.role is Role.MANUFACTURER else None
            lines = budget_lines(session, dataset_id, only_manufacturer=only)
            commits = privacy_repo.events(session, privacy_repo.EventFilter(dataset_id=dataset_id, kind=EventKind.COMMIT))
            policy = privacy_repo.get_policy(session, dataset_id)
            cap_set = privacy_repo.get_balance(session, dataset_budget_id(dataset_id)) is not None
        return BudgetView(dataset, tuple(_with_composition(line, commits) for line in lines), policy,
                          dataset_cap_set=cap_set)


    @staticmethod
    def _readable(session: Session, principal: Principal, dataset_id: str) -> Dataset:
        """A manufacturer reads a dataset shared with it; oversight and data owners, a dataset their
        organisation governs or owns."""
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
            if principal.role is not Role.DATA_OWNER and platform_wide(principal.organisation_id):
                return privacy_repo.events(session, where)
            own = dataset_repo.organisation_dataset_ids(session, principal.organisation_id, deleted_too=True)
            if where.dataset_id is not None and where.dataset_id not in own:
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            return privacy_repo.events(session, replace(where, dataset_ids=frozenset(own)))


def budget_lines(session: Session, dataset_id: str, *, only_manufacturer: str | None = None) -> tuple[BudgetLine, ...]:
    """The dataset's budgets with each share's state; `only_manufacturer`: that share's line alone
    (what a manufacturer may see: never the dataset-wide numbers nor another's share)."""
    states = privacy_repo.share_states(session, dataset_id)
    lines = []
    for budget_id, (manufacturer_id, balance) in privacy_repo.dataset_balances(session, dataset_id).items():
        if only_manufacturer is not None and manufacturer_id != only_manufacturer:
            continue
        who = principal_repo.get_principal(session, manufacturer_id) if manufacturer_id else None
        state, reason = states.get(manufacturer_id, (None, "")) if manufacturer_id else (None, "")
        lines.append(BudgetLine(budget_id, who, balance, share_state=state, share_state_reason=reason))
    return tuple(lines)


def _reject_pending_of_share(session: Session, dataset_id: str, manufacturer_id: str) -> None:
    """A withdrawn share's pending requests are rejected (a cohort's whole group with them): they
    could never be reserved now, and the manufacturer learns why."""
    for request in privacy_repo.pending_of_share(session, dataset_id, manufacturer_id):
        rows = privacy_repo.group_requests(session, request.group_id) if request.group_id else [request]
        for row in rows:
            if row.state is RequestState.PENDING and privacy_repo.decide_request(
                    session, row.id, RequestState.REJECTED, by=SYSTEM, reason=WITHDRAWN_PENDING, spend_id=None):
                audit_repo.append(session, actor=SYSTEM, action="request.rejected", target=f"datasets/{row.dataset_id}",
                                  details={"request": row.resource_name, "reason": WITHDRAWN_PENDING})


def _with_composition(line: BudgetLine, commits: list[LedgerEvent]) -> BudgetLine:
    mine = [e for e in commits if line.budget_id in e.budget_ids]
    delta = line.balance.spent.delta_value or line.balance.cap.delta_value
    return replace(line, basic_epsilon=composition.basic_epsilon(mine), rdp_epsilon=composition.rdp_epsilon(mine, delta))
