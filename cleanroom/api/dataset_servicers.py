"""Thin servicer for datasets: upload, list, get, delete."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom.api.guard import caller, request_key
from cleanroom.api.streams import upload_parts
from cleanroom.datasets.service import DatasetService
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import datasets_pb2, datasets_pb2_grpc
from cleanroom.wire.datasets import dataset_to_proto, upload_request_from_proto


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
            request_key(context, "UploadDataset", metadata.request_id),
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
            request_key(context, "DeleteDataset", request.request_id), fingerprint(request), datasets_pb2.DeleteDatasetResponse, delete
        )
