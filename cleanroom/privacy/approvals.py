"""Privacy requests: the policy check, auto-approval, the officer's queue, and dry runs.

Jobs and statistics queries submit a request for the (ε, δ) they will spend. Within the dataset's
auto-approve threshold the reservation is made at once; above it the request waits for an officer,
who sees its cost and the budget that would remain. An approval reserves in the same transaction,
so an approved request always holds its budget.

A cohort request (several hospitals' datasets) is one row per dataset, joined by a group id, each
row checked against its own dataset's policy and decided by that hospital's officers. The cohort's
one spend (every dataset's budgets, all or none) is reserved when the last row is approved, so a
group waiting for a site holds no budget and a rejection has nothing to refund.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from cleanroom.domain.approvals import (
    SECOND_OFFICER_NEEDED,
    Approval,
    Decision,
    PolicyCheck,
    PrivacyRequest,
    RequestState,
    already_approved,
    check_against_policy,
    needs_more_approvals,
    new_request_id,
    new_spend_id,
)
from cleanroom.domain.budgets import BudgetLine, PendingComposition, ShareState, compose_pending
from cleanroom.domain.budgets import Estimate as Estimate  # re-exported: callers name it here
from cleanroom.domain.cohort import MAX_SITES
from cleanroom.domain.cost_reasons import Rule, budget_reason
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.privacy import ZERO, Balance, Privacy, dataset_budget_id, share_budget_id
from cleanroom.domain.privacy_audit import audit_cost_statement
from cleanroom.privacy.budgets import NOT_FOUND, budget_lines, load_dataset, require_reason, retry_after_release
from cleanroom.privacy.ledger import SYSTEM, BudgetExhausted, Ledger, SpendRequest
from cleanroom.privacy.scope import governed_dataset_ids, governs_dataset
from cleanroom.storage import audit_repo, clock, dataset_repo, principal_repo, privacy_repo
from cleanroom.storage.db import Database

T = TypeVar("T")
REQUEST_NOT_FOUND = "privacy request not found"
REJECTED_ELSEWHERE = "rejected by another site's officer"
PAUSED_NOTE = "the share is paused by the hospital: no new work is reserved on it until it is resumed"
MAX_COMPOSED = 10_000  # pending requests of one dataset composed for the inbox; a queue is far shorter


@dataclass(frozen=True)
class GroupRequest:
    """A cohort request as its requester sees it: every site's row in site order, and the group's
    outcome (approved with its spend once every row is; rejected once any is; else pending)."""

    rows: tuple[PrivacyRequest, ...]
    state: RequestState
    spend_id: str | None

    @property
    def id(self) -> str:
        return self.rows[0].id

    @property
    def resource_name(self) -> str:
        return self.rows[0].resource_name

    @property
    def dataset_ids(self) -> tuple[str, ...]:
        return tuple(r.dataset_id for r in self.rows)


def group_state(rows: Sequence[PrivacyRequest]) -> tuple[RequestState, str | None]:
    """Rejected once any row is; approved, with the cohort's spend, once every row is and it is reserved."""
    if any(r.state is RequestState.REJECTED for r in rows):
        return RequestState.REJECTED, None
    if rows and all(r.state is RequestState.APPROVED for r in rows) and rows[0].spend_id is not None:
        return RequestState.APPROVED, rows[0].spend_id
    return RequestState.PENDING, None


class ApprovalService:
    def __init__(self, db: Database, ledger: Ledger, release_held: Callable[[str], bool] = lambda dataset_id: False) -> None:
        self._db = db
        self._ledger = ledger
        # Frees budget this server holds but has not used on a dataset (statistics allowances);
        # True when it freed some, and a reservation that found the budget short is tried again.
        self._release_held = release_held

    def estimate(self, principal: Principal, dataset_id: str, manufacturer_id: str, cost: Privacy, *, held: Privacy = ZERO) -> Estimate:
        """What a request would cost, what would remain, and every rule that would refuse it or make
        it wait. Manufacturers may ask about themselves only, and never see the dataset-wide numbers
        (they would reveal what others spent). `held`: budget the pair's open statistics allowance
        holds unused, which the request may still draw on."""
        if principal.role is Role.MANUFACTURER and manufacturer_id != principal.id:
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        with self._db.read() as session:
            dataset = load_dataset(session, dataset_id)
            outside = principal.role is not Role.MANUFACTURER and not governs_dataset(principal, dataset)
            if outside or not privacy_repo.is_shared(session, dataset_id, manufacturer_id):
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            policy = privacy_repo.get_policy(session, dataset_id)
            check = check_against_policy(policy, cost, dataset.patient_count)
            whole, share = (_unheld(privacy_repo.get_balance(session, budget_id), held)
                            for budget_id in (dataset_budget_id(dataset_id), share_budget_id(dataset_id, manufacturer_id)))
            manufacturer = principal_repo.get_principal(session, manufacturer_id)
            paused = privacy_repo.share_state(session, dataset_id, manufacturer_id) is ShareState.PAUSED
        officer = principal.role is not Role.MANUFACTURER
        refusals = (budget_reason(Rule.DATASET_BUDGET, dataset_budget_id(dataset_id), whole, cost, show_numbers=officer),
                    budget_reason(Rule.SHARE_BUDGET, share_budget_id(dataset_id, manufacturer_id), share, cost))
        visible: list[tuple[str, Principal | None, Balance | None]] = [
            (share_budget_id(dataset_id, manufacturer_id), manufacturer, share)]
        if officer:  # a manufacturer never sees what others spent
            visible.append((dataset_budget_id(dataset_id), None, whole))
        balances = tuple(sorted((BudgetLine(budget_id, who, balance) for budget_id, who, balance in visible
                                 if balance is not None), key=lambda line: line.budget_id))
        reasons = tuple(r for r in refusals if r is not None)
        notes = (audit_cost_statement(dataset.patient_count),) if policy.require_privacy_audit else ()
        if paused:  # nothing is reserved on a paused share until the hospital resumes it
            notes = (PAUSED_NOTE, *notes)
        return Estimate(cost, check, balances, not reasons and not paused, reasons, notes)

    def submit(self, manufacturer: Principal, request: SpendRequest) -> PrivacyRequest:
        """Refused by policy -> error; within auto-approval -> approved and reserved; else pending."""
        return self._retrying((request.dataset_id,), lambda: self._submit(manufacturer, request))

    def _retrying(self, dataset_ids: Sequence[str], action: Callable[[], T]) -> T:
        def release() -> bool:
            return any([self._release_held(d) for d in dataset_ids])  # a list: free every site's, not the first only
        return retry_after_release(action, refused=BudgetExhausted, release=release)

    def _submit(self, manufacturer: Principal, request: SpendRequest) -> PrivacyRequest:
        with self._db.transaction() as session:
            dataset = load_dataset(session, request.dataset_id)
            privacy_repo.require_active_share(session, request.dataset_id, manufacturer.id)
            if not privacy_repo.is_shared(session, request.dataset_id, manufacturer.id):
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            policy = privacy_repo.get_policy(session, dataset.id)
            check = check_against_policy(policy, request.cost, dataset.patient_count)
            if check.decision is Decision.REFUSED:
                raise CleanroomError(ErrorCode.POLICY_REFUSED, policy_refusal(check))
            pending = PrivacyRequest(new_request_id(), dataset.id, manufacturer.id, request.kind, request.reference,
                                     request.cost, RequestState.PENDING, clock.now(), request.mechanism, workload=request.workload,
                                     approvals_required=policy.approvals_required, work=request.work)
            privacy_repo.add_request(session, pending)
            if check.decision is Decision.AUTO_APPROVE:
                spend = self._ledger.reserve_in(session, request, actor_id=manufacturer.id)
                privacy_repo.decide_request(session, pending.id, RequestState.APPROVED, by="system", reason="within the auto-approve threshold", spend_id=spend.id)
            audit_repo.append(session, actor=manufacturer.resource_name, action="request.submit", target=pending.resource_name,
                              details={"dataset": dataset.id, "kind": request.kind, "epsilon": request.cost.epsilon_value,
                                       "delta": request.cost.delta_value, "decision": check.decision.value})
            return privacy_repo.get_request(session, pending.id)  # type: ignore[return-value]

    # --- cohorts: one row per dataset, one spend for all ------------------------------------------

    def submit_cohort(self, manufacturer: Principal, request: SpendRequest) -> GroupRequest:
        """`request.dataset_id` is the first site, `request.cohort` the others. Each site is checked
        against its own policy; if every one auto-approves, the cohort's spend is reserved at once
        (every dataset's budgets, all or none), else the rows that need an officer wait for their own
        hospital's. A refusal or a short budget on any site stores nothing."""
        sites = request.dataset_ids
        if len(set(sites)) != len(sites) or len(sites) > MAX_SITES:
            raise bad_request(f"a cohort names up to {MAX_SITES} distinct datasets",
                              FieldViolation("cohort", "each dataset at most once"))
        return self._retrying(sites, lambda: self._submit_cohort(manufacturer, request))

    def _submit_cohort(self, manufacturer: Principal, request: SpendRequest) -> GroupRequest:
        with self._db.transaction() as session:
            sites = [_site_check(session, manufacturer, dataset_id, request.cost) for dataset_id in request.dataset_ids]
            checks = [check for check, _required in sites]
            auto = all(c.decision is Decision.AUTO_APPROVE for c in checks)
            spend_id = self._ledger.reserve_in(session, request, actor_id=manufacturer.id).id if auto else None
            head = new_request_id()
            rows = tuple(_cohort_row(request, manufacturer, dataset_id, check, row_id=head if i == 0 else f"{head}-{i:02d}",
                                     group_id=head, spend_id=spend_id, approvals_required=required)
                         for i, (dataset_id, (check, required)) in enumerate(zip(request.dataset_ids, sites, strict=True)))
            for row, check in zip(rows, checks, strict=True):
                privacy_repo.add_request(session, row)
                audit_repo.append(session, actor=manufacturer.resource_name, action="request.submit", target=f"datasets/{row.dataset_id}",
                                  details={"request": row.resource_name, "group": rows[0].resource_name, "kind": request.kind,
                                           "epsilon": request.cost.epsilon_value, "delta": request.cost.delta_value,
                                           "decision": check.decision.value})
            return GroupRequest(rows, *group_state(rows))

    def estimate_cohort(self, principal: Principal, dataset_ids: Sequence[str], manufacturer_id: str, cost: Privacy) -> list[Estimate]:
        """One estimate per site, in site order: whether the cost fits each site's budgets and policy."""
        return [self.estimate(principal, dataset_id, manufacturer_id, cost) for dataset_id in dataset_ids]

    def group_outcome(self, request_id: str) -> tuple[RequestState, str | None]:
        """A request's outcome for the job runner and statistics: a single request's own state and
        spend; a cohort row's group's (approved with the spend once every row is, rejected once any is)."""
        with self._db.read() as session:
            request = privacy_repo.get_request(session, request_id)
            if request is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, REQUEST_NOT_FOUND)
            if request.group_id is None:
                return request.state, request.spend_id
            return group_state(privacy_repo.group_requests(session, request.group_id))

    def visible_group(self, principal: Principal, request: PrivacyRequest) -> tuple[PrivacyRequest, ...]:
        """The rows of `request`'s group the principal may see: its requester all of them, an officer
        only its own organisation's (no hospital learns another's decision); () for a single request."""
        if request.group_id is None:
            return ()
        with self._db.read() as session:
            rows = privacy_repo.group_requests(session, request.group_id)
            if principal.role is Role.MANUFACTURER:
                return tuple(rows) if request.manufacturer_id == principal.id else ()
            governed = governed_dataset_ids(session, principal)
        return tuple(r for r in rows if governed is None or r.dataset_id in governed)

    # --- decisions ---------------------------------------------------------------------------------

    def approve(self, officer: Principal, request_id: str, reason: str) -> PrivacyRequest:
        return self._decide(officer, request_id, RequestState.APPROVED, reason)

    def reject(self, officer: Principal, request_id: str, reason: str) -> PrivacyRequest:
        return self._decide(officer, request_id, RequestState.REJECTED, reason)

    def _decide(self, officer: Principal, request_id: str, state: RequestState, reason: str) -> PrivacyRequest:
        reason = require_reason(reason)
        with self._db.read() as session:
            request = privacy_repo.get_request(session, request_id)
            group = privacy_repo.group_requests(session, request.group_id) if request and request.group_id else []
        dataset_ids = [r.dataset_id for r in group] or ([request.dataset_id] if request is not None else [])
        return self._retrying(dataset_ids, lambda: self._decide_once(officer, request_id, state, reason))

    def _decide_once(self, officer: Principal, request_id: str, state: RequestState, reason: str) -> PrivacyRequest:
        with self._db.transaction() as session:
            request = _governed_request(session, officer, request_id)
            if request.group_id is not None:
                privacy_repo.lock_group(session, request.group_id)
            else:
                privacy_repo.lock_request(session, request.id)
            request = _governed_request(session, officer, request_id)  # as the previous decision left it
            if request.state is not RequestState.PENDING:
                raise CleanroomError(ErrorCode.ALREADY_DECIDED, f"this request was already {request.state.value}")
            if state is RequestState.APPROVED and self._awaits_another_officer(session, officer, request, reason):
                return privacy_repo.get_request(session, request_id)  # type: ignore[return-value]
            if request.group_id is None:
                self._decide_single(session, officer, request, state, reason)
            else:
                self._decide_in_group(session, officer, request, state, reason)
            audit_repo.append(session, actor=officer.resource_name, action=f"request.{state.value}", target=f"datasets/{request.dataset_id}",
                              details={"request": request.resource_name, "organisation": officer.organisation_id, "reason": reason,
                                       "approvals": len(request.approvals) + (state is RequestState.APPROVED),
                                       "approvals_required": request.approvals_required})
            return privacy_repo.get_request(session, request_id)  # type: ignore[return-value]

    @staticmethod
    def _awaits_another_officer(session: Session, officer: Principal, request: PrivacyRequest, reason: str) -> bool:
        """Records the officer's approval; True when the policy wants another officer's too (the
        request then stays pending, the approval audited). The same officer twice is refused."""
        if already_approved(request.approvals, officer.id):
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, SECOND_OFFICER_NEEDED,
                                 violations=[FieldViolation("approvals", "a second officer must approve")])
        privacy_repo.add_approval(session, request.id, officer.id, reason)
        approvals = (*request.approvals, Approval(officer.id, clock.now(), reason))
        if not needs_more_approvals(approvals, request.approvals_required):
            return False
        audit_repo.append(session, actor=officer.resource_name, action="request.approval", target=f"datasets/{request.dataset_id}",
                          details={"request": request.resource_name, "organisation": officer.organisation_id, "reason": reason,
                                   "approvals": len(approvals), "approvals_required": request.approvals_required})
        return True

    def _decide_single(self, session: Session, officer: Principal, request: PrivacyRequest, state: RequestState, reason: str) -> None:
        # Claim the decision first: a concurrent second decision waits on this row, then finds it decided.
        spend_id = new_spend_id() if state is RequestState.APPROVED else None
        if not privacy_repo.decide_request(session, request.id, state, by=officer.id, reason=reason, spend_id=spend_id):
            raise CleanroomError(ErrorCode.ALREADY_DECIDED, "this request was decided meanwhile")
        if spend_id is not None:
            self._ledger.reserve_in(session, _spend_request(request), actor_id=officer.id, spend_id=spend_id)

    def _decide_in_group(self, session: Session, officer: Principal, request: PrivacyRequest, state: RequestState, reason: str) -> None:
        """Approving the group's last pending row reserves the cohort's spend (a short budget rolls the
        whole decision back); rejecting any row rejects the rows still pending."""
        group_id = request.group_id or request.id
        if not privacy_repo.decide_request(session, request.id, state, by=officer.id, reason=reason, spend_id=None):
            raise CleanroomError(ErrorCode.ALREADY_DECIDED, "this request was decided meanwhile")
        if state is RequestState.REJECTED:
            for row in privacy_repo.reject_pending_in_group(session, group_id, by=SYSTEM, reason=REJECTED_ELSEWHERE):
                audit_repo.append(session, actor=SYSTEM, action="request.rejected", target=f"datasets/{row.dataset_id}",
                                  details={"request": row.resource_name, "reason": REJECTED_ELSEWHERE})
            return
        rows = privacy_repo.group_requests(session, group_id)
        if all(r.state is RequestState.APPROVED for r in rows):
            # The system reserves: the other hospitals' ledgers must not name this hospital's officer.
            spend = self._ledger.reserve_in(session, _spend_request(rows[0], cohort=tuple(r.dataset_id for r in rows[1:])), actor_id=SYSTEM)
            privacy_repo.set_group_spend(session, group_id, spend.id)

    # --- reading -----------------------------------------------------------------------------------

    def pending(self, officer: Principal, page: PageRequest) -> list[PrivacyRequest]:
        """The pending rows of the datasets the officer governs (every dataset's for the operator's)."""
        with self._db.read() as session:
            governed = governed_dataset_ids(session, officer)
            return privacy_repo.pending_requests(session, dataset_ids=governed, after_id=page.after_id, limit=page.size)

    def pending_compositions(self, officer: Principal, dataset_ids: Sequence[str]) -> list[PendingComposition]:
        """For each of `dataset_ids` the officer governs: its budgets now, and once every pending
        request of it were approved in queue order (each a reservation, as the ledger makes it)."""
        compositions = []
        with self._db.read() as session:
            governed = governed_dataset_ids(session, officer)
            for dataset_id in dict.fromkeys(dataset_ids):
                if governed is not None and dataset_id not in governed:
                    continue
                pending = privacy_repo.pending_requests(session, dataset_ids={dataset_id}, after_id=None, limit=MAX_COMPOSED)
                compositions.append(compose_pending(dataset_id, budget_lines(session, dataset_id), pending))
        return compositions

    def get(self, principal: Principal, request_id: str) -> PrivacyRequest:
        """A manufacturer's own requests; for anyone else, the rows of the datasets it governs."""
        with self._db.read() as session:
            if principal.role is not Role.MANUFACTURER:
                return _governed_request(session, principal, request_id)
            request = privacy_repo.get_request(session, request_id)
        if request is None or request.manufacturer_id != principal.id:
            raise CleanroomError(ErrorCode.NOT_FOUND, REQUEST_NOT_FOUND)
        return request


def _governed_request(session: Session, principal: Principal, request_id: str) -> PrivacyRequest:
    """The request if its dataset is one `principal` governs; NOT_FOUND otherwise, like a missing one."""
    request = privacy_repo.get_request(session, request_id)
    dataset = dataset_repo.get_dataset(session, request.dataset_id) if request is not None else None
    if request is None or dataset is None or not governs_dataset(principal, dataset):
        raise CleanroomError(ErrorCode.NOT_FOUND, REQUEST_NOT_FOUND)
    return request


def _site_check(session: Session, manufacturer: Principal, dataset_id: str, cost: Privacy) -> tuple[PolicyCheck, int]:
    """One cohort site against its own dataset's policy and patient count; a refusal names the site.
    With the check, how many officers of that site must approve."""
    dataset = load_dataset(session, dataset_id)
    privacy_repo.require_active_share(session, dataset_id, manufacturer.id)
    if not privacy_repo.is_shared(session, dataset_id, manufacturer.id):
        raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)  # the same answer as a missing dataset
    policy = privacy_repo.get_policy(session, dataset_id)
    check = check_against_policy(policy, cost, dataset.patient_count)
    if check.decision is Decision.REFUSED:
        raise CleanroomError(ErrorCode.POLICY_REFUSED, f"at site {dataset.resource_name}: {policy_refusal(check)}",
                             violations=[FieldViolation(dataset.resource_name, d.remedy) for d in check.details])
    return check, policy.approvals_required


def _cohort_row(request: SpendRequest, manufacturer: Principal, dataset_id: str, check: PolicyCheck, *,
                row_id: str, group_id: str, spend_id: str | None, approvals_required: int) -> PrivacyRequest:
    """A site's row: approved by the system where its policy auto-approves (holding the cohort's
    spend only when every site did), else pending for that hospital's officers."""
    auto = check.decision is Decision.AUTO_APPROVE
    return PrivacyRequest(
        row_id, dataset_id, manufacturer.id, request.kind, request.reference, request.cost,
        RequestState.APPROVED if auto else RequestState.PENDING, clock.now(), request.mechanism,
        spend_id=spend_id, decided_by=SYSTEM if auto else "", reason="within the auto-approve threshold" if auto else "",
        decided_at=clock.now() if auto else None, workload=request.workload, group_id=group_id,
        approvals_required=approvals_required, work=request.work)


def _spend_request(request: PrivacyRequest, cohort: tuple[str, ...] = ()) -> SpendRequest:
    return SpendRequest(request.dataset_id, request.manufacturer_id, request.kind, request.reference,
                        request.cost, request.mechanism, request.workload, cohort=cohort, work=request.work)


def policy_refusal(check: PolicyCheck) -> str:
    """The rule's numbers, then what would let the request through."""
    return (f"the dataset's approval policy refuses this request: {'; '.join(d.message for d in check.details)}. "
            f"To go ahead: {'; and '.join(d.remedy for d in check.details)}")


def _unheld(balance: Balance | None, held: Privacy) -> Balance | None:
    """The balance as it would be once the unused `held` part of its reservations went back."""
    if balance is None or held == ZERO:
        return balance
    return Balance(balance.cap, balance.reserved - held, balance.spent)
