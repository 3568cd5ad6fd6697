"""Thin servicers for the privacy officer's controls and the audit trail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from cleanroom.api.guard import caller, request_key
from cleanroom.domain.approvals import PrivacyRequest
from cleanroom.domain.audit import Anchor
from cleanroom.domain.budgets import ShareState
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.audit import AuditService
from cleanroom.privacy.budgets import BudgetService
from cleanroom.privacy.ledger import Ledger
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import privacy_pb2, privacy_pb2_grpc
from cleanroom.wire.datasets import dataset_id_from_name
from cleanroom.wire.identity import principal_id_from_name
from cleanroom.wire.privacy import (
    audit_entry_to_proto,
    budget_lines_to_proto,
    budget_report_to_proto,
    cap_from_proto,
    cost_estimate_to_proto,
    cost_from_proto,
    event_kind_from_proto,
    event_to_proto,
    pending_composition_to_proto,
    policy_from_proto,
    policy_to_proto,
    privacy_request_id_from_name,
    request_to_proto,
    verdict_to_proto,
)

M = TypeVar("M", bound=Message)


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    def __init__(self, budgets: BudgetService, approvals: ApprovalService, ledger: Ledger, idempotency: Idempotency) -> None:
        self._budgets = budgets
        self._ledger = ledger
        self._approvals = approvals
        self._idempotency = idempotency

    def _once(self, context: grpc.ServicerContext, method: str, request: Message, request_id: str, response_type: type[M],
              compute: Callable[[], M]) -> M:
        check_request_id(request_id)
        key = request_key(context, method, request_id)
        return self._idempotency.run(key, fingerprint(request), response_type, compute)

    def ShareDataset(self, request: privacy_pb2.ShareDatasetRequest, context: grpc.ServicerContext) -> privacy_pb2.BudgetReport:
        dataset_id = dataset_id_from_name(request.dataset)
        manufacturer_id = principal_id_from_name(request.manufacturer, "manufacturer")
        cap = cap_from_proto(request.cap, "cap")
        officer = caller(context)

        def share() -> privacy_pb2.BudgetReport:
            self._budgets.share(officer, dataset_id, manufacturer_id, cap, request.reason)
            return budget_report_to_proto(self._budgets.view(officer, dataset_id))

        return self._once(context, "ShareDataset", request, request.request_id, privacy_pb2.BudgetReport, share)

    def SetBudget(self, request: privacy_pb2.SetBudgetRequest, context: grpc.ServicerContext) -> privacy_pb2.BudgetReport:
        dataset_id = dataset_id_from_name(request.dataset)
        manufacturer_id = principal_id_from_name(request.manufacturer, "manufacturer") if request.manufacturer else None
        cap = cap_from_proto(request.cap, "cap")
        officer = caller(context)

        def set_cap() -> privacy_pb2.BudgetReport:
            self._budgets.set_cap(officer, dataset_id, manufacturer_id, cap, request.reason)
            return budget_report_to_proto(self._budgets.view(officer, dataset_id))

        return self._once(context, "SetBudget", request, request.request_id, privacy_pb2.BudgetReport, set_cap)

    def GetBudgets(self, request: privacy_pb2.GetBudgetsRequest, context: grpc.ServicerContext) -> privacy_pb2.BudgetReport:
        return budget_report_to_proto(self._budgets.view(caller(context), dataset_id_from_name(request.dataset)))

    def SetApprovalPolicy(self, request: privacy_pb2.SetApprovalPolicyRequest, context: grpc.ServicerContext) -> privacy_pb2.ApprovalPolicy:
        dataset_id = dataset_id_from_name(request.policy.dataset, "policy.dataset")
        policy = policy_from_proto(request.policy)
        officer = caller(context)

        def set_policy() -> privacy_pb2.ApprovalPolicy:
            self._budgets.set_policy(officer, dataset_id, policy, request.reason)
            view = self._budgets.view(officer, dataset_id)
            return policy_to_proto(dataset_id, view.policy, view.dataset.patient_count)

        return self._once(context, "SetApprovalPolicy", request, request.request_id, privacy_pb2.ApprovalPolicy, set_policy)

    def EstimateCost(self, request: privacy_pb2.EstimateCostRequest, context: grpc.ServicerContext) -> privacy_pb2.CostEstimate:
        principal = caller(context)
        dataset_id = dataset_id_from_name(request.dataset)
        if request.manufacturer or principal.role is not Role.MANUFACTURER:
            manufacturer_id = principal_id_from_name(request.manufacturer, "manufacturer")
        else:
            manufacturer_id = principal.id
        cost = cost_from_proto(request.cost, "cost")
        if principal.role is not Role.MANUFACTURER:  # an officer estimates for its organisation's datasets only
            self._budgets.check_governed(principal, dataset_id)
        return cost_estimate_to_proto(self._approvals.estimate(principal, dataset_id, manufacturer_id, cost))

    def ListLedger(self, request: privacy_pb2.ListLedgerRequest, context: grpc.ServicerContext) -> privacy_pb2.ListLedgerResponse:
        page = parse_page(request.page_size, request.page_token)
        kind = event_kind_from_proto(request.kind)
        events = self._budgets.ledger_events(
            caller(context),
            dataset_id=dataset_id_from_name(request.dataset) if request.dataset else None,
            manufacturer_id=principal_id_from_name(request.manufacturer, "manufacturer") if request.manufacturer else None,
            kind=kind, after_seq=_seq_from_page(page.after_id), limit=page.size,
        )
        return privacy_pb2.ListLedgerResponse(
            events=[event_to_proto(e) for e in events],
            next_page_token=next_page_token([str(e.seq) for e in events], page.size),
        )

    def ListPendingRequests(self, request: privacy_pb2.ListPendingRequestsRequest,
                            context: grpc.ServicerContext) -> privacy_pb2.ListPendingRequestsResponse:
        page = parse_page(request.page_size, request.page_token)
        officer = caller(context)
        pending = self._approvals.pending(officer, page)
        messages = []
        for item in pending:
            message = request_to_proto(item, self._approvals.visible_group(officer, item))
            estimate = self._approvals.estimate(officer, item.dataset_id, item.manufacturer_id, item.cost)
            message.remaining_before.extend(budget_lines_to_proto(estimate.balances))
            message.remaining_after.extend(budget_lines_to_proto(estimate.balances_after()))
            messages.append(message)
        compositions = self._approvals.pending_compositions(officer, [p.dataset_id for p in pending])
        return privacy_pb2.ListPendingRequestsResponse(requests=messages, next_page_token=next_page_token([p.id for p in pending], page.size),
                                                       compositions=[pending_composition_to_proto(c) for c in compositions])

    def ApproveRequest(self, request: privacy_pb2.DecideRequest, context: grpc.ServicerContext) -> privacy_pb2.PrivacyRequest:
        request_id, officer = privacy_request_id_from_name(request.name), caller(context)
        return self._once(context, "ApproveRequest", request, request.request_id, privacy_pb2.PrivacyRequest,
                          lambda: self._decided(officer, self._approvals.approve(officer, request_id, request.reason)))

    def RejectRequest(self, request: privacy_pb2.DecideRequest, context: grpc.ServicerContext) -> privacy_pb2.PrivacyRequest:
        request_id, officer = privacy_request_id_from_name(request.name), caller(context)
        return self._once(context, "RejectRequest", request, request.request_id, privacy_pb2.PrivacyRequest,
                          lambda: self._decided(officer, self._approvals.reject(officer, request_id, request.reason)))

    def SetShareState(self, request: privacy_pb2.SetShareStateRequest, context: grpc.ServicerContext) -> privacy_pb2.BudgetReport:
        dataset_id = dataset_id_from_name(request.dataset)
        manufacturer_id = principal_id_from_name(request.manufacturer, "manufacturer")
        state = ShareState.parse(request.state)
        principal = caller(context)

        def set_state() -> privacy_pb2.BudgetReport:
            self._budgets.set_share_state(principal, dataset_id, manufacturer_id, state, request.reason)
            return budget_report_to_proto(self._budgets.view(principal, dataset_id))

        return self._once(context, "SetShareState", request, request.request_id, privacy_pb2.BudgetReport, set_state)

    def _decided(self, officer: Principal, decided: PrivacyRequest) -> privacy_pb2.PrivacyRequest:
        return request_to_proto(decided, self._approvals.visible_group(officer, decided))


def _seq_from_page(after_id: str | None) -> int:
    if after_id is None:
        return 0
    if not after_id.isdigit():
        raise bad_request("page_token is not one this server issued", FieldViolation("page_token", "malformed"))
    return int(after_id)


class AuditServicer(privacy_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditService) -> None:
        self._audit = audit

    def VerifyAuditLog(self, request: privacy_pb2.VerifyAuditLogRequest, context: grpc.ServicerContext) -> privacy_pb2.AuditVerification:
        anchor = Anchor(request.anchor_seq, request.anchor_hash) if request.anchor_hash else None
        return verdict_to_proto(self._audit.verify(anchor, caller(context)))

    def ExportAuditLog(self, request: privacy_pb2.ExportAuditLogRequest, context: grpc.ServicerContext) -> Iterator[privacy_pb2.AuditEntry]:
        for entry in self._audit.export(caller(context), after_seq=request.after_seq):
            yield audit_entry_to_proto(entry)
