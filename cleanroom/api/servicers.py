"""Thin servicers: decode the request, call the use case, encode the answer. No logic of their own."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom.api.guard import caller
from cleanroom.api.streams import upload_parts
from cleanroom.datasets.service import DatasetService
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.principals import PrincipalService
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import datasets_pb2, datasets_pb2_grpc, identity_pb2, identity_pb2_grpc
from cleanroom.wire.common import role_from_proto
from cleanroom.wire.datasets import dataset_to_proto, upload_request_from_proto
from cleanroom.wire.identity import principal_to_proto


def _key(context: grpc.ServicerContext, method: str, request_id: str) -> RequestKey:
    return RequestKey(caller(context).id, method, request_id)


class AdminServicer(identity_pb2_grpc.AdminServiceServicer):
    def __init__(self, principals: PrincipalService, keys: KeyService, idempotency: Idempotency) -> None:
        self._principals = principals
        self._keys = keys
        self._idempotency = idempotency

    def CreatePrincipal(self, request: identity_pb2.CreatePrincipalRequest, context: grpc.ServicerContext) -> identity_pb2.CreatePrincipalResponse:
        check_request_id(request.request_id)
        role = role_from_proto(request.role)

        def create() -> identity_pb2.CreatePrincipalResponse:
            principal, _token = self._principals.create(request.display_name, role, actor=caller(context).resource_name)
            # The token is never stored: a retry re-derives it from the principal id.
            return identity_pb2.CreatePrincipalResponse(principal=principal_to_proto(principal))

        response = self._idempotency.run(
            _key(context, "CreatePrincipal", request.request_id), fingerprint(request), identity_pb2.CreatePrincipalResponse, create
        )
        response.token = self._principals.token_for(response.principal.name.removeprefix("principals/"))
        return response

    def ListPrincipals(self, request: identity_pb2.ListPrincipalsRequest, context: grpc.ServicerContext) -> identity_pb2.ListPrincipalsResponse:
        page = parse_page(request.page_size, request.page_token)
        principals = self._principals.list(page)
        return identity_pb2.ListPrincipalsResponse(
            principals=[principal_to_proto(p) for p in principals],
            next_page_token=next_page_token([p.id for p in principals], page.size),
        )

    def RotateKeys(self, request: identity_pb2.RotateKeysRequest, context: grpc.ServicerContext) -> identity_pb2.RotateKeysResponse:
        check_request_id(request.request_id)

        def rotate() -> identity_pb2.RotateKeysResponse:
            key_id, count = self._keys.rotate(actor=caller(context).resource_name)
            return identity_pb2.RotateKeysResponse(key_id=key_id, rewrapped_data_keys=count)

        return self._idempotency.run(
            _key(context, "RotateKeys", request.request_id), fingerprint(request), identity_pb2.RotateKeysResponse, rotate
        )


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def WhoAmI(self, request: identity_pb2.WhoAmIRequest, context: grpc.ServicerContext) -> identity_pb2.Principal:
        return principal_to_proto(caller(context))


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, datasets: DatasetService, idempotency: Idempotency) -> None:
        self._datasets = datasets
        self._idempotency = idempotency

    def UploadDataset(self, requests: Iterator[datasets_pb2.UploadDatasetRequest], context: grpc.ServicerContext) -> datasets_pb2.Dataset:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise bad_request("the first message must carry the metadata", FieldViolation("metadata", "missing"))
        metadata = first.metadata
        check_request_id(metadata.request_id, "metadata.request_id")
        upload = upload_request_from_proto(metadata)
        self._datasets.validate_upload(upload)

        def store() -> datasets_pb2.Dataset:
            return dataset_to_proto(self._datasets.upload(caller(context), upload, upload_parts(requests)))

        return self._idempotency.run(
            _key(context, "UploadDataset", metadata.request_id),
            fingerprint(first, ("metadata", "request_id")),
            datasets_pb2.Dataset,
            store,
        )

    def GetDataset(self, request: datasets_pb2.GetDatasetRequest, context: grpc.ServicerContext) -> datasets_pb2.Dataset:
        return dataset_to_proto(self._datasets.get(caller(context), request.name))

    def ListDatasets(self, request: datasets_pb2.ListDatasetsRequest, context: grpc.ServicerContext) -> datasets_pb2.ListDatasetsResponse:
        page = parse_page(request.page_size, request.page_token)
        datasets = self._datasets.list(caller(context), page)
        return datasets_pb2.ListDatasetsResponse(
            datasets=[dataset_to_proto(d) for d in datasets],
            next_page_token=next_page_token([d.id for d in datasets], page.size),
        )

    def DeleteDataset(self, request: datasets_pb2.DeleteDatasetRequest, context: grpc.ServicerContext) -> datasets_pb2.DeleteDatasetResponse:
        check_request_id(request.request_id)

        def delete() -> datasets_pb2.DeleteDatasetResponse:
            return datasets_pb2.DeleteDatasetResponse(name=self._datasets.delete(caller(context), request.name))

        return self._idempotency.run(
            _key(context, "DeleteDataset", request.request_id), fingerprint(request), datasets_pb2.DeleteDatasetResponse, delete
        )
