"""What `cleanroom_rpc_requests_total` counts for bad input: the caller's error under its own code,
never INTERNAL (the INTERNAL-rate alert watches that counter, so any client could page the
operator), and no ERROR traceback in the log. Scraped from the /metrics endpoint, as Prometheus does.

Every test on the `running` fixture is held to the same rule (tests/conftest.py); this module
replays the bad inputs that reach the service's catch-all on one server and scrapes at the end."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cleanroom.api.server import MAX_MESSAGE_BYTES
from cleanroom.domain.identity import Role
from cleanroom.v1 import datasets_pb2, identity_pb2, models_pb2
from tests.api.test_datasets_api import _metadata
from tests.conftest import internal_calls, make_config, start_server

UPLOAD = ("/cleanroom.v1.DatasetService/UploadDataset", datasets_pb2.UploadDatasetRequest, datasets_pb2.Dataset, Role.DATA_OWNER)
SUBMIT_MODEL = ("/cleanroom.v1.ModelService/SubmitModel", models_pb2.SubmitModelRequest, models_pb2.ModelVersion, Role.MANUFACTURER)
OVERSIZED = b"x" * (MAX_MESSAGE_BYTES + 1024)


def _stream(address: str, token: str, stream: tuple, messages: list) -> grpc.RpcError:
    method, request_type, response_type, _ = stream
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_unary(method, request_type.SerializeToString, response_type.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            call(iter(messages), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    return caught.value


def _unary(address: str, method: str, data: bytes, token: str | None = None) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method, lambda raw: raw, lambda raw: raw)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        with pytest.raises(grpc.RpcError) as caught:
            call(data, metadata=metadata, timeout=30)
    return caught.value


def _scrape(port: int) -> dict[tuple[str, str], float]:
    """cleanroom_rpc_requests_total by (method, code), read from the /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.labels["method"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "cleanroom_rpc_requests"
            for s in family.samples if s.name == "cleanroom_rpc_requests_total"}


@pytest.mark.parametrize("stream", [UPLOAD, SUBMIT_MODEL], ids=["UploadDataset", "SubmitModel"])
def test_an_oversized_first_message_is_not_counted_internal_nor_logged_as_an_error(running, caplog, stream) -> None:
    _, token = running.principal(stream[3])
    with caplog.at_level(logging.INFO):
        error = _stream(running.address, token, stream, [stream[1](chunk=OVERSIZED)])
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's answer, before the service sees the message
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert internal_calls(running.app) == {}
    counted = {s.labels["code"]: s.value for m in running.app.metrics.registry.collect() if m.name == "cleanroom_rpc_requests"
               for s in m.samples if s.name == "cleanroom_rpc_requests_total" and s.labels["method"] == stream[0]}
    # gRPC ended the call itself and Python's gRPC does not say with which code: the service sees the
    # request stream fail (CANCELLED) or, when gRPC reports the stream's end first, end empty
    # (INVALID_ARGUMENT: no metadata). Either way the client has gRPC's RESOURCE_EXHAUSTED.
    assert sum(counted.values()) == 1 and set(counted) <= {"CANCELLED", "INVALID_ARGUMENT"}


def test_bad_input_replayed_against_one_server_counts_nothing_internal(tmp_path: Path) -> None:
    server = start_server(make_config(tmp_path / "state", metrics_listen="127.0.0.1:0"))
    try:
        address, port = server.address, server.server.metrics_port
        _, owner = server.principal(Role.DATA_OWNER)
        _, maker = server.principal(Role.MANUFACTURER)
        create = "/cleanroom.v1.AdminService/CreatePrincipal"
        valid = identity_pb2.CreatePrincipalRequest(display_name="x", role=1).SerializeToString()
        bad_enum = _metadata()
        bad_enum.columns[0].type = 999
        codes = [
            _stream(address, owner, UPLOAD, [datasets_pb2.UploadDatasetRequest(chunk=OVERSIZED)]).code(),
            _stream(address, maker, SUBMIT_MODEL, [models_pb2.SubmitModelRequest(chunk=OVERSIZED)]).code(),
            _stream(address, owner, UPLOAD, [datasets_pb2.UploadDatasetRequest(metadata=_metadata()),  # a later one
                                             datasets_pb2.UploadDatasetRequest(chunk=OVERSIZED)]).code(),
            _stream(address, owner, UPLOAD, [datasets_pb2.UploadDatasetRequest(chunk=b"no metadata")]).code(),
            _stream(address, owner, UPLOAD, [datasets_pb2.UploadDatasetRequest(metadata=bad_enum)]).code(),
            _unary(address, create, b"\x0a\xff\xff\xff", server.admin_token).code(),         # malformed bytes
            _unary(address, create, valid + bytes([0xF8, 0x3E, 0x01]), server.admin_token).code(),  # an unknown field
            _unary(address, create, valid, "crt_not_a_token").code(),
            _unary(address, create, valid, owner).code(),                                     # the wrong role
        ]
        assert grpc.StatusCode.INTERNAL not in codes
        counted = _scrape(port)
        assert sum(counted.values()) >= len(codes)  # every call was counted ...
        assert {key: n for key, n in counted.items() if key[1] == "INTERNAL"} == {}  # ... and none as INTERNAL
    finally:
        server.server.stop(grace=0)
