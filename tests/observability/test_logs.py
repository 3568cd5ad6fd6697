"""Structured logs: JSON lines carrying the caller's request id, and never a token or a data value."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.observability import logs
from cleanroom.sdk import CleanroomClientError
from cleanroom.v1 import identity_pb2
from tests.api.test_datasets_api import CANARIES, _rows, _upload


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_upload_logs_are_json_with_request_id_and_no_data(running, captured, tmp_path) -> None:
    _, token = running.principal(Role.DATA_OWNER)
    with running.client(token) as owner:
        owner._metadata = (*owner._metadata, ("x-request-id", "req-upload-42"))
        _upload(owner, tmp_path)
        rows = _rows()
        rows[3][5] = "mail kim@example.org"
        with pytest.raises(CleanroomClientError):
            _upload(owner, tmp_path, rows)
    entries = _lines(captured)
    stored = [e for e in entries if e["message"] == "dataset stored"]
    rejected = [e for e in entries if e["message"] == "upload rejected"]
    assert stored and stored[0]["request_id"] == "req-upload-42" and stored[0]["rows"] == 36
    assert rejected and rejected[0]["code"] == "SENSITIVE_DATA_FOUND"
    text = captured.getvalue()
    for secret in (*CANARIES.values(), "kim@example.org", token):
        assert secret not in text


def test_request_id_is_returned_to_the_caller(running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        call = channel.unary_unary("/cleanroom.v1.IdentityService/WhoAmI", identity_pb2.WhoAmIRequest.SerializeToString, identity_pb2.Principal.FromString)
        _, outcome = call.with_call(identity_pb2.WhoAmIRequest(), metadata=(("authorization", f"Bearer {running.admin_token}"), ("x-request-id", "trace-7")))
    assert ("x-request-id", "trace-7") in outcome.trailing_metadata()


def test_tokens_are_redacted_and_odd_request_ids_replaced(captured) -> None:
    logging.getLogger("test").warning("token was crt_abcdefghijklmnopqrstuvwxyz0123")
    assert "crt_abcdefghij" not in captured.getvalue() and "crt_[redacted]" in captured.getvalue()
    assert logs.clean_request_id("ok-id_1") == "ok-id_1"
    assert logs.clean_request_id("bad id with spaces\n") != "bad id with spaces\n"
