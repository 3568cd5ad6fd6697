"""Builds the API contract's test vectors, docs/api/vectors/*.json (rules: docs/api/receipts.md
and docs/api/model-package.md).

Every expected output is computed here by the product code itself (enclave_sim, the SDK, the
intake), from fixed inputs, so the files can be regenerated: `scripts/make-test-vectors`.
tests/api/test_api_contract.py checks that the code still reproduces each file byte for byte, and
re-derives the main values from the documented rules alone.

The keys below are TEST ONLY: derived from public strings and published with their private
halves. A verifier must never pin the test root for real receipts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import enclave_sim
from cleanroom.domain.privacy import Mechanism, Privacy
from cleanroom.jobs.release import canonical_parameters
from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.package import load_package
from cleanroom.models.intake.reasons import IntakeRejected
from cleanroom.statistics.engine.answer import Answer, Cell
from cleanroom.statistics.engine.codec import ANSWER_FILE, canonical_answer, stats_workload
from cleanroom.v1 import jobs_pb2
from cleanroom.wire import jobs as jobspec
from enclave_sim.keys import raw_public_key
from enclave_sim.measurement import PACKAGE_DOMAIN, WORKLOAD_DOMAIN

VECTORS_DIR = Path(__file__).resolve().parent.parent / "docs" / "api" / "vectors"
TEST_ONLY = "TEST ONLY: these keys are published with their private halves; never pin or trust them for real receipts."
SIGNATURE_DOMAIN = "cleanroom-enclave-sim/signature/v1\x00"
ROOT_SEED = hashlib.sha256(b"cleanroom api contract test vectors: root key (TEST ONLY)").digest()
ATTESTATION_SEED = hashlib.sha256(b"cleanroom api contract test vectors: attestation key (TEST ONLY)").digest()
MEASUREMENT = hashlib.sha256(b"cleanroom api contract test vectors: measurement").hexdigest()
NOT_BEFORE = datetime(2026, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2026, 1, 8, tzinfo=UTC)
ISSUED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DATASET_ID = "0f6c2a9e4d1b4b7c9a3e5d7f1b2c4d6e"

MANIFEST = b"""name = "vector-mlp"
version = "1.0.0"
entrypoint = "model:build_model"
task = "binary-classification"
num_classes = 2
input_shape = [4]
trainable = ["*"]
"""
MODEL_PY = b"""import torch


def build_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
"""
PACKAGE = {"cleanroom-model.toml": MANIFEST, "model.py": MODEL_PY}


# --------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def float64_hex(value: float) -> str:
    return struct.pack(">d", value).hex()


def tiny_safetensors(values: list[float]) -> bytes:
    """A valid safetensors file with one float32 tensor "w" (built by hand: no torch needed)."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    """A deflated zip with fixed timestamps, entries in the given order (directories end in '/')."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if name.endswith("/") else zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = ((0o40755 if name.endswith("/") else 0o100644) << 16) | (0x10 if name.endswith("/") else 0)
            archive.writestr(info, data)
    return buffer.getvalue()


def package_digest_entries(files: dict[str, bytes]) -> bytes:
    """The canonical JSON list the package digest hashes (after its domain string)."""
    return enclave_sim.canonical_json([[name, enclave_sim.sha256_hex(files[name])] for name in sorted(files)])


def test_keys() -> tuple[enclave_sim.RootAuthority, enclave_sim.AttestationKey]:
    root = enclave_sim.RootAuthority(Ed25519PrivateKey.from_private_bytes(ROOT_SEED))
    private = Ed25519PrivateKey.from_private_bytes(ATTESTATION_SEED)
    certificate = root.certify(private.public_key(), subject="cleanroom-launcher (test vectors)", not_before=NOT_BEFORE, not_after=NOT_AFTER)
    return root, enclave_sim.AttestationKey(private, certificate)


def private_pem(seed: bytes) -> str:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode("ascii")


# --------------------------------------------------------------------------- canonical JSON


def canonical_json_vectors() -> dict[str, Any]:
    cases = [
        ("keys sorted, no whitespace", '{"b": 1, "a": [true, false, null], "c": {"z": "", "y": -7}}'),
        ("keys sorted by Unicode code point, not UTF-16 unit (U+1F600 after U+FF41)",
         '{"\\ud83d\\ude00": 6, "\\uff41": 5, "\\u00e9": 4, "a": 1, "_": 3, "B": 2}'),
        ("integer-like keys are strings: '10' sorts before '9'", '{"9": "nine", "a": "a", "10": "ten"}'),
        ("escapes: only quote, backslash and control characters; non-ASCII raw UTF-8; '/' and U+2028 raw",
         '{"s": "quote\\" backslash\\\\ newline\\n tab\\t bell\\u0007 del\\u007f slash/ \\u00e9 \\ud55c\\uae00 \\ud83d\\ude00 ls\\u2028"}'),
        ("largest safe integer; negative integers", '{"max": 9007199254740991, "min": -9007199254740991, "zero": 0}'),
        ("nested lists and objects keep list order", '[[3, 2, 1], {"b": {"d": 1, "c": 2}}, "x"]'),
    ]
    vectors = []
    for description, text in cases:
        canonical = enclave_sim.canonical_json(json.loads(text))
        vectors.append({"description": description, "input_json": text, "canonical_utf8": canonical.decode("utf-8"),
                        "canonical_hex": canonical.hex(), "sha256": enclave_sim.sha256_hex(canonical)})
    refused = [{"description": "a fractional number has no canonical form (use decimal text)", "input_json": '{"epsilon": 1.5}'},
               {"description": "an integral float has none either (Python 3.0 is a float)", "input_json": '{"epsilon": 3.0}'}]
    for case in refused:
        try:
            enclave_sim.canonical_json(json.loads(case["input_json"]))
        except TypeError:
            continue
        raise AssertionError(f"canonical_json accepted {case['input_json']}")
    return {"rules": "docs/api/receipts.md#canonical-json", "vectors": vectors, "refused": refused}


# --------------------------------------------------------------------------- decimal text

# The spec, written out by hand; build() checks that enclave_sim.decimal_text agrees.
DECIMAL_SPEC = [
    (3.0, "3.0"), (1.0, "1.0"), (0.0, "0.0"), (-0.0, "0"), (0.5, "0.5"), (0.1, "0.1"),
    (0.30000000000000004, "0.30000000000000004"), (1e-05, "0.00001"), (1e-06, "0.000001"), (2.5e-05, "0.000025"),
    (1e-07, "0.0000001"), (0.0001, "0.0001"), (100.0, "100.0"), (123456.789, "123456.789"),
    (1e15, "1000000000000000.0"), (9999999999999998.0, "9999999999999998.0"), (1e16, "10000000000000000"),
    (1.5e16, "15000000000000000"), (1e21, "1000000000000000000000"), (1e23, "100000000000000000000000"),
    (5e-324, "0." + "0" * 323 + "5"),
]
DECIMAL_REFUSED = [("negative", -1.0), ("NaN", float("nan")), ("infinity", float("inf"))]


def decimal_text_vectors() -> dict[str, Any]:
    vectors = []
    for value, expected in DECIMAL_SPEC:
        produced = enclave_sim.decimal_text(value)
        if produced != expected:
            raise AssertionError(f"decimal_text({value!r}) is {produced!r}; the spec says {expected!r}")
        vectors.append({"input": value, "input_shortest": repr(value), "float64_hex": float64_hex(value), "text": expected})
    refused = [{"description": what, "float64_hex": float64_hex(value)} for what, value in DECIMAL_REFUSED]
    return {"rules": "docs/api/receipts.md#numbers-as-decimal-text", "vectors": vectors, "refused": refused}


# --------------------------------------------------------------------------- model packages


def _digest_case(description: str, files: dict[str, bytes]) -> dict[str, Any]:
    entries = package_digest_entries(files)
    return {"description": description, "files": {name: b64(files[name]) for name in sorted(files)},
            "entries_utf8": entries.decode("utf-8"), "digest": enclave_sim.model_package_digest(files)}


def _zip_case(description: str, entries: list[tuple[str, bytes]]) -> dict[str, Any]:
    data = zip_of(entries)
    case: dict[str, Any] = {"description": description, "entries": [name for name, _ in entries], "zip_base64": b64(data)}
    try:
        package = load_package(data, IntakeLimits())
    except IntakeRejected as rejected:
        case.update(accepted=False, finding=rejected.findings[0].code.value)
        return case
    case.update(accepted=True, files=sorted(package.files), digest=package.digest)
    return case


def model_package_vectors() -> dict[str, Any]:
    nested = {**PACKAGE, "layers/__init__.py": b"", "layers/blocks.py": b"WIDTH = 8\n", "README.md": b"# vector-mlp\n",
              "weights.safetensors": tiny_safetensors([0.5, -0.25])}
    nested["cleanroom-model.toml"] = MANIFEST + b'weights = "weights.safetensors"\n'
    ordering = {"a.py": b"", "a-b.py": b"", "B.py": b"", "model.py": b"", "model/x.py": b""}
    digests = [_digest_case("manifest and model only", PACKAGE),
               _digest_case("a sub-package, a README and safetensors weights", nested),
               _digest_case("names sorted by code point: 'B.py' < 'a-b.py' < 'a.py' < 'model.py' < 'model/x.py'", ordering)]
    at_root = [(name, PACKAGE[name]) for name in sorted(PACKAGE)]
    zips = [_zip_case("files at the zip root", at_root),
            _zip_case("one top-level folder, as `zip -r pkg.zip pkg/` makes: read from inside it, same digest",
                      [("vector-mlp/", b""), *[("vector-mlp/" + name, data) for name, data in at_root]]),
            _zip_case("one top-level folder without directory entries", [("pkg/" + name, data) for name, data in at_root]),
            _zip_case("two levels deep: refused, the manifest must be at the package root",
                      [("a/b/" + name, data) for name, data in at_root]),
            _zip_case("a folder plus a file beside it: refused", [*[("pkg/" + n, d) for n, d in at_root], ("notes.txt", b"x")]),
            _zip_case("no manifest at all: refused", [("model.py", MODEL_PY)]),
            _zip_case("pickled weights: refused unread", [*at_root, ("weights.pt", b"\x80\x04")])]
    return {"rules": "docs/api/model-package.md", "domain_hex": PACKAGE_DOMAIN.hex(), "digests": digests, "zips": zips}


# --------------------------------------------------------------------------- workloads

TRAINING_SPEC = {"model": "models/3b1f", "dataset": f"datasets/{DATASET_ID}", "feature_columns": ["age", "heart_rate", "spo2", "temp"],
                 "label_column": "event", "target_epsilon": 3.0, "target_delta": 1e-05, "epochs": 5,
                 "expected_batch_patients": 64, "learning_rate": 0.5, "optimizer": "sgd", "clipping_norm": 1.0,
                 "validation_fraction": 0.2, "max_rows_per_patient": 0}
EVALUATION_SPEC = {"model": "models/3b1f", "dataset": f"datasets/{DATASET_ID}", "feature_columns": ["age", "heart_rate", "spo2", "temp"],
                   "label_column": "event", "target_epsilon": 0.5, "target_delta": 1e-06,
                   "metrics": ["specificity", "auroc", "accuracy"], "max_rows_per_patient": 3}
# The report options appear in the job parameters only when set (lists of decimal text, in the order sent).
EVALUATION_REPORT_SPEC = {**EVALUATION_SPEC, "sensitivity_at_specificity": [0.95, 0.9], "specificity_at_sensitivity": [0.8],
                          "net_benefit_thresholds": [0.05, 0.15], "score_bins": 40}

# A request over a stream: its windows appear only when set (min_coverage 0 reads as 0.5).
STREAM_TRAINING_SPEC = {**TRAINING_SPEC, "feature_columns": ["hr", "spo2", "steps"], "label_column": "",
                        "windows": {"window_seconds": 600, "stride_seconds": 300, "resample_seconds": 5, "min_coverage": 0.0,
                                    "label_rule": {"channel": "spo2", "comparison": "below", "threshold": 90.0, "for_seconds": 60}}}
# A rule over a signed channel: the threshold's text carries its sign.
STREAM_SIGNED_SPEC = {**STREAM_TRAINING_SPEC, "feature_columns": ["accel_z", "hr"],
                      "windows": {"window_seconds": 60, "stride_seconds": 30, "resample_seconds": 1,
                                  "label_rule": {"channel": "accel_z", "comparison": "below", "threshold": -1.5, "for_seconds": 2}}}
STREAM_EVALUATION_SPEC = {**EVALUATION_SPEC, "feature_columns": ["hr", "spo2"],
                          "windows": {"window_seconds": 60, "stride_seconds": 60, "resample_seconds": 1, "min_coverage": 0.75}}


def job_parameters_of(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    if kind == "training":
        return jobspec.training_params_from_proto(jobs_pb2.TrainingSpec(**spec)).to_json()
    return jobspec.evaluation_params_from_proto(jobs_pb2.EvaluationSpec(**spec)).to_json()


def _job_case(kind: str, spec: dict[str, Any], package_digest: str) -> dict[str, Any]:
    parameters = job_parameters_of(kind, spec)
    dataset_id = spec["dataset"].removeprefix("datasets/")
    statement = enclave_sim.canonical_json({"model_version": package_digest, "job_parameters": parameters, "dataset_id": dataset_id})
    return {"kind": kind, "spec": spec, "package_digest": package_digest, "dataset_id": dataset_id, "job_parameters": parameters,
            "statement_utf8": statement.decode("utf-8"), "workload": enclave_sim.workload_hash(package_digest, parameters, dataset_id)}


def workload_vectors() -> dict[str, Any]:
    digest = enclave_sim.model_package_digest(PACKAGE)
    jobs = [_job_case("training", TRAINING_SPEC, digest), _job_case("evaluation", EVALUATION_SPEC, digest),
            _job_case("evaluation", EVALUATION_REPORT_SPEC, digest), _job_case("training", STREAM_TRAINING_SPEC, digest),
            _job_case("evaluation", STREAM_EVALUATION_SPEC, digest), _job_case("training", STREAM_SIGNED_SPEC, digest)]
    stats = [{"dataset_id": dataset_id, "message_hex": (b"cleanroom.stats.v1\x00" + dataset_id.encode()).hex(),
              "workload": stats_workload(dataset_id)} for dataset_id in (DATASET_ID, "d123")]
    return {"rules": "docs/api/receipts.md#workload-hash", "domain_hex": WORKLOAD_DOMAIN.hex(), "jobs": jobs, "statistics": stats}


# --------------------------------------------------------------------------- signed receipts


def _training_release() -> tuple[dict[str, Any], str, str, dict[str, bytes]]:
    from cleanroom.sdk.verify import recompute_epsilon

    sigma, q, steps, delta = 1.1, 0.05, 200, 1e-05
    history = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps, "delta": delta}
    epsilon, rdp_epsilon = recompute_epsilon(history, "prv"), recompute_epsilon(history, "rdp")
    parameters = {**history, "epsilon": epsilon, "rdp_epsilon": rdp_epsilon, "accountant": "prv", "mechanism": "subsampled-gaussian", "sampling": "poisson", "privacy_unit": "patient"}
    files = {"weights.safetensors": tiny_safetensors([0.125, -0.5, 2.0]), "metrics.json": b'{"accuracy":{"value":0.91}}'}
    return parameters, charged(epsilon, delta), "prv", files


def _evaluation_release() -> tuple[dict[str, Any], str, str, dict[str, bytes]]:
    from cleanroom.trainer.accounting import zcdp_epsilon

    rho, delta = 0.004, 1e-06
    epsilon = zcdp_epsilon(rho=rho, delta=delta)
    parameters = {"rho": rho, "delta": delta, "privacy_unit": "patient", "max_rows_per_patient": 3}
    files = {"metrics.json": b'{"auroc":{"value":0.88,"half_width":0.04}}', "report.html": b"<!doctype html><title>report</title>"}
    return parameters, charged(epsilon, delta), "zcdp-rdp", files


def charged(epsilon: float, delta: float) -> str:
    """A job receipt states the ε the ledger charged: micro-ε, rounded up (as the runner signs it)."""
    return enclave_sim.decimal_text(Privacy.cost(epsilon, delta).epsilon_value)


def _signed(key: enclave_sim.AttestationKey, workload: str, parameters: dict[str, Any], epsilon: str, accountant: str,
            files: dict[str, bytes], nonce: str) -> bytes:
    return enclave_sim.sign_report(key, measurement=MEASUREMENT, workload=workload, dp_parameters=canonical_parameters(parameters),
                                   epsilon_spent=epsilon, accountant=accountant, dataset_commitment=hashlib.sha256(b"sealed dataset").hexdigest(),
                                   released_files=files, nonce=nonce, issued_at=ISSUED_AT)


def _job_receipt(key: enclave_sim.AttestationKey, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    parameters, epsilon, accountant, files = _training_release() if kind == "training" else _evaluation_release()
    job = _job_case(kind, spec, enclave_sim.model_package_digest(PACKAGE))
    nonce = hashlib.sha256(f"nonce {kind}".encode()).hexdigest()
    receipt = _signed(key, job["workload"], parameters, epsilon, accountant, files, nonce)
    payload = json.loads(receipt)["payload"]
    return {"kind": kind, "package_files": {n: b64(PACKAGE[n]) for n in sorted(PACKAGE)}, "spec": spec,
            "dataset_id": job["dataset_id"], "expected_workload": job["workload"], "nonce": nonce,
            "released_files": {n: b64(files[n]) for n in sorted(files)}, "receipt_utf8": receipt.decode("utf-8"),
            "signed_message_hex": signed_message(payload).hex(), "epsilon_spent": epsilon, "accountant": accountant}


def _statistics_answer() -> tuple[Answer, dict[str, Any]]:
    mechanism = Mechanism("discrete-laplace", "basic", (("scale", 2.0), ("sensitivity", 1.0)))
    answer = Answer(kind="count", cells=(Cell(("40-49",), "count", 118.0, 5.99), Cell(("50-59",), "count", 97.0, 5.99)),
                    epsilon=0.5, delta=0.0, mechanism=mechanism, rows_per_patient=1)
    fields = {"dataset": f"datasets/{DATASET_ID}", "kind": "STATISTIC_KIND_COUNT", "epsilon": 0.5, "delta": 0.0, "confidence": 0.95,
              "mechanism": "discrete-laplace", "rows_per_patient": 1,
              "cells": [{"key": list(c.key), "statistic": c.statistic, "value": c.value, "half_width": c.half_width, "unit": c.unit}
                        for c in answer.cells]}
    return answer, fields


def _statistics_receipt(key: enclave_sim.AttestationKey) -> dict[str, Any]:
    answer, fields = _statistics_answer()
    answer_json = canonical_answer(answer)
    parameters = {"query_sha256": hashlib.sha256(b"vector query").hexdigest(), "delta": answer.delta,
                  "mechanism": answer.mechanism.name, "rows_per_patient": answer.rows_per_patient, **dict(answer.mechanism.parameters)}
    nonce = hashlib.sha256(b"nonce statistics").hexdigest()
    receipt = _signed(key, stats_workload(DATASET_ID), parameters, enclave_sim.decimal_text(answer.epsilon), "basic",
                      {ANSWER_FILE: answer_json}, nonce)
    return {"answer": {**fields, "answer_json_base64": b64(answer_json), "receipt_base64": b64(receipt)},
            "answer_json_utf8": answer_json.decode("utf-8"), "dataset_id": DATASET_ID, "expected_workload": stats_workload(DATASET_ID),
            "released_files": {ANSWER_FILE: b64(answer_json)}, "receipt_utf8": receipt.decode("utf-8"), "nonce": nonce}


def signed_message(payload: dict[str, Any]) -> bytes:
    return SIGNATURE_DOMAIN.encode("ascii") + payload["type"].encode("ascii") + b"\x00" + enclave_sim.canonical_json(payload)


def _tampered(receipt: bytes) -> list[dict[str, Any]]:
    """Receipts that must fail, each with the check that catches it first."""
    document = json.loads(receipt)
    edited = json.loads(receipt)
    edited["payload"]["epsilon_spent"] = "0.1"
    other_root = enclave_sim.RootAuthority(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"another test root").digest()))
    return [
        {"description": "epsilon_spent edited after signing", "receipt_utf8": enclave_sim.canonical_json(edited).decode(), "reason": "BAD_SIGNATURE"},
        {"description": "checked against another pinned root", "receipt_utf8": receipt.decode(), "pinned_root_public_key_pem":
         other_root.public_key_pem().decode("ascii"), "reason": "UNTRUSTED_CERTIFICATE"},
        {"description": "not canonical: a space after a colon", "receipt_utf8": receipt.decode().replace('"payload":', '"payload": ', 1),
         "reason": "MALFORMED"},
        {"description": "expected another workload", "receipt_utf8": receipt.decode(), "expected_workload": "00" * 32, "reason": "WORKLOAD_MISMATCH"},
        {"description": "a released file altered", "receipt_utf8": receipt.decode(), "released_file_edit": sorted(document["payload"]["released_files"])[0],
         "reason": "RELEASED_FILES_MISMATCH"},
    ]


def receipt_vectors() -> dict[str, Any]:
    root, key = test_keys()
    certificate = key.certificate.to_json()
    training = _job_receipt(key, "training", TRAINING_SPEC)
    return {
        "rules": "docs/api/receipts.md",
        "warning": TEST_ONLY,
        "test_root": {"private_key_seed_hex": ROOT_SEED.hex(), "private_key_pem": private_pem(ROOT_SEED),
                      "public_key_raw_hex": raw_public_key(root.public_key).hex(), "public_key_pem": root.public_key_pem().decode("ascii"),
                      "fingerprint": root.fingerprint},
        "test_attestation_key": {"private_key_seed_hex": ATTESTATION_SEED.hex(), "private_key_pem": private_pem(ATTESTATION_SEED),
                                 "certificate": certificate, "certificate_utf8": enclave_sim.canonical_json(certificate).decode("utf-8"),
                                 "certificate_signed_message_hex": signed_message(certificate["payload"]).hex()},
        "allowed_measurements": [MEASUREMENT],
        "verify_at": "2026-01-02T03:04:05Z",
        "jobs": [training, _job_receipt(key, "evaluation", EVALUATION_SPEC)],
        "statistics": _statistics_receipt(key),
        "must_fail": _tampered(training["receipt_utf8"].encode("utf-8")),
    }


# --------------------------------------------------------------------------- files


def build() -> dict[str, bytes]:
    """File name -> exact bytes of each vectors file."""
    documents = {"canonical-json.json": canonical_json_vectors(), "decimal-text.json": decimal_text_vectors(),
                 "model-package.json": model_package_vectors(), "workload.json": workload_vectors(), "receipts.json": receipt_vectors()}
    return {name: (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8") for name, document in documents.items()}


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else VECTORS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (directory / name).write_bytes(data)
        print(f"wrote {directory / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
