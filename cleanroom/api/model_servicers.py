"""Thin servicers for model intake and the attestation trust bundle."""

from __future__ import annotations

from cleanroom.api.guard import CallContext
from cleanroom.attestation import Enclave
from cleanroom.v1 import models_pb2, models_pb2_grpc


class AttestationServicer(models_pb2_grpc.AttestationServiceServicer):
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave

    def GetTrustBundle(self, request: models_pb2.GetTrustBundleRequest, context: CallContext) -> models_pb2.TrustBundle:
        bundle = self._enclave.trust_bundle()
        return models_pb2.TrustBundle(
            simulated=bundle.simulated,
            root_public_key_pem=bundle.root_public_key_pem,
            root_fingerprint=bundle.root_fingerprint,
            allowed_measurements=bundle.allowed_measurements,
        )
