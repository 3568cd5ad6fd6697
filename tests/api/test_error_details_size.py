"""An error's details travel as trailing metadata, which gRPC clients refuse past 8 KiB (16 KiB
hard): the RPC fuzzer (proof/rpc_fuzz.py, `make fuzz` with a model) sent SubmitTraining a 1 MiB
feature-column name, the field path "spec.feature_columns[<name>]" carried it back, and the client
got RESOURCE_EXHAUSTED "metadata size exceeds hard limit" instead of INVALID_ARGUMENT. The catalog
now bounds what an error carries."""

from __future__ import annotations

from google.rpc import error_details_pb2, status_pb2

from cleanroom.api.errors import to_status
from cleanroom.domain.errors import FieldViolation, bad_request

SOFT_LIMIT = 8 << 10
HUGE = "y" * (1 << 20)


def _metadata_bytes(status: object) -> int:
    return sum(len(key) + len(value) * (4 if key.endswith("-bin") else 1) // (3 if key.endswith("-bin") else 1)
               for key, value in status.trailing_metadata) + len(status.details)  # type: ignore[attr-defined]


def _violations(status: object) -> list[error_details_pb2.BadRequest.FieldViolation]:
    details = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])  # type: ignore[attr-defined]
    found = error_details_pb2.BadRequest()
    assert any(d.Unpack(found) for d in details.details)
    return list(found.field_violations)


def test_a_huge_field_path_is_cut_so_the_error_still_reaches_the_caller() -> None:
    status = to_status(bad_request("a feature column is unknown", FieldViolation(f"spec.feature_columns[{HUGE}]", "not in the dataset")))
    assert _metadata_bytes(status) < SOFT_LIMIT
    (violation,) = _violations(status)
    assert violation.field.startswith("spec.feature_columns[yyy") and violation.field.endswith("…")
    assert violation.description == "not in the dataset"


def test_many_violations_are_cut_to_what_fits_and_a_huge_message_too() -> None:
    many = [FieldViolation(f"spec.feature_columns[c{i}]", "not in the dataset " + "é" * 500) for i in range(10_000)]
    status = to_status(bad_request("m" * (1 << 20), *many))
    assert _metadata_bytes(status) < SOFT_LIMIT
    shown = _violations(status)
    assert 1 <= len(shown) < 10 and shown[0].field == "spec.feature_columns[c0]"


def test_ordinary_errors_are_untouched() -> None:
    status = to_status(bad_request("the file's columns do not match", FieldViolation("columns[age]", "declared but not in the file")))
    assert status.details == "the file's columns do not match"
    assert [(v.field, v.description) for v in _violations(status)] == [("columns[age]", "declared but not in the file")]
