"""The API contract (docs/api) and its test vectors against the code, so that neither drifts.

Each vector is checked two ways: the product code (enclave_sim, the SDK, the intake) reproduces it,
and a few lines written from the documented rules alone (as a client in another language would
write them) reproduce it too. The vector files must also equal what scripts/make-test-vectors
writes today.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import enclave_sim
from cleanroom.api.errors import CATALOG
from cleanroom.domain.errors import ErrorCode
from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.package import load_package
from cleanroom.models.intake.reasons import IntakeRejected, Reason
from cleanroom.sdk.stats import verify_answer
from cleanroom.sdk.verify import verify_release
from cleanroom.statistics.engine.codec import stats_workload
from cleanroom.v1 import jobs_pb2, stats_pb2
from tests import contract_vectors
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
DOCS = ROOT / "docs" / "api"
VECTORS = DOCS / "vectors"


def vectors(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --------------------------------------------------------------------------- the files themselves


def test_vector_files_are_what_the_generator_writes_today() -> None:
    built = contract_vectors.build()
    assert sorted(built) == sorted(p.name for p in VECTORS.glob("*.json"))
    stale = [name for name, data in built.items() if (VECTORS / name).read_bytes() != data]
    assert not stale, f"{stale} differ from the code: run scripts/make-test-vectors, review the diff and the docs"


# --------------------------------------------------------------------------- canonical JSON and numbers


@pytest.mark.parametrize("case", vectors("canonical-json.json")["vectors"], ids=lambda c: c["description"][:40])
def test_canonical_json(case: dict[str, Any]) -> None:
    canonical = enclave_sim.canonical_json(json.loads(case["input_json"]))
    assert canonical == case["canonical_utf8"].encode("utf-8") == bytes.fromhex(case["canonical_hex"])
    assert enclave_sim.parse_canonical(canonical) == json.loads(case["input_json"])
    assert hashlib.sha256(canonical).hexdigest() == case["sha256"]


def test_canonical_json_refuses_floats_as_documented() -> None:
    for case in vectors("canonical-json.json")["refused"]:
        with pytest.raises(TypeError):
            enclave_sim.canonical_json(json.loads(case["input_json"]))


def documented_decimal_text(value: float) -> str:
    """receipts.md#numbers-as-decimal-text, step by step (shortest digits, positional, '.0' below 1e16)."""
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ValueError("refused")
    if value == 0:
        return "0" if struct.pack(">d", value)[0] & 0x80 else "0.0"
    mantissa, _, exponent = repr(value).partition("e")  # the shortest round-trip digits
    whole, _, fraction = mantissa.partition(".")
    digits = whole + ("" if fraction == "0" else fraction)  # "3.0" -> "3"
    point = len(whole) + int(exponent or 0)
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    return text + ".0" if "." not in text and value < 1e16 else text


@pytest.mark.parametrize("case", vectors("decimal-text.json")["vectors"], ids=lambda c: c["input_shortest"])
def test_decimal_text(case: dict[str, Any]) -> None:
    value = struct.unpack(">d", bytes.fromhex(case["float64_hex"]))[0]
    assert value == case["input"] or (value != value)
    assert enclave_sim.decimal_text(value) == case["text"]
    assert documented_decimal_text(value) == case["text"]


def test_decimal_text_refuses_what_the_doc_refuses() -> None:
    for case in vectors("decimal-text.json")["refused"]:
        value = struct.unpack(">d", bytes.fromhex(case["float64_hex"]))[0]
        with pytest.raises(ValueError):
            enclave_sim.decimal_text(value)


# --------------------------------------------------------------------------- packages and workloads


def documented_package_digest(files: dict[str, bytes]) -> str:
    entries = [[name, hashlib.sha256(files[name]).hexdigest()] for name in sorted(files)]
    return hashlib.sha256(b"cleanroom-model-package-v1\x00" + json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


@pytest.mark.parametrize("case", vectors("model-package.json")["digests"], ids=lambda c: c["description"][:40])
def test_package_digest(case: dict[str, Any]) -> None:
    files = {name: unb64(data) for name, data in case["files"].items()}
    assert enclave_sim.model_package_digest(files) == documented_package_digest(files) == case["digest"]
    assert json.dumps([[n, hashlib.sha256(files[n]).hexdigest()] for n in sorted(files)], separators=(",", ":")) == case["entries_utf8"]


@pytest.mark.parametrize("case", vectors("model-package.json")["zips"], ids=lambda c: c["description"][:40])
def test_package_zip_layouts(case: dict[str, Any]) -> None:
    data = unb64(case["zip_base64"])
    if not case["accepted"]:
        with pytest.raises(IntakeRejected) as rejected:
            load_package(data, IntakeLimits())
        assert rejected.value.findings[0].code.value == case["finding"]
        return
    package = load_package(data, IntakeLimits())
    assert sorted(package.files) == case["files"]
    assert package.digest == documented_package_digest(package.files) == case["digest"]


@pytest.mark.parametrize("case", vectors("workload.json")["jobs"], ids=lambda c: c["kind"])
def test_job_workload(case: dict[str, Any]) -> None:
    parameters = contract_vectors.job_parameters_of(case["kind"], case["spec"])
    assert parameters == case["job_parameters"]
    assert enclave_sim.workload_hash(case["package_digest"], parameters, case["dataset_id"]) == case["workload"]
    statement = json.dumps({"model_version": case["package_digest"], "job_parameters": case["job_parameters"],
                            "dataset_id": case["dataset_id"]}, sort_keys=True, separators=(",", ":"))
    assert statement == case["statement_utf8"]
    assert hashlib.sha256(b"cleanroom-workload-v1\x00" + statement.encode()).hexdigest() == case["workload"]


@pytest.mark.parametrize("case", vectors("workload.json")["statistics"], ids=lambda c: c["dataset_id"])
def test_statistics_workload(case: dict[str, Any]) -> None:
    assert stats_workload(case["dataset_id"]) == case["workload"]
    assert hashlib.sha256(b"cleanroom.stats.v1\x00" + case["dataset_id"].encode()).hexdigest() == case["workload"]


# --------------------------------------------------------------------------- receipts

RECEIPTS = vectors("receipts.json")


def documented_signature_valid(public_key_hex: str, envelope: dict[str, Any]) -> bool:
    payload = envelope["payload"]
    message = (b"cleanroom-enclave-sim/signature/v1\x00" + payload["type"].encode() + b"\x00"
               + json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(envelope["signature"]), message)
    except Exception:  # noqa: BLE001 - any failure is "not valid"
        return False
    return True


def test_the_test_root_and_certificate_follow_the_documented_chain() -> None:
    root, certificate = RECEIPTS["test_root"], RECEIPTS["test_attestation_key"]["certificate"]
    assert "TEST ONLY" in RECEIPTS["warning"]
    assert hashlib.sha256(bytes.fromhex(root["public_key_raw_hex"])).hexdigest() == root["fingerprint"] == certificate["payload"]["issuer"]
    pem_der = base64.b64decode("".join(root["public_key_pem"].strip().splitlines()[1:-1]))
    assert pem_der[-32:].hex() == root["public_key_raw_hex"]
    assert documented_signature_valid(root["public_key_raw_hex"], certificate)
    signed = RECEIPTS["test_attestation_key"]["certificate_signed_message_hex"]
    assert bytes.fromhex(signed) == contract_vectors.signed_message(certificate["payload"])


def write_package(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(unb64(data))
    return directory


@pytest.mark.parametrize("case", RECEIPTS["jobs"], ids=lambda c: c["kind"])
def test_job_receipt_verifies_with_the_sdk_and_by_the_documented_rules(case: dict[str, Any], tmp_path: Path) -> None:
    receipt = case["receipt_utf8"].encode("utf-8")
    params = contract_vectors.job_parameters_of(case["kind"], case["spec"])
    verified = verify_release(receipt, files={n: unb64(d) for n, d in case["released_files"].items()},
                              package_directory=write_package(tmp_path / "package", case["package_files"]), job_parameters=params,
                              dataset_id=case["dataset_id"], pinned_root_pem=RECEIPTS["test_root"]["public_key_pem"].encode(),
                              allowed_measurements=RECEIPTS["allowed_measurements"], expected_nonce=case["nonce"])
    assert verified.report.workload == case["expected_workload"] and verified.report.epsilon_spent == case["epsilon_spent"]
    document = json.loads(receipt)
    assert enclave_sim.canonical_json(document) == receipt
    assert documented_signature_valid(document["payload"]["certificate"]["payload"]["public_key"], document)
    assert contract_vectors.signed_message(document["payload"]).hex() == case["signed_message_hex"]
    assert document["payload"]["released_files"] == {n: hashlib.sha256(unb64(d)).hexdigest() for n, d in case["released_files"].items()}


def test_statistics_receipt_verifies_with_the_sdk_and_by_the_documented_rules() -> None:
    case = RECEIPTS["statistics"]
    fields = case["answer"]
    answer = stats_pb2.QueryAnswer(
        dataset=fields["dataset"], kind=stats_pb2.StatisticKind.Value(fields["kind"]), epsilon=fields["epsilon"], delta=fields["delta"],
        confidence=fields["confidence"], mechanism=fields["mechanism"], rows_per_patient=fields["rows_per_patient"],
        cells=[stats_pb2.AnswerCell(**cell) for cell in fields["cells"]],
        answer_json=unb64(fields["answer_json_base64"]), receipt=unb64(fields["receipt_base64"]))
    verified = verify_answer(answer, pinned_root_pem=RECEIPTS["test_root"]["public_key_pem"].encode(),
                             allowed_measurements=RECEIPTS["allowed_measurements"])
    assert verified.report.workload == case["expected_workload"] == stats_workload(case["dataset_id"])
    document = json.loads(case["receipt_utf8"])
    assert documented_signature_valid(document["payload"]["certificate"]["payload"]["public_key"], document)
    assert document["payload"]["released_files"] == {"answer.json": hashlib.sha256(answer.answer_json).hexdigest()}


@pytest.mark.parametrize("case", RECEIPTS["must_fail"], ids=lambda c: c["reason"])
def test_tampered_receipts_fail_with_the_documented_reason(case: dict[str, Any]) -> None:
    job = RECEIPTS["jobs"][0]
    files = {n: unb64(d) for n, d in job["released_files"].items()}
    if "released_file_edit" in case:
        files[case["released_file_edit"]] += b" "
    with pytest.raises(enclave_sim.VerificationError) as failed:
        enclave_sim.verify_report(case["receipt_utf8"].encode("utf-8"),
                                  pinned_root_public_key_pem=case.get("pinned_root_public_key_pem", RECEIPTS["test_root"]["public_key_pem"]).encode(),
                                  allowed_measurements=RECEIPTS["allowed_measurements"],
                                  expected_workload=case.get("expected_workload", job["expected_workload"]), released_files=files)
    assert failed.value.reason.value == case["reason"]


# --------------------------------------------------------------------------- documented code lists


def table_codes(page: str, heading: str) -> dict[str, list[str]]:
    """The first column's `CODE` -> the row's other cells, in the table under `heading`."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`([A-Z0-9_]+)`\s*\|(.*)", line)
        if match:
            rows[match[1]] = [cell.strip().strip("`") for cell in match[2].split("|")]
    return rows


def sendable_error_reasons() -> set[str]:
    """Every ErrorInfo reason the server can send: ErrorInfo is built in the error catalogue only,
    from an ErrorCode, so the reasons are exactly the ErrorCode values."""
    builders = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cleanroom").rglob("*.py")
                      if re.search(r"ErrorInfo\([^)]*reason", p.read_text(encoding="utf-8")) and "_pb2" not in p.name)
    assert builders == ["cleanroom/api/errors.py"], f"ErrorInfo built outside the catalogue: {builders}"
    catalogue = (ROOT / "cleanroom" / "api" / "errors.py").read_text(encoding="utf-8")
    reasons = re.findall(r"ErrorInfo\(reason=([^,]+),", catalogue)
    assert reasons and set(reasons) <= {"error.code.value", "ErrorCode.INTERNAL.value"}, reasons
    return {code.value for code in ErrorCode}


def test_every_error_reason_the_server_can_send_is_documented_with_its_status() -> None:
    documented = table_codes("errors.md", "## ErrorInfo reasons")
    sendable = sendable_error_reasons()
    assert sendable - set(documented) == set(), "reasons the server can send that docs/api/errors.md does not list"
    assert set(documented) - sendable == set(), "reasons docs/api/errors.md lists that the server no longer sends"
    assert {reason: cells[0] for reason, cells in documented.items()} == {code.value: CATALOG[code].name for code in ErrorCode}


def test_every_job_failure_and_intake_finding_code_is_documented() -> None:
    failures = {name for name in jobs_pb2.JobFailure.keys() if name != "JOB_FAILURE_UNSPECIFIED"}
    assert set(table_codes("errors.md", "## Job failure codes")) == failures
    assert set(table_codes("model-package.md", "## Intake finding codes")) == {reason.value for reason in Reason}
