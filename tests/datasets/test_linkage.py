"""Cross-hospital linkage (issue #15 item 2): the LINKAGE_ID role, its policy rules, the linkage
pseudonym (normalisation, prefix, empty identifiers) and the per-patient consistency check, on
Arrow batches without a server. The end-to-end checks (two hospitals, KEK rotation, replicas,
refusals over gRPC) are tests/api/test_linkage_api.py."""

from __future__ import annotations

import hmac

import pyarrow as pa
import pytest

from cleanroom.datasets import deidentify as ops
from cleanroom.domain.deid import (
    ROLE_SPECS,
    ColumnRole,
    ColumnSpec,
    ColumnType,
    Treatment,
    linkage_column,
    stored_schema,
    validate_policy,
)
from cleanroom.domain.errors import CleanroomError, ErrorCode

KEY = bytes(range(32))
PID = ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY)
RRN = ColumnSpec("rrn", ColumnType.STRING, ColumnRole.LINKAGE_ID)
HR = ColumnSpec("hr", ColumnType.FLOAT, ColumnRole.FEATURE)
POLICY = validate_policy([PID, RRN, HR], k=2)


def _violations(columns: list[ColumnSpec]) -> list[tuple[str, str]]:
    with pytest.raises(CleanroomError) as caught:
        validate_policy(columns, k=2)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    return [(v.field, v.description) for v in caught.value.violations]


def test_the_linkage_role_is_stored_as_text_and_is_not_the_privacy_unit() -> None:
    spec = ROLE_SPECS[ColumnRole.LINKAGE_ID]
    assert spec.treatment is Treatment.LINK and not spec.privacy_unit
    assert spec.stored_as_text and not spec.scanned_for_identifiers and not spec.categories
    assert {c.name: c.type for c in stored_schema([PID, RRN, HR])}["rrn"] is ColumnType.STRING
    assert POLICY.linkage == RRN and linkage_column(POLICY.columns) == "rrn"
    assert validate_policy([PID, HR], k=2).linkage is None and linkage_column([PID, HR]) is None


def test_at_most_one_linkage_column() -> None:
    second = ColumnSpec("nhs", ColumnType.STRING, ColumnRole.LINKAGE_ID)
    assert ("columns", "at most one column may have role LINKAGE_ID; 2 do") in _violations([PID, RRN, second, HR])


def test_a_linkage_column_needs_a_patient_key() -> None:
    found = _violations([RRN, HR])
    assert ("columns[rrn]", "a linkage identifier needs a PATIENT_KEY column beside it") in found


def test_a_linkage_identifier_is_integer_or_string() -> None:
    floating = ColumnSpec("rrn", ColumnType.FLOAT, ColumnRole.LINKAGE_ID)
    assert _violations([PID, floating, HR]) == [("columns[rrn]", "a linkage identifier must be INTEGER or STRING")]


def test_the_pseudonym_is_keyed_normalised_prefixed_and_empty_for_a_missing_identifier() -> None:
    linkage = ops.LinkagePseudonymizer(KEY)
    out = linkage.pseudonymize(pa.array(["  AB-12 ", "ab-12", "Ab-12\t", "cd-34", "", "   ", None])).to_pylist()
    assert out[0] == out[1] == out[2] and out[3] != out[0]
    assert out[4:] == ["", "", ""]
    assert all(p.startswith(ops.LINKAGE_PREFIX) and len(p) == len(ops.LINKAGE_PREFIX) + 32 for p in out[:4])
    # Not the patient pseudonym of the same text under the same key (a domain-separated message).
    assert out[0] != ops.Pseudonymizer(KEY).pseudonymize(pa.array(["ab-12"])).to_pylist()[0]
    assert out[0].removeprefix(ops.LINKAGE_PREFIX) != hmac.digest(KEY, b"ab-12", "sha256").hex()[:32]
    # Another key gives another pseudonym: only the key's holder can compute them.
    assert ops.LinkagePseudonymizer(bytes(32)).pseudonymize(pa.array(["ab-12"])).to_pylist()[0] != out[0]


def test_integer_and_string_identifiers_link() -> None:
    linkage = ops.LinkagePseudonymizer(KEY)
    assert linkage.pseudonymize(pa.array([9001011234567])).to_pylist() == \
        linkage.pseudonymize(pa.array([" 9001011234567"])).to_pylist()


def _batch(pids: list[str | None], rrns: list[str | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"pid": pids, "rrn": rrns, "hr": [70.0] * len(pids)},
                                      schema=pa.schema([("pid", pa.string()), ("rrn", pa.string()), ("hr", pa.float64())]))


def test_a_batch_stores_pseudonyms_drops_the_identifier_and_counts_unlinked_rows() -> None:
    batch = _batch(["p1", "p1", "p2", None], ["RRN-1", "rrn-1", None, "RRN-9"])
    result = ops.deidentify_batch(batch, POLICY, ops.Pseudonymizer(KEY), linkage=ops.LinkagePseudonymizer(bytes(32)))
    links = result.batch.column("rrn").to_pylist()
    assert result.rows_without_patient_key == 1 and result.rows_without_linkage_id == 1
    assert links[0] == links[1] != "" and links[2] == ""
    assert "RRN-1" not in str(result.batch.to_pydict()) and "rrn-1" not in str(result.batch.to_pydict())


def test_a_linkage_policy_without_the_linkage_key_fails_closed() -> None:
    with pytest.raises(ValueError):
        ops.deidentify_batch(_batch(["p1"], ["r"]), POLICY, ops.Pseudonymizer(KEY))


@pytest.mark.parametrize("second", [["lnk-b"], [""]], ids=["another identifier", "none on a later row"])
def test_a_patient_with_two_linkage_identifiers_is_refused_across_batches(second: list[str]) -> None:
    checker = ops.LinkageChecker("rrn")
    checker.update(pa.array(["p1", "p2", "p1"]), pa.array(["lnk-a", "", "lnk-a"]))
    checker.update(pa.array(["p3"]), pa.array(["lnk-a"]))  # two patient keys, one person: allowed
    with pytest.raises(CleanroomError) as caught:
        checker.update(pa.array(["p1"]), pa.array(second))
    (violation,) = caught.value.violations
    assert caught.value.code is ErrorCode.BAD_REQUEST and violation.field == "columns[rrn]"
    assert "lnk-" not in violation.description and "lnk-" not in caught.value.message
