"""privacy.proto <-> domain: privacy amounts, budgets and their views, approval policies, cost
estimates, ledger events, privacy requests and the audit trail."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from cleanroom.domain.approvals import MAX_APPROVALS_REQUIRED, MAX_STATS_ROWS_PER_PATIENT, ApprovalPolicy, PrivacyRequest
from cleanroom.domain.audit import AuditEntry, ChainVerdict
from cleanroom.domain.budgets import BudgetLine, BudgetView, Estimate, PendingComposition
from cleanroom.domain.cost_reasons import CostReason
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.privacy import DELTA_SCALE, EPSILON_SCALE, MAX_EPSILON, EventKind, LedgerEvent, Privacy
from cleanroom.v1 import privacy_pb2
from cleanroom.wire.common import timestamp

PRIVACY_REQUEST_PREFIX = "privacyRequests/"


# --- amounts -------------------------------------------------------------------------------------


def amount_to_proto(amount: Privacy) -> privacy_pb2.PrivacyAmount:
    return privacy_pb2.PrivacyAmount(
        epsilon=amount.epsilon_value,
        delta=amount.delta_value,
        epsilon_exact=str(Decimal(amount.epsilon) / EPSILON_SCALE),
        delta_exact=str(Decimal(amount.delta) / DELTA_SCALE),
    )


def cost_from_proto(amount: privacy_pb2.PrivacyAmount, field: str) -> Privacy:
    return Privacy.cost(amount.epsilon, amount.delta, field_prefix=f"{field}.")


def cap_from_proto(amount: privacy_pb2.PrivacyAmount, field: str) -> Privacy:
    return Privacy.cap(amount.epsilon, amount.delta, field_prefix=f"{field}.")


# --- budgets, policies and estimates ---------------------------------------------------------------


def budget_to_proto(line: BudgetLine, composition: tuple[float, float | None] | None = None) -> privacy_pb2.Budget:
    balance = line.balance
    message = privacy_pb2.Budget(
        name=line.budget_id,
        cap=amount_to_proto(balance.cap),
        reserved=amount_to_proto(balance.reserved),
        spent=amount_to_proto(balance.spent),
        remaining=amount_to_proto(balance.remaining),
    )
    if line.manufacturer is not None:
        message.manufacturer = line.manufacturer.resource_name
        message.manufacturer_display_name = line.manufacturer.display_name
    if line.share_state is not None:
        message.share_state = line.share_state.value
        message.share_state_reason = line.share_state_reason
    if composition is not None:
        message.basic_composition_epsilon = composition[0]
        message.rdp_composition_epsilon = composition[1] or 0.0
    return message


def budget_lines_to_proto(lines: tuple[BudgetLine, ...]) -> list[privacy_pb2.Budget]:
    """Budgets as GetBudgets shows them: cap, reserved, spent, remaining and manufacturer."""
    return [budget_to_proto(line) for line in lines]


def budget_report_to_proto(view: BudgetView) -> privacy_pb2.BudgetReport:
    return privacy_pb2.BudgetReport(
        dataset=view.dataset.resource_name,
        dataset_display_name=view.dataset.display_name,
        budgets=[budget_to_proto(line, (line.basic_epsilon, line.rdp_epsilon)) for line in view.lines],
        policy=policy_to_proto(view.dataset.id, view.policy, view.dataset.patient_count),
        dataset_cap_set=view.dataset_cap_set,
    )


def cost_reason_to_proto(reason: CostReason) -> privacy_pb2.CostReason:
    message = privacy_pb2.CostReason(
        rule=reason.rule.value, outcome=reason.outcome.value, budget=reason.budget_id, cap_set=reason.cap_set,
        requested=amount_to_proto(reason.requested), message=reason.message, remedy=reason.remedy,
    )
    for amount, target in ((reason.left, message.left), (reason.limit, message.limit), (reason.fits_with, message.fits_with)):
        if amount is not None:
            target.CopyFrom(amount_to_proto(amount))
    return message


def cost_estimate_to_proto(estimate: Estimate) -> privacy_pb2.CostEstimate:
    return privacy_pb2.CostEstimate(
        cost=amount_to_proto(estimate.cost), decision=estimate.decision.value,
        reasons=[r.sentence for r in estimate.reasons], details=[cost_reason_to_proto(r) for r in estimate.reasons],
        fits=estimate.fits, remaining_before=budget_lines_to_proto(estimate.balances),
        remaining_after=budget_lines_to_proto(estimate.balances_after()), notes=list(estimate.notes),
    )


def policy_to_proto(dataset_id: str, policy: ApprovalPolicy, patients: int) -> privacy_pb2.ApprovalPolicy:
    return privacy_pb2.ApprovalPolicy(
        dataset=f"datasets/{dataset_id}",
        max_epsilon_per_request=policy.max_epsilon / EPSILON_SCALE,
        max_delta_per_request=policy.max_delta / DELTA_SCALE,
        auto_approve_epsilon=policy.auto_approve_epsilon / EPSILON_SCALE,
        effective_max_delta=policy.delta_limit(patients) / DELTA_SCALE,
        stats_rows_per_patient=policy.stats_rows_per_patient,
        require_privacy_audit=policy.require_privacy_audit,
        approvals_required=policy.approvals_required,
    )


def pending_composition_to_proto(composition: PendingComposition) -> privacy_pb2.PendingComposition:
    return privacy_pb2.PendingComposition(
        dataset=f"datasets/{composition.dataset_id}",
        remaining_before=budget_lines_to_proto(composition.before),
        remaining_after=budget_lines_to_proto(composition.after),
        included=[f"{PRIVACY_REQUEST_PREFIX}{i}" for i in composition.included],
        not_fitting=[f"{PRIVACY_REQUEST_PREFIX}{i}" for i in composition.not_fitting],
    )


def policy_from_proto(message: privacy_pb2.ApprovalPolicy) -> ApprovalPolicy:
    violations = []
    if not (0 < message.max_epsilon_per_request <= MAX_EPSILON):
        violations.append(FieldViolation("policy.max_epsilon_per_request", f"above 0 and at most {MAX_EPSILON:g}"))
    if not (0 <= message.max_delta_per_request < 1):
        violations.append(FieldViolation("policy.max_delta_per_request", "0 (the default) or a number below 1"))
    if not (0 <= message.auto_approve_epsilon <= message.max_epsilon_per_request):
        violations.append(FieldViolation("policy.auto_approve_epsilon", "between 0 and max_epsilon_per_request"))
    if not (0 <= message.stats_rows_per_patient <= MAX_STATS_ROWS_PER_PATIENT):
        violations.append(FieldViolation("policy.stats_rows_per_patient", f"0 (the default, 1) to {MAX_STATS_ROWS_PER_PATIENT}"))
    if not (0 <= message.approvals_required <= MAX_APPROVALS_REQUIRED):
        violations.append(FieldViolation("policy.approvals_required", f"0 (the default, 1) to {MAX_APPROVALS_REQUIRED} different officers"))
    if violations:
        raise bad_request("the approval policy is out of range", *violations)
    return ApprovalPolicy(
        max_epsilon=round(message.max_epsilon_per_request * EPSILON_SCALE),
        max_delta=round(message.max_delta_per_request * DELTA_SCALE),
        auto_approve_epsilon=round(message.auto_approve_epsilon * EPSILON_SCALE),
        stats_rows_per_patient=message.stats_rows_per_patient or 1,
        require_privacy_audit=message.require_privacy_audit,
        approvals_required=message.approvals_required or 1,
    )


# --- the ledger, privacy requests and the audit trail ----------------------------------------------


def event_kind_from_proto(kind: str) -> EventKind | None:
    """ListLedgerRequest.kind: "" for every kind, else one kind by its name."""
    if not kind:
        return None
    try:
        return EventKind(kind)
    except ValueError:
        raise bad_request("unknown ledger event kind", FieldViolation("kind", "cap, reserve, commit or refund")) from None


def event_to_proto(event: LedgerEvent) -> privacy_pb2.LedgerEvent:
    mechanism = f"{event.mechanism.name} ({event.mechanism.accountant})" if event.mechanism else ""
    actor = event.actor_id if event.actor_id == "system" else f"principals/{event.actor_id}"
    return privacy_pb2.LedgerEvent(
        seq=event.seq, kind=event.kind.value, budgets=event.budget_ids, amount=amount_to_proto(event.amount),
        spend=event.spend_id or "", actor=actor, time=timestamp(event.at), mechanism=mechanism, reason=event.reason,
    )


def privacy_request_id_from_name(name: str) -> str:
    if not name.startswith(PRIVACY_REQUEST_PREFIX) or len(name) <= len(PRIVACY_REQUEST_PREFIX):
        raise bad_request("expected a request name like privacyRequests/{id}", FieldViolation("name", "not a privacy request name"))
    return name[len(PRIVACY_REQUEST_PREFIX):]


def request_to_proto(request: PrivacyRequest, group: Sequence[PrivacyRequest] = ()) -> privacy_pb2.PrivacyRequest:
    """`group`: the rows of a cohort request's group the caller may see (its scope decides, not this)."""
    return privacy_pb2.PrivacyRequest(
        name=request.resource_name, dataset=f"datasets/{request.dataset_id}",
        manufacturer=f"principals/{request.manufacturer_id}", kind=request.kind, reference=request.reference,
        cost=amount_to_proto(request.cost), state=request.state.value,
        decided_by=f"principals/{request.decided_by}" if request.decided_by not in ("", "system") else request.decided_by,
        reason=request.reason, create_time=timestamp(request.created_at),
        group=f"{PRIVACY_REQUEST_PREFIX}{request.group_id}" if request.group_id else "",
        group_requests=[privacy_pb2.GroupRequestState(name=r.resource_name, dataset=f"datasets/{r.dataset_id}", state=r.state.value)
                        for r in group],
        approvals=[privacy_pb2.Approval(officer=f"principals/{a.officer_id}", time=timestamp(a.at), reason=a.reason)
                   for a in request.approvals],
        approvals_required=request.approvals_required,
        mechanism=f"{request.mechanism.name} ({request.mechanism.accountant})" if request.mechanism else "",
        description=request.work.description if request.work else "",
        columns=list(request.work.columns) if request.work else [],
    )


def verdict_to_proto(verdict: ChainVerdict) -> privacy_pb2.AuditVerification:
    return privacy_pb2.AuditVerification(
        ok=verdict.ok, entries=verdict.entries, head_seq=verdict.head.seq, head_hash=verdict.head.hash,
        first_bad_seq=verdict.first_bad_seq, problem=verdict.problem,
    )


def audit_entry_to_proto(entry: AuditEntry) -> privacy_pb2.AuditEntry:
    return privacy_pb2.AuditEntry(seq=entry.seq, json=entry.to_json())
