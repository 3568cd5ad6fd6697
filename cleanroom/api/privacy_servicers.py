"""Thin servicers for the privacy officer's controls and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator

from cleanroom.api.guard import CallContext
from cleanroom.domain.audit import Anchor
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.identity import Role
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.domain.privacy import EventKind
from cleanroom.privacy.approvals import ApprovalService, Estimate
from cleanroom.privacy.audit import AuditService
from cleanroom.privacy.budgets import BudgetLine, BudgetService, BudgetView
from cleanroom.privacy.ledger import Ledger
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.storage.privacy_repo import EventFilter
from cleanroom.v1 import privacy_pb2, privacy_pb2_grpc
from cleanroom.wire import convert


def _report(view: BudgetView) -> privacy_pb2.BudgetReport:
    return privacy_pb2.BudgetReport(
        dataset=view.dataset.resource_name,
        dataset_display_name=view.dataset.display_name,
        budgets=[convert.budget_to_proto(line, (line.basic_epsilon, line.rdp_epsilon)) for line in view.lines],
        policy=convert.policy_to_proto(view.dataset.id, view.policy, view.dataset.patient_count),
        dataset_cap_set=view.dataset_cap_set,
    )


def _budget_lines(lines: tuple[BudgetLine, ...]) -> list[privacy_pb2.Budget]:
    """Budgets as GetBudgets shows them: cap, reserved, spent, remaining and manufacturer."""
    return [convert.budget_to_proto(line) for line in lines]


def cost_estimate_to_proto(estimate: Estimate) -> privacy_pb2.CostEstimate:
    return privacy_pb2.CostEstimate(
        cost=convert.amount_to_proto(estimate.cost), decision=estimate.decision.value,
        reasons=[r.sentence for r in estimate.reasons], details=[convert.cost_reason_to_proto(r) for r in estimate.reasons],
        fits=estimate.fits, remaining_before=_budget_lines(estimate.balances), remaining_after=_budget_lines(estimate.balances_after()),
    )


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    def __init__(self, budgets: BudgetService, approvals: ApprovalService, ledger: Ledger, idempotency: Idempotency) -> None:
        self._budgets = budgets
        self._ledger = ledger
        self._approvals = approvals
        self._idempotency = idempotency

    def _once(self, context: CallContext, method: str, request, response_type, compute):  # type: ignore[no-untyped-def]
        check_request_id(request.request_id)
        key = RequestKey(context.principal.id, method, request.request_id)
        return self._idempotency.run(key, fingerprint(request), response_type, compute)

    def ShareDataset(self, request: privacy_pb2.ShareDatasetRequest, context: CallContext) -> privacy_pb2.BudgetReport:
        dataset_id = convert.dataset_id_from_name(request.dataset)
        manufacturer_id = convert.principal_id_from_name(request.manufacturer, "manufacturer")
        cap = convert.cap_from_proto(request.cap, "cap")

        def share() -> privacy_pb2.BudgetReport:
            self._budgets.share(context.principal, dataset_id, manufacturer_id, cap, request.reason)
            return _report(self._budgets.view(context.principal, dataset_id))

        return self._once(context, "ShareDataset", request, privacy_pb2.BudgetReport, share)

    def SetBudget(self, request: privacy_pb2.SetBudgetRequest, context: CallContext) -> privacy_pb2.BudgetReport:
        dataset_id = convert.dataset_id_from_name(request.dataset)
        manufacturer_id = convert.principal_id_from_name(request.manufacturer, "manufacturer") if request.manufacturer else None
        cap = convert.cap_from_proto(request.cap, "cap")

        def set_cap() -> privacy_pb2.BudgetReport:
            self._budgets.set_cap(context.principal, dataset_id, manufacturer_id, cap, request.reason)
            return _report(self._budgets.view(context.principal, dataset_id))

        return self._once(context, "SetBudget", request, privacy_pb2.BudgetReport, set_cap)

    def GetBudgets(self, request: privacy_pb2.GetBudgetsRequest, context: CallContext) -> privacy_pb2.BudgetReport:
        return _report(self._budgets.view(context.principal, convert.dataset_id_from_name(request.dataset)))

    def SetApprovalPolicy(self, request: privacy_pb2.SetApprovalPolicyRequest, context: CallContext) -> privacy_pb2.ApprovalPolicy:
        dataset_id = convert.dataset_id_from_name(request.policy.dataset, "policy.dataset")
        policy = convert.policy_from_proto(request.policy)

        def set_policy() -> privacy_pb2.ApprovalPolicy:
            self._budgets.set_policy(context.principal, dataset_id, policy, request.reason)
            view = self._budgets.view(context.principal, dataset_id)
            return convert.policy_to_proto(dataset_id, view.policy, view.dataset.patient_count)

        return self._once(context, "SetApprovalPolicy", request, privacy_pb2.ApprovalPolicy, set_policy)

    def EstimateCost(self, request: privacy_pb2.EstimateCostRequest, context: CallContext) -> privacy_pb2.CostEstimate:
        principal = context.principal
        dataset_id = convert.dataset_id_from_name(request.dataset)
        if request.manufacturer or principal.role is not Role.MANUFACTURER:
            manufacturer_id = convert.principal_id_from_name(request.manufacturer, "manufacturer")
        else:
            manufacturer_id = principal.id
        cost = convert.cost_from_proto(request.cost, "cost")
        return cost_estimate_to_proto(self._approvals.estimate(principal, dataset_id, manufacturer_id, cost))

    def ListLedger(self, request: privacy_pb2.ListLedgerRequest, context: CallContext) -> privacy_pb2.ListLedgerResponse:
        page = parse_page(request.page_size, request.page_token)
        kind = _event_kind(request.kind)
        events = self._ledger.events(EventFilter(
            dataset_id=convert.dataset_id_from_name(request.dataset) if request.dataset else None,
            manufacturer_id=convert.principal_id_from_name(request.manufacturer, "manufacturer") if request.manufacturer else None,
            kind=kind, after_seq=_seq_from_page(page.after_id), limit=page.size,
        ))
        return privacy_pb2.ListLedgerResponse(
            events=[convert.event_to_proto(e) for e in events],
            next_page_token=next_page_token([str(e.seq) for e in events], page.size),
        )

    def ListPendingRequests(self, request: privacy_pb2.ListPendingRequestsRequest, context: CallContext) -> privacy_pb2.ListPendingRequestsResponse:
        page = parse_page(request.page_size, request.page_token)
        pending = self._approvals.pending(page)
        messages = []
        for item in pending:
            message = convert.request_to_proto(item)
            estimate = self._approvals.estimate(context.principal, item.dataset_id, item.manufacturer_id, item.cost)
            message.remaining_before.extend(_budget_lines(estimate.balances))
            message.remaining_after.extend(_budget_lines(estimate.balances_after()))
            messages.append(message)
        return privacy_pb2.ListPendingRequestsResponse(requests=messages, next_page_token=next_page_token([p.id for p in pending], page.size))

    def ApproveRequest(self, request: privacy_pb2.DecideRequest, context: CallContext) -> privacy_pb2.PrivacyRequest:
        request_id = _request_id_from_name(request.name)
        return self._once(context, "ApproveRequest", request, privacy_pb2.PrivacyRequest,
                          lambda: convert.request_to_proto(self._approvals.approve(context.principal, request_id, request.reason)))

    def RejectRequest(self, request: privacy_pb2.DecideRequest, context: CallContext) -> privacy_pb2.PrivacyRequest:
        request_id = _request_id_from_name(request.name)
        return self._once(context, "RejectRequest", request, privacy_pb2.PrivacyRequest,
                          lambda: convert.request_to_proto(self._approvals.reject(context.principal, request_id, request.reason)))


def _seq_from_page(after_id: str | None) -> int:
    if after_id is None:
        return 0
    if not after_id.isdigit():
        raise bad_request("page_token is not one this server issued", FieldViolation("page_token", "malformed"))
    return int(after_id)


def _event_kind(kind: str) -> EventKind | None:
    if not kind:
        return None
    try:
        return EventKind(kind)
    except ValueError:
        raise bad_request("unknown ledger event kind", FieldViolation("kind", "cap, reserve, commit or refund")) from None


def _request_id_from_name(name: str) -> str:
    prefix = "privacyRequests/"
    if not name.startswith(prefix) or len(name) <= len(prefix):
        raise bad_request("expected a request name like privacyRequests/{id}", FieldViolation("name", "not a privacy request name"))
    return name[len(prefix):]


class AuditServicer(privacy_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditService) -> None:
        self._audit = audit

    def VerifyAuditLog(self, request: privacy_pb2.VerifyAuditLogRequest, context: CallContext) -> privacy_pb2.AuditVerification:
        anchor = Anchor(request.anchor_seq, request.anchor_hash) if request.anchor_hash else None
        return convert.verdict_to_proto(self._audit.verify(anchor))

    def ExportAuditLog(self, request: privacy_pb2.ExportAuditLogRequest, context: CallContext) -> Iterator[privacy_pb2.AuditEntry]:
        for entry in self._audit.export(context.principal, after_seq=request.after_seq):
            yield privacy_pb2.AuditEntry(seq=entry.seq, json=entry.to_json())
