"""Result reports and the SDK's verify_report: passes for the genuine article, names every forgery."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_sim import (
    AttestationKey,
    EnclaveSimError,
    Reason,
    RootAuthority,
    VerificationError,
    canonical_json,
    decimal_text,
    make_quote,
    new_nonce,
    parse_report,
    sign_report,
    verify_report,
    workload_hash,
)
from enclave_sim.canonical import utc_now
from enclave_sim.signing import _message

NOW = utc_now()
MEASUREMENT = hashlib.sha256(b"trainer v1").hexdigest()
MODEL_DIGEST = hashlib.sha256(b"arrhythmia-mlp 1.0.0").hexdigest()
JOB = {"epochs": 3, "batch_size": 256, "features": ["hr", "spo2"], "label": "arrhythmia"}
WORKLOAD = workload_hash(MODEL_DIGEST, JOB, "ds-1")
DP_PARAMETERS = {"noise_multiplier": decimal_text(1.1), "sample_rate": decimal_text(0.01), "steps": 300, "max_grad_norm": "1.0", "delta": "0.00001"}
EPSILON = 0.9812345
FILES = {"weights.safetensors": b"\x00\x01weights" * 50, "metrics.json": b'{"auroc":"0.91"}'}
NONCE = new_nonce()
COMMITMENT = hashlib.sha256(b"sealed dataset ds-1").hexdigest()
TAMPER_REASONS = {Reason.MALFORMED, Reason.NOT_SIMULATED_FLAG, Reason.UNTRUSTED_CERTIFICATE, Reason.BAD_SIGNATURE}


class FakeAccountant:
    """Stands in for the trainer's accountant: records its calls, answers a fixed epsilon."""

    def __init__(self, epsilon: float = EPSILON) -> None:
        self.epsilon = epsilon
        self.calls: list[tuple[dict[str, Any], str]] = []

    def __call__(self, dp_parameters: Mapping[str, Any], accountant: str) -> float:
        self.calls.append((dict(dp_parameters), accountant))
        return self.epsilon


@pytest.fixture(scope="module")
def root() -> RootAuthority:
    return RootAuthority.generate()


@pytest.fixture(scope="module")
def attestation_key(root: RootAuthority) -> AttestationKey:
    return AttestationKey.generate(root, now=NOW - timedelta(hours=1))


def _sign(key: AttestationKey, **overrides: Any) -> bytes:
    fields = dict(measurement=MEASUREMENT, workload=WORKLOAD, dp_parameters=DP_PARAMETERS, epsilon_spent=EPSILON, accountant="prv",
                  dataset_commitment=COMMITMENT, released_files=FILES, nonce=NONCE, issued_at=NOW)  # fmt: skip
    return sign_report(key, **(fields | overrides))


def _verify(report: bytes, root: RootAuthority, **overrides: Any):
    options = dict(pinned_root_public_key_pem=root.public_key_pem(), allowed_measurements={MEASUREMENT}, expected_workload=WORKLOAD,
                   released_files=FILES, expected_nonce=NONCE, max_age=timedelta(minutes=10), epsilon_recomputer=FakeAccountant(), now=NOW)  # fmt: skip
    return verify_report(report, **(options | overrides))


def _failure(report: bytes, root: RootAuthority, **overrides: Any) -> Reason:
    with pytest.raises(VerificationError) as caught:
        _verify(report, root, **overrides)
    return caught.value.reason


@pytest.fixture(scope="module")
def report(attestation_key: AttestationKey) -> bytes:
    return _sign(attestation_key)


def test_a_genuine_report_verifies_and_epsilon_is_recomputed(report: bytes, root: RootAuthority) -> None:
    accountant = FakeAccountant()
    verified = _verify(report, root, epsilon_recomputer=accountant)
    assert verified.epsilon_recomputed == EPSILON
    assert accountant.calls == [(DP_PARAMETERS, "prv")]
    assert verified.root_fingerprint == root.fingerprint
    assert verified.report.epsilon_spent == "0.9812345"
    assert verified.report.released_files == {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    assert (verified.report.nonce, verified.report.dataset_commitment, verified.report.issued_at) == (NONCE, COMMITMENT, NOW)


def test_a_report_round_trips_and_says_simulated(report: bytes) -> None:
    assert report.count(b'"simulated":true') == 2  # the report and its embedded certificate
    assert parse_report(report).to_bytes() == report


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_report_with_any_flipped_byte_fails(report: bytes, root: RootAuthority, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(report) - 1))
    tampered = bytearray(report)
    tampered[position] ^= data.draw(st.integers(1, 255))
    assert _failure(bytes(tampered), root) in TAMPER_REASONS


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(FILES)), st.data())
def test_a_released_file_with_any_flipped_byte_fails(report: bytes, root: RootAuthority, name: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(FILES[name]) - 1))
    tampered = bytearray(FILES[name])
    tampered[position] ^= data.draw(st.integers(1, 255))
    assert _failure(report, root, released_files={**FILES, name: bytes(tampered)}) is Reason.RELEASED_FILES_MISMATCH


@pytest.mark.parametrize(
    "received",
    [
        {**FILES, "extra.bin": b""},  # added
        {"weights.safetensors": FILES["weights.safetensors"]},  # removed
        {"weights2.safetensors": FILES["weights.safetensors"], "metrics.json": FILES["metrics.json"]},  # renamed
        {"weights.safetensors": FILES["metrics.json"], "metrics.json": FILES["weights.safetensors"]},  # swapped
        {},
    ],
)
def test_released_files_must_match_exactly(report: bytes, root: RootAuthority, received: dict) -> None:
    assert _failure(report, root, released_files=received) is Reason.RELEASED_FILES_MISMATCH


def test_each_binding_is_checked(report: bytes, root: RootAuthority) -> None:
    assert _failure(report, root, expected_workload=workload_hash(MODEL_DIGEST, {**JOB, "epochs": 4}, "ds-1")) is Reason.WORKLOAD_MISMATCH
    assert _failure(report, root, expected_workload=workload_hash(MODEL_DIGEST, JOB, "ds-2")) is Reason.WORKLOAD_MISMATCH
    assert _failure(report, root, expected_nonce=new_nonce()) is Reason.NONCE_MISMATCH
    assert _failure(report, root, allowed_measurements={hashlib.sha256(b"trainer v2").hexdigest()}) is Reason.WRONG_MEASUREMENT
    assert _failure(report, root, allowed_measurements=set()) is Reason.WRONG_MEASUREMENT
    assert _failure(report, root, pinned_root_public_key_pem=RootAuthority.generate().public_key_pem()) is Reason.UNTRUSTED_CERTIFICATE


def test_optional_checks_can_be_left_out(report: bytes, root: RootAuthority) -> None:
    verified = _verify(report, root, expected_nonce=None, max_age=None, epsilon_recomputer=None, now=NOW + timedelta(days=3))
    assert verified.epsilon_recomputed is None


@pytest.mark.parametrize("recomputed", [EPSILON + 1e-5, EPSILON - 0.5, float("nan"), float("inf")])
def test_an_epsilon_the_accountant_cannot_reproduce_fails(report: bytes, root: RootAuthority, recomputed: float) -> None:
    assert _failure(report, root, epsilon_recomputer=FakeAccountant(recomputed)) is Reason.EPSILON_MISMATCH


def test_epsilon_tolerance_is_absolute(report: bytes, root: RootAuthority) -> None:
    assert _verify(report, root, epsilon_recomputer=FakeAccountant(EPSILON + 5e-7)).epsilon_recomputed == EPSILON + 5e-7
    assert _failure(report, root, epsilon_recomputer=FakeAccountant(EPSILON + 5e-3), epsilon_tolerance=1e-3) is Reason.EPSILON_MISMATCH


def test_an_accountant_that_raises_fails_verification(report: bytes, root: RootAuthority) -> None:
    def unknown_accountant(dp_parameters: Mapping[str, Any], accountant: str) -> float:
        raise KeyError(accountant)

    assert _failure(report, root, epsilon_recomputer=unknown_accountant) is Reason.EPSILON_MISMATCH


@pytest.mark.parametrize("now_offset", [timedelta(minutes=10, seconds=1), -timedelta(seconds=31)])
def test_a_report_outside_max_age_fails(report: bytes, root: RootAuthority, now_offset: timedelta) -> None:
    assert _failure(report, root, now=NOW + now_offset) is Reason.STALE_REPORT


def test_a_report_signed_outside_the_certificate_validity_fails(root: RootAuthority) -> None:
    key = AttestationKey.generate(root, validity=timedelta(hours=1), now=NOW - timedelta(hours=2))
    assert _failure(_sign(key), root) is Reason.CERTIFICATE_EXPIRED


def test_a_report_from_a_key_of_another_root_fails(root: RootAuthority) -> None:
    foreign = AttestationKey.generate(RootAuthority.generate(), now=NOW - timedelta(hours=1))
    assert _failure(_sign(foreign), root) is Reason.UNTRUSTED_CERTIFICATE


def test_a_changed_field_under_the_original_signature_is_a_bad_signature(report: bytes, root: RootAuthority) -> None:
    original = parse_report(report)
    for changed in (dataclasses.replace(original, epsilon_spent="0.5"), dataclasses.replace(original, dp_parameters={**DP_PARAMETERS, "steps": 30})):
        assert _failure(changed.to_bytes(), root) is Reason.BAD_SIGNATURE


def _resign(key: Ed25519PrivateKey, payload: dict) -> bytes:
    return canonical_json({"payload": payload, "signature": key.sign(_message(payload["type"], payload)).hex()})


def test_a_properly_signed_report_without_the_simulated_flag_is_refused(root: RootAuthority) -> None:
    private = Ed25519PrivateKey.generate()
    key = AttestationKey(private, root.certify(private.public_key(), subject="x", not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(hours=1)))
    payload = parse_report(_sign(key)).payload()
    for forged in ({**payload, "simulated": False}, {k: v for k, v in payload.items() if k != "simulated"}):
        data = _resign(private, forged)
        assert _failure(data, root) is Reason.NOT_SIMULATED_FLAG
        with pytest.raises(EnclaveSimError) as caught:
            parse_report(data)
        assert caught.value.reason is Reason.NOT_SIMULATED_FLAG


def test_a_quote_is_not_a_report(attestation_key: AttestationKey, root: RootAuthority) -> None:
    quote, _ = make_quote(attestation_key, MEASUREMENT, WORKLOAD, NONCE, now=NOW)
    assert _failure(quote.to_bytes(), root) is Reason.MALFORMED


@pytest.mark.parametrize(
    "overrides",
    [
        {"dp_parameters": {"noise_multiplier": 1.1}},  # a float: no canonical form
        {"epsilon_spent": -1.0},
        {"epsilon_spent": float("nan")},
        {"measurement": "00"},
        {"nonce": NONCE.upper()},
        {"dataset_commitment": "x" * 64},
        {"accountant": ""},
        {"released_files": {"../escape": b""}},
    ],
)
def test_sign_report_refuses_bad_inputs(attestation_key: AttestationKey, overrides: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        _sign(attestation_key, **overrides)


def test_sign_report_detaches_its_parameters(attestation_key: AttestationKey, root: RootAuthority) -> None:
    parameters = {"noise_multiplier": "1.1", "schedule": ["a", "b"]}
    signed = _sign(attestation_key, dp_parameters=parameters)
    parameters["schedule"].append("c")
    assert parse_report(signed).dp_parameters == {"noise_multiplier": "1.1", "schedule": ["a", "b"]}
