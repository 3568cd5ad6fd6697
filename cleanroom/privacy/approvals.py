"""Privacy requests: the policy check, auto-approval, the officer's queue, and dry runs.

Jobs and statistics queries submit a request for the (ε, δ) they will spend. Within the dataset's
auto-approve threshold the reservation is made at once; above it the request waits for an officer,
who sees its cost and the budget that would remain. An approval reserves in the same transaction,
so an approved request always holds its budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cleanroom.domain.approvals import (
    Decision,
    PolicyCheck,
    PrivacyRequest,
    RequestState,
    check_against_policy,
    new_request_id,
    new_spend_id,
)
from cleanroom.domain.budgets import BudgetLine
from cleanroom.domain.budgets import Estimate as Estimate  # re-exported: callers name it here
from cleanroom.domain.cost_reasons import Rule, budget_reason
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.privacy import ZERO, Balance, Privacy, dataset_budget_id, share_budget_id
from cleanroom.privacy.budgets import NOT_FOUND, load_dataset, require_reason, retry_after_release
from cleanroom.privacy.ledger import BudgetExhausted, Ledger, SpendRequest
from cleanroom.storage import audit_repo, clock, principal_repo, privacy_repo
from cleanroom.storage.db import Database

T = TypeVar("T")


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
            if not privacy_repo.is_shared(session, dataset_id, manufacturer_id):
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            check = check_against_policy(privacy_repo.get_policy(session, dataset_id), cost, dataset.patient_count)
            whole, share = (_unheld(privacy_repo.get_balance(session, budget_id), held)
                            for budget_id in (dataset_budget_id(dataset_id), share_budget_id(dataset_id, manufacturer_id)))
            manufacturer = principal_repo.get_principal(session, manufacturer_id)
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
        return Estimate(cost, check, balances, not reasons, reasons)

    def submit(self, manufacturer: Principal, request: SpendRequest) -> PrivacyRequest:
        """Refused by policy -> error; within auto-approval -> approved and reserved; else pending."""
        return self._retrying(request.dataset_id, lambda: self._submit(manufacturer, request))

    def _retrying(self, dataset_id: str, action: Callable[[], T]) -> T:
        return retry_after_release(action, refused=BudgetExhausted, release=lambda: self._release_held(dataset_id))

    def _submit(self, manufacturer: Principal, request: SpendRequest) -> PrivacyRequest:
        with self._db.transaction() as session:
            dataset = load_dataset(session, request.dataset_id)
            if not privacy_repo.is_shared(session, request.dataset_id, manufacturer.id):
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            check = check_against_policy(privacy_repo.get_policy(session, dataset.id), request.cost, dataset.patient_count)
            if check.decision is Decision.REFUSED:
                raise CleanroomError(ErrorCode.POLICY_REFUSED, policy_refusal(check))
            pending = PrivacyRequest(new_request_id(), dataset.id, manufacturer.id, request.kind, request.reference,
                                     request.cost, RequestState.PENDING, clock.now(), request.mechanism, workload=request.workload)
            privacy_repo.add_request(session, pending)
            if check.decision is Decision.AUTO_APPROVE:
                spend = self._ledger.reserve_in(session, request, actor_id=manufacturer.id)
                privacy_repo.decide_request(session, pending.id, RequestState.APPROVED, by="system", reason="within the auto-approve threshold", spend_id=spend.id)
            audit_repo.append(session, actor=manufacturer.resource_name, action="request.submit", target=pending.resource_name,
                              details={"dataset": dataset.id, "kind": request.kind, "epsilon": request.cost.epsilon_value,
                                       "delta": request.cost.delta_value, "decision": check.decision.value})
            return privacy_repo.get_request(session, pending.id)  # type: ignore[return-value]

    def approve(self, officer: Principal, request_id: str, reason: str) -> PrivacyRequest:
        return self._decide(officer, request_id, RequestState.APPROVED, reason)

    def reject(self, officer: Principal, request_id: str, reason: str) -> PrivacyRequest:
        return self._decide(officer, request_id, RequestState.REJECTED, reason)

    def _decide(self, officer: Principal, request_id: str, state: RequestState, reason: str) -> PrivacyRequest:
        reason = require_reason(reason)
        with self._db.read() as session:
            request = privacy_repo.get_request(session, request_id)
        dataset_id = request.dataset_id if request is not None else ""
        return self._retrying(dataset_id, lambda: self._decide_once(officer, request_id, state, reason))

    def _decide_once(self, officer: Principal, request_id: str, state: RequestState, reason: str) -> PrivacyRequest:
        with self._db.transaction() as session:
            request = privacy_repo.get_request(session, request_id)
            if request is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, "privacy request not found")
            if request.state is not RequestState.PENDING:
                raise CleanroomError(ErrorCode.ALREADY_DECIDED, f"this request was already {request.state.value}")
            # Claim the decision first: a concurrent second decision waits on this row, then finds it decided.
            spend_id = new_spend_id() if state is RequestState.APPROVED else None
            if not privacy_repo.decide_request(session, request_id, state, by=officer.id, reason=reason, spend_id=spend_id):
                raise CleanroomError(ErrorCode.ALREADY_DECIDED, "this request was decided meanwhile")
            if spend_id is not None:
                spend_request = SpendRequest(request.dataset_id, request.manufacturer_id, request.kind, request.reference,
                                             request.cost, request.mechanism, request.workload)
                self._ledger.reserve_in(session, spend_request, actor_id=officer.id, spend_id=spend_id)
            audit_repo.append(session, actor=officer.resource_name, action=f"request.{state.value}", target=request.resource_name,
                              details={"dataset": request.dataset_id, "reason": reason})
            return privacy_repo.get_request(session, request_id)  # type: ignore[return-value]

    def pending(self, page: PageRequest) -> list[PrivacyRequest]:
        with self._db.read() as session:
            return privacy_repo.pending_requests(session, dataset_ids=None, after_id=page.after_id, limit=page.size)

    def get(self, principal: Principal, request_id: str) -> PrivacyRequest:
        with self._db.read() as session:
            request = privacy_repo.get_request(session, request_id)
        if request is None or (principal.role is Role.MANUFACTURER and request.manufacturer_id != principal.id):
            raise CleanroomError(ErrorCode.NOT_FOUND, "privacy request not found")
        return request


def policy_refusal(check: PolicyCheck) -> str:
    """The rule's numbers, then what would let the request through."""
    return (f"the dataset's approval policy refuses this request: {'; '.join(d.message for d in check.details)}. "
            f"To go ahead: {'; and '.join(d.remedy for d in check.details)}")


def _unheld(balance: Balance | None, held: Privacy) -> Balance | None:
    """The balance as it would be once the unused `held` part of its reservations went back."""
    if balance is None or held == ZERO:
        return balance
    return Balance(balance.cap, balance.reserved - held, balance.spent)
