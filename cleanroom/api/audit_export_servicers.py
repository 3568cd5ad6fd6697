"""AuditService's SignAuditExport, beside the reading calls of privacy_servicers.AuditServicer."""

from __future__ import annotations

import grpc

from cleanroom.api.guard import caller
from cleanroom.api.privacy_servicers import AuditServicer
from cleanroom.attestation.audit_export import AuditExportSigner
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.privacy.audit import AuditService
from cleanroom.v1 import privacy_pb2


class SigningAuditServicer(AuditServicer):
    def __init__(self, audit: AuditService, signer: AuditExportSigner) -> None:
        super().__init__(audit)
        self._signer = signer

    def SignAuditExport(self, request: privacy_pb2.SignAuditExportRequest, context: grpc.ServicerContext) -> privacy_pb2.SignedAuditExport:
        if request.through_seq < 0:
            raise bad_request("through_seq cannot be negative", FieldViolation("through_seq", "0 for every entry, else a seq"))
        signed = self._signer.sign(caller(context), request.through_seq)
        return privacy_pb2.SignedAuditExport(statement=signed.statement, certificate=signed.certificate)
