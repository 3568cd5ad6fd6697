"""Thin servicers for model intake and the attestation trust bundle."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom.api.guard import caller
from cleanroom.api.streams import upload_parts
from cleanroom.attestation.enclave import Enclave
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.models.versions import ModelVersionService
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import models_pb2, models_pb2_grpc
from cleanroom.wire.models import model_to_proto


class AttestationServicer(models_pb2_grpc.AttestationServiceServicer):
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave

    def GetTrustBundle(self, request: models_pb2.GetTrustBundleRequest, context: grpc.ServicerContext) -> models_pb2.TrustBundle:
        bundle = self._enclave.trust_bundle()
        return models_pb2.TrustBundle(
            simulated=bundle.simulated,
            root_public_key_pem=bundle.root_public_key_pem,
            root_fingerprint=bundle.root_fingerprint,
            allowed_measurements=bundle.allowed_measurements,
        )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ModelVersionService, idempotency: Idempotency) -> None:
        self._models = models
        self._idempotency = idempotency

    def SubmitModel(self, requests: Iterator[models_pb2.SubmitModelRequest], context: grpc.ServicerContext) -> models_pb2.ModelVersion:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise bad_request("the first message must carry the metadata", FieldViolation("metadata", "missing"))
        check_request_id(first.metadata.request_id, "metadata.request_id")
        principal = caller(context)
        key = RequestKey(principal.id, "SubmitModel", first.metadata.request_id)
        return self._idempotency.run(
            key, fingerprint(first, ("metadata", "request_id")), models_pb2.ModelVersion,
            lambda: model_to_proto(self._models.submit(principal, upload_parts(requests))),
        )

    def GetModel(self, request: models_pb2.GetModelRequest, context: grpc.ServicerContext) -> models_pb2.ModelVersion:
        return model_to_proto(self._models.get(caller(context), request.name))

    def ListModels(self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext) -> models_pb2.ListModelsResponse:
        page = parse_page(request.page_size, request.page_token)
        versions = self._models.list(caller(context), page)
        return models_pb2.ListModelsResponse(
            models=[model_to_proto(v) for v in versions], next_page_token=next_page_token([v.id for v in versions], page.size)
        )
