"""Shares, budgets, spends, ledger events, privacy requests and approval policies in the database.

Budget changes are conditional UPDATEs: the check and the change are one statement, so two
concurrent reservations can never both pass a check that only one of them fits (a read-then-write
does overspend, on SQLite and on PostgreSQL READ COMMITTED alike).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.orm import Session

from cleanroom.domain.approvals import Approval, ApprovalPolicy, PrivacyRequest, RequestState, WorkSummary
from cleanroom.domain.budgets import ShareNotActive, ShareState
from cleanroom.domain.privacy import Balance, EventKind, LedgerEvent, Mechanism, Privacy, Spend, SpendState
from cleanroom.storage import lease_repo
from cleanroom.storage.clock import now
from cleanroom.storage.db import DriverReads, affected_rows, first_row
from cleanroom.storage.tables import (
    ApprovalPolicyRow,
    BudgetRow,
    DatasetRow,
    LedgerEventRow,
    PrivacyRequestRow,
    RequestApprovalRow,
    ShareRow,
    SpendRow,
)

# --- mechanisms as JSON --------------------------------------------------------------------------


def mechanism_json(mechanism: Mechanism | None) -> str:
    return "null" if mechanism is None else json.dumps(dataclasses.asdict(mechanism), sort_keys=True)


def mechanism_from_json(text: str) -> Mechanism | None:
    data = json.loads(text)
    if data is None:
        return None
    return Mechanism(data["name"], data["accountant"], tuple((str(k), float(v)) for k, v in data["parameters"]))


# --- shares --------------------------------------------------------------------------------------


def add_share(session: Session, dataset_id: str, manufacturer_id: str, created_by: str) -> bool:
    if session.get(ShareRow, (dataset_id, manufacturer_id)) is not None:
        return False
    session.add(ShareRow(dataset_id=dataset_id, manufacturer_id=manufacturer_id, created_by=created_by, created_at=now()))
    return True


def is_shared(session: Session, dataset_id: str, manufacturer_id: str) -> bool:
    """Whether the manufacturer sees the dataset: shared, and the share not withdrawn (a paused one
    is still seen; it only takes no new reservations)."""
    state = share_state(session, dataset_id, manufacturer_id)
    return state is not None and state is not ShareState.WITHDRAWN


def shared_dataset_ids(session: Session, manufacturer_id: str) -> set[str]:
    query = select(ShareRow.dataset_id).where(ShareRow.manufacturer_id == manufacturer_id,
                                              ShareRow.state != ShareState.WITHDRAWN.value)
    return set(session.scalars(query))


def share_state(session: Session, dataset_id: str, manufacturer_id: str) -> ShareState | None:
    """None when the dataset was never shared with the manufacturer."""
    row = session.get(ShareRow, (dataset_id, manufacturer_id))
    return None if row is None else ShareState(row.state)


def share_states(session: Session, dataset_id: str) -> dict[str, tuple[ShareState, str]]:
    """manufacturer id -> (state, the reason it was last set) for every share of the dataset."""
    rows = session.scalars(select(ShareRow).where(ShareRow.dataset_id == dataset_id))
    return {r.manufacturer_id: (ShareState(r.state), r.state_reason) for r in rows}


def set_share_state(session: Session, dataset_id: str, manufacturer_id: str, state: ShareState, *, by: str, reason: str) -> bool:
    """Moves an existing share to `state`, never out of withdrawn (checked in the same statement, so
    a resume racing a withdrawal cannot undo it); False when nothing changed."""
    result = session.execute(
        update(ShareRow)
        .where(ShareRow.dataset_id == dataset_id, ShareRow.manufacturer_id == manufacturer_id,
               ShareRow.state != ShareState.WITHDRAWN.value, ShareRow.state != state.value)
        .values(state=state.value, state_reason=reason, state_by=by, state_at=now())
    )
    return affected_rows(result) == 1


def require_active_share(session: Session, dataset_id: str, manufacturer_id: str) -> None:
    """Refuses (FAILED_PRECONDITION) a reservation against a paused or withdrawn share."""
    state = share_state(session, dataset_id, manufacturer_id)
    if state is not None and state is not ShareState.ACTIVE:
        raise ShareNotActive(dataset_id, state)


# --- budgets -------------------------------------------------------------------------------------


def _balance(row: BudgetRow) -> Balance:
    return Balance(
        Privacy(row.cap_epsilon, row.cap_delta),
        Privacy(row.reserved_epsilon, row.reserved_delta),
        Privacy(row.spent_epsilon, row.spent_delta),
    )


def get_balance(session: Session, budget_id: str) -> Balance | None:
    row = session.get(BudgetRow, budget_id)
    return _balance(row) if row else None


def dataset_balances(session: Session, dataset_id: str) -> dict[str, tuple[str | None, Balance]]:
    """budget id -> (manufacturer id or None for the dataset-wide budget, balance)."""
    rows = session.scalars(select(BudgetRow).where(BudgetRow.dataset_id == dataset_id).order_by(BudgetRow.id))
    return {r.id: (r.manufacturer_id, _balance(r)) for r in rows}


def set_cap(session: Session, budget_id: str, dataset_id: str, manufacturer_id: str | None, cap: Privacy) -> bool:
    """Sets a cap, never below what is reserved plus spent (checked in the same statement)."""
    if session.get(BudgetRow, budget_id) is None:
        session.add(BudgetRow(
            id=budget_id, dataset_id=dataset_id, manufacturer_id=manufacturer_id, cap_epsilon=cap.epsilon,
            cap_delta=cap.delta, reserved_epsilon=0, reserved_delta=0, spent_epsilon=0, spent_delta=0,
        ))
        session.flush()
        return True
    result = session.execute(
        update(BudgetRow)
        .where(
            BudgetRow.id == budget_id,
            BudgetRow.reserved_epsilon + BudgetRow.spent_epsilon <= cap.epsilon,
            BudgetRow.reserved_delta + BudgetRow.spent_delta <= cap.delta,
        )
        .values(cap_epsilon=cap.epsilon, cap_delta=cap.delta)
    )
    return affected_rows(result) == 1


def try_reserve(session: Session, budget_id: str, cost: Privacy) -> bool:
    result = session.execute(
        update(BudgetRow)
        .where(
            BudgetRow.id == budget_id,
            BudgetRow.reserved_epsilon + BudgetRow.spent_epsilon + cost.epsilon <= BudgetRow.cap_epsilon,
            BudgetRow.reserved_delta + BudgetRow.spent_delta + cost.delta <= BudgetRow.cap_delta,
        )
        .values(
            reserved_epsilon=BudgetRow.reserved_epsilon + cost.epsilon,
            reserved_delta=BudgetRow.reserved_delta + cost.delta,
        )
    )
    return affected_rows(result) == 1


def settle(session: Session, budget_id: str, reserved: Privacy, committed: Privacy) -> None:
    """Releases a reservation: `committed` becomes spent, the rest returns to the budget."""
    result = session.execute(
        update(BudgetRow)
        .where(BudgetRow.id == budget_id, BudgetRow.reserved_epsilon >= reserved.epsilon, BudgetRow.reserved_delta >= reserved.delta)
        .values(
            reserved_epsilon=BudgetRow.reserved_epsilon - reserved.epsilon,
            reserved_delta=BudgetRow.reserved_delta - reserved.delta,
            spent_epsilon=BudgetRow.spent_epsilon + committed.epsilon,
            spent_delta=BudgetRow.spent_delta + committed.delta,
        )
    )
    if affected_rows(result) != 1:
        raise RuntimeError(f"budget {budget_id} holds less than the reservation being settled")


# --- spends --------------------------------------------------------------------------------------


def add_spend(session: Session, spend: Spend, owner: str | None = None) -> None:
    session.add(SpendRow(owner=owner,
        id=spend.id, dataset_id=spend.dataset_id, manufacturer_id=spend.manufacturer_id, kind=spend.kind,
        reference=spend.reference, state=spend.state.value, reserved_epsilon=spend.reserved.epsilon,
        reserved_delta=spend.reserved.delta, committed_epsilon=0, committed_delta=0,
        mechanism_json=mechanism_json(spend.mechanism), created_at=now(), workload=spend.workload,
        cohort_json=json.dumps(list(spend.cohort)),
    ))


def _spend(row: SpendRow) -> Spend:
    return Spend(
        id=row.id, dataset_id=row.dataset_id, manufacturer_id=row.manufacturer_id, kind=row.kind,
        reference=row.reference, reserved=Privacy(row.reserved_epsilon, row.reserved_delta),
        state=SpendState(row.state), mechanism=mechanism_from_json(row.mechanism_json),
        committed=Privacy(row.committed_epsilon, row.committed_delta),
        decrypted=row.decrypted_at is not None, released=row.released_at is not None, created_at=row.created_at,
        workload=row.workload, cohort=tuple(json.loads(row.cohort_json or "[]")),
    )


def get_spend(session: Session, spend_id: str, *, for_update: bool = False) -> Spend | None:
    query = select(SpendRow).where(SpendRow.id == spend_id)
    row = session.scalars(query.with_for_update() if for_update else query).one_or_none()
    return _spend(row) if row else None


def close_spend(session: Session, spend_id: str, state: SpendState, committed: Privacy, *, released: bool) -> bool:
    """Moves a RESERVED spend to its final state; False when it was already closed (idempotent)."""
    values: dict[str, object] = {"state": state.value, "committed_epsilon": committed.epsilon, "committed_delta": committed.delta}
    if released:
        values["released_at"] = now()
    result = session.execute(
        update(SpendRow).where(SpendRow.id == spend_id, SpendRow.state == SpendState.RESERVED.value).values(**values)
    )
    return affected_rows(result) == 1


def mark_decrypted(session: Session, spend_id: str) -> bool:
    result = session.execute(
        update(SpendRow)
        .where(SpendRow.id == spend_id, SpendRow.state == SpendState.RESERVED.value, SpendRow.decrypted_at.is_(None))
        .values(decrypted_at=now())
    )
    return affected_rows(result) == 1


def open_spend_for_workload(session: Session, workload: str) -> Spend | None:
    row = session.scalars(
        select(SpendRow).where(SpendRow.workload == workload, SpendRow.state == SpendState.RESERVED.value).limit(1)
    ).one_or_none()
    return _spend(row) if row else None


def open_spends(session: Session, orphaned_at: datetime | None = None) -> list[Spend]:
    """Open reservations; with `orphaned_at`, only those whose owner holds no live lease then."""
    query = select(SpendRow).where(SpendRow.state == SpendState.RESERVED.value).order_by(SpendRow.id)
    if orphaned_at is not None:
        query = query.where(lease_repo.orphaned(SpendRow.owner, orphaned_at))
    return [_spend(r) for r in session.scalars(query)]


# --- ledger events -------------------------------------------------------------------------------


def add_event(session: Session, event: LedgerEvent, *, dataset_id: str, manufacturer_id: str | None) -> None:
    session.add(LedgerEventRow(
        kind=event.kind.value, spend_id=event.spend_id, dataset_id=dataset_id, manufacturer_id=manufacturer_id,
        budget_ids=",".join(event.budget_ids), epsilon=event.amount.epsilon, delta=event.amount.delta,
        actor_id=event.actor_id, at=event.at, mechanism_json=mechanism_json(event.mechanism), reason=event.reason,
    ))


def _event(row: LedgerEventRow) -> LedgerEvent:
    return LedgerEvent(
        kind=EventKind(row.kind), budget_ids=tuple(row.budget_ids.split(",")), amount=Privacy(row.epsilon, row.delta),
        actor_id=row.actor_id, at=row.at, spend_id=row.spend_id, mechanism=mechanism_from_json(row.mechanism_json),
        reason=row.reason, seq=row.seq,
    )


@dataclasses.dataclass(frozen=True)
class EventFilter:
    dataset_id: str | None = None
    manufacturer_id: str | None = None
    kind: EventKind | None = None
    after_seq: int = 0
    limit: int = 1_000_000
    dataset_ids: frozenset[str] | None = None  # an organisation's datasets (None: every one)


def events(session: Session, where: EventFilter = EventFilter()) -> list[LedgerEvent]:
    conditions = [LedgerEventRow.seq > where.after_seq]
    if where.dataset_id:
        conditions.append(LedgerEventRow.dataset_id == where.dataset_id)
    if where.manufacturer_id:
        conditions.append(LedgerEventRow.manufacturer_id == where.manufacturer_id)
    if where.kind:
        conditions.append(LedgerEventRow.kind == where.kind.value)
    if where.dataset_ids is not None:
        conditions.append(LedgerEventRow.dataset_id.in_(where.dataset_ids))
    query = select(LedgerEventRow).where(and_(*conditions)).order_by(LedgerEventRow.seq).limit(where.limit)
    return [_event(r) for r in session.scalars(query)]


def all_balances(session: Session) -> dict[str, Balance]:
    return {r.id: _balance(r) for r in session.scalars(select(BudgetRow))}


# --- privacy requests ----------------------------------------------------------------------------


def add_request(session: Session, request: PrivacyRequest) -> None:
    session.add(PrivacyRequestRow(
        id=request.id, dataset_id=request.dataset_id, manufacturer_id=request.manufacturer_id, kind=request.kind,
        reference=request.reference, cost_epsilon=request.cost.epsilon, cost_delta=request.cost.delta,
        mechanism_json=mechanism_json(request.mechanism), state=request.state.value, spend_id=request.spend_id,
        decided_by=request.decided_by, reason=request.reason, created_at=request.created_at, decided_at=request.decided_at,
        workload=request.workload, group_id=request.group_id, approvals_required=request.approvals_required,
        work_json=work_json(request.work),
    ))


def work_json(work: WorkSummary | None) -> str:
    return json.dumps({"description": work.description, "columns": list(work.columns)}) if work else ""


def work_from_json(text: str | None) -> WorkSummary | None:
    if not text:
        return None
    data = json.loads(text)
    return WorkSummary(str(data["description"]), tuple(str(c) for c in data.get("columns", ())))


def _request(row: PrivacyRequestRow, approvals: tuple[Approval, ...] = ()) -> PrivacyRequest:
    return PrivacyRequest(
        id=row.id, dataset_id=row.dataset_id, manufacturer_id=row.manufacturer_id, kind=row.kind, reference=row.reference,
        cost=Privacy(row.cost_epsilon, row.cost_delta), state=RequestState(row.state), created_at=row.created_at,
        mechanism=mechanism_from_json(row.mechanism_json), spend_id=row.spend_id, decided_by=row.decided_by,
        reason=row.reason, decided_at=row.decided_at, workload=row.workload, group_id=row.group_id,
        approvals_required=row.approvals_required, approvals=approvals, work=work_from_json(row.work_json),
    )


def _requests(session: Session, rows: list[PrivacyRequestRow]) -> list[PrivacyRequest]:
    """Rows with their approvals, read in one query."""
    approvals: dict[str, list[Approval]] = {}
    if rows:
        query = (select(RequestApprovalRow).where(RequestApprovalRow.request_id.in_([r.id for r in rows]))
                 .order_by(RequestApprovalRow.at, RequestApprovalRow.officer_id))
        for a in session.scalars(query):
            approvals.setdefault(a.request_id, []).append(Approval(a.officer_id, a.at, a.reason))
    return [_request(r, tuple(approvals.get(r.id, ()))) for r in rows]


def get_request(session: Session, request_id: str) -> PrivacyRequest | None:
    row = session.get(PrivacyRequestRow, request_id)
    return _requests(session, [row])[0] if row else None


def add_approval(session: Session, request_id: str, officer_id: str, reason: str) -> None:
    """One officer's approval; the caller holds the request's lock and checked it is the officer's first."""
    session.add(RequestApprovalRow(request_id=request_id, officer_id=officer_id, at=now(), reason=reason))
    session.flush()


def lock_request(session: Session, request_id: str) -> None:
    """Takes the request row's lock: two officers approving at once are counted one after the other
    (PostgreSQL; SQLite writers are serial)."""
    session.execute(select(PrivacyRequestRow.id).where(PrivacyRequestRow.id == request_id).with_for_update())


def decide_request(session: Session, request_id: str, state: RequestState, *, by: str, reason: str, spend_id: str | None) -> bool:
    """PENDING -> APPROVED or REJECTED, once: a second decision finds nothing pending."""
    result = session.execute(
        update(PrivacyRequestRow)
        .where(PrivacyRequestRow.id == request_id, PrivacyRequestRow.state == RequestState.PENDING.value)
        .values(state=state.value, decided_by=by, reason=reason, spend_id=spend_id, decided_at=now())
    )
    return affected_rows(result) == 1


def group_requests(session: Session, group_id: str) -> list[PrivacyRequest]:
    """A cohort request's rows in site order (a group's row ids extend its first row's id)."""
    query = select(PrivacyRequestRow).where(PrivacyRequestRow.group_id == group_id).order_by(PrivacyRequestRow.id)
    return _requests(session, list(session.scalars(query)))


def lock_group(session: Session, group_id: str) -> None:
    """Takes the group's first row's lock: a group's decisions run one at a time, so the decision
    that approves the last pending row sees every other one (PostgreSQL; SQLite writers are serial)."""
    session.execute(select(PrivacyRequestRow.id).where(PrivacyRequestRow.id == group_id).with_for_update())


def set_group_spend(session: Session, group_id: str, spend_id: str) -> None:
    session.execute(update(PrivacyRequestRow).where(PrivacyRequestRow.group_id == group_id).values(spend_id=spend_id))


def reject_pending_in_group(session: Session, group_id: str, *, by: str, reason: str) -> list[PrivacyRequest]:
    """Rejects the group's still-pending rows; the rows it rejected, as they were."""
    pending = [r for r in group_requests(session, group_id) if r.state is RequestState.PENDING]
    return [r for r in pending if decide_request(session, r.id, RequestState.REJECTED, by=by, reason=reason, spend_id=None)]


def pending_requests(session: Session, *, dataset_ids: set[str] | None, after_id: str | None, limit: int) -> list[PrivacyRequest]:
    query = select(PrivacyRequestRow).where(PrivacyRequestRow.state == RequestState.PENDING.value)
    if dataset_ids is not None:
        query = query.where(PrivacyRequestRow.dataset_id.in_(dataset_ids))
    if after_id:
        query = query.where(PrivacyRequestRow.id > after_id)
    return _requests(session, list(session.scalars(query.order_by(PrivacyRequestRow.id).limit(limit))))


def pending_of_share(session: Session, dataset_id: str, manufacturer_id: str) -> list[PrivacyRequest]:
    query = select(PrivacyRequestRow).where(PrivacyRequestRow.state == RequestState.PENDING.value,
                                            PrivacyRequestRow.dataset_id == dataset_id,
                                            PrivacyRequestRow.manufacturer_id == manufacturer_id)
    return _requests(session, list(session.scalars(query.order_by(PrivacyRequestRow.id))))


# --- approval policies ---------------------------------------------------------------------------


def get_policy(session: Session, dataset_id: str) -> ApprovalPolicy:
    row = session.get(ApprovalPolicyRow, dataset_id)
    if row is None:
        return ApprovalPolicy()
    return ApprovalPolicy(row.max_epsilon, row.max_delta, row.auto_approve_epsilon, row.stats_rows_per_patient,
                          bool(row.require_privacy_audit), row.approvals_required)


_SHARED_POLICY = (
    select(DatasetRow.id, ApprovalPolicyRow.max_epsilon, ApprovalPolicyRow.max_delta,
           ApprovalPolicyRow.auto_approve_epsilon, ApprovalPolicyRow.stats_rows_per_patient,
           ApprovalPolicyRow.require_privacy_audit, ApprovalPolicyRow.approvals_required, ShareRow.state)
    .join(ShareRow, (ShareRow.dataset_id == DatasetRow.id) & (ShareRow.manufacturer_id == bindparam("manufacturer_id")))
    .outerjoin(ApprovalPolicyRow, ApprovalPolicyRow.dataset_id == DatasetRow.id)
    .where(DatasetRow.id == bindparam("dataset_id"), DatasetRow.deleted_at.is_(None))
)


def shared_policy(source: Session | DriverReads, dataset_id: str, manufacturer_id: str) -> ApprovalPolicy | None:
    """The dataset's approval policy, if the dataset exists and is shared with the manufacturer
    (None otherwise, a withdrawn share too): one prepared statement on the statistics hot path.
    A paused share is refused here (ShareNotActive), before any budget moves."""
    row = first_row(source, _SHARED_POLICY, {"dataset_id": dataset_id, "manufacturer_id": manufacturer_id})
    if row is None or row[7] == ShareState.WITHDRAWN.value:
        return None
    if row[7] != ShareState.ACTIVE.value:
        raise ShareNotActive(dataset_id, ShareState(row[7]))
    return ApprovalPolicy() if row[1] is None else ApprovalPolicy(row[1], row[2], row[3], row[4], bool(row[5]), row[6])


def put_policy(session: Session, dataset_id: str, policy: ApprovalPolicy) -> None:
    row = session.get(ApprovalPolicyRow, dataset_id)
    if row is None:
        session.add(ApprovalPolicyRow(dataset_id=dataset_id, max_epsilon=policy.max_epsilon, max_delta=policy.max_delta,
                                      auto_approve_epsilon=policy.auto_approve_epsilon,
                                      stats_rows_per_patient=policy.stats_rows_per_patient,
                                      require_privacy_audit=policy.require_privacy_audit,
                                      approvals_required=policy.approvals_required))
        return
    row.max_epsilon, row.max_delta, row.auto_approve_epsilon = policy.max_epsilon, policy.max_delta, policy.auto_approve_epsilon
    row.stats_rows_per_patient, row.require_privacy_audit = policy.stats_rows_per_patient, policy.require_privacy_audit
    row.approvals_required = policy.approvals_required
