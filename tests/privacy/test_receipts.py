"""Privacy receipts end to end: the service's key broker and the SDK's verification.

Jobs will produce these reports; here the service's own attestation key signs one exactly as the
phase-B launcher does, so the chain, the broker and every SDK check run for real.
"""

from __future__ import annotations

import pytest

import enclave_sim
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk.verify import package_digest, recompute_epsilon, verify_release
from tests.ledger_fixtures import build_world
from tests.paths import MODEL_PACKAGES

MODELS = MODEL_PACKAGES
PARAMETERS = {"noise_multiplier": "1.1", "sample_rate": "0.01", "steps": 300, "delta": "0.00001", "clipping_norm": "1"}
JOB = {"kind": "training", "epochs": 3, "learning_rate": "0.05", "target_epsilon": "1"}


@pytest.fixture
def signed(running):
    enclave = running.app.enclave
    workload = enclave_sim.workload_hash(package_digest(MODELS / "mlp"), JOB, "d123")
    files = {"weights.safetensors": b"\x00weights", "metrics.json": b'{"accuracy": 0.93}'}
    epsilon = recompute_epsilon(PARAMETERS, "prv")
    report = enclave_sim.sign_report(
        enclave.attestation_key, measurement=enclave.measurement, workload=workload, dp_parameters=PARAMETERS,
        epsilon_spent=epsilon, accountant="prv", dataset_commitment="ab" * 32, released_files=files, nonce="cd" * 32,
    )
    return running, report, files


def _verify(running, report: bytes, files, *, package: str = "mlp", root: bytes | None = None, allowed=None):
    enclave = running.app.enclave
    return verify_release(
        report, files=files, package_directory=MODELS / package, job_parameters=JOB, dataset_id="d123",
        pinned_root_pem=root or enclave.root.public_key_pem(), allowed_measurements=allowed or [enclave.measurement],
        expected_nonce="cd" * 32,
    )


def _refused(call, reason: enclave_sim.Reason) -> None:
    with pytest.raises(enclave_sim.VerificationError) as err:
        call()
    assert err.value.reason is reason, err.value


def test_a_genuine_receipt_verifies(signed) -> None:
    running, report, files = signed
    verified = _verify(running, report, files)
    assert verified.report.simulated is True
    assert verified.epsilon_recomputed == pytest.approx(float(verified.report.epsilon_spent))


def test_flipped_bytes_and_wrong_inputs_are_refused(signed) -> None:
    running, report, files = signed
    tampered = bytearray(report)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(enclave_sim.VerificationError):
        _verify(running, bytes(tampered), files)
    _refused(lambda: _verify(running, report, {**files, "weights.safetensors": b"\x01weights"}), enclave_sim.Reason.RELEASED_FILES_MISMATCH)
    _refused(lambda: _verify(running, report, {"metrics.json": files["metrics.json"]}), enclave_sim.Reason.RELEASED_FILES_MISMATCH)
    _refused(lambda: _verify(running, report, files, package="cnn"), enclave_sim.Reason.WORKLOAD_MISMATCH)
    _refused(lambda: _verify(running, report, files, allowed=["0" * 64]), enclave_sim.Reason.WRONG_MEASUREMENT)
    stranger = enclave_sim.RootAuthority.generate().public_key_pem()
    _refused(lambda: _verify(running, report, files, root=stranger), enclave_sim.Reason.UNTRUSTED_CERTIFICATE)


def test_a_stated_epsilon_that_does_not_match_its_parameters_is_refused(running) -> None:
    enclave = running.app.enclave
    workload = enclave_sim.workload_hash(package_digest(MODELS / "mlp"), JOB, "d123")
    understated = enclave_sim.sign_report(
        enclave.attestation_key, measurement=enclave.measurement, workload=workload, dp_parameters=PARAMETERS,
        epsilon_spent="0.1", accountant="prv", dataset_commitment="ab" * 32, released_files={"m": b"1"}, nonce="cd" * 32,
    )
    _refused(lambda: _verify(running, understated, {"m": b"1"}), enclave_sim.Reason.EPSILON_MISMATCH)


def test_the_service_broker_needs_measurement_reservation_and_a_fresh_nonce(running) -> None:
    app = running.app
    world = build_world(app.db, patients=100)
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(5, 1e-5), "total")
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot")
    workload = enclave_sim.workload_hash(package_digest(MODELS / "mlp"), JOB, world.dataset_id)
    quote, ephemeral = enclave_sim.make_quote(app.enclave.attestation_key, app.enclave.measurement, workload)
    dataset_key, context = b"k" * 32, world.dataset_id.encode()
    with pytest.raises(enclave_sim.AttestationError) as err:
        app.enclave.broker.release_key(quote.to_bytes(), dataset_key, context=context)
    assert err.value.reason is enclave_sim.Reason.NO_RESERVATION
    request = SpendRequest(world.dataset_id, world.makers[0].id, "training", "jobs/x", Privacy.cost(1, 1e-6), workload=workload)
    app.ledger.reserve(request, actor_id=world.officer.id)
    wrapped = app.enclave.broker.release_key(quote.to_bytes(), dataset_key, context=context)
    assert enclave_sim.unwrap_in_enclave(wrapped, ephemeral, quote, context=context) == dataset_key
    with pytest.raises(enclave_sim.AttestationError) as err:
        app.enclave.broker.release_key(quote.to_bytes(), dataset_key, context=context)
    assert err.value.reason is enclave_sim.Reason.REPLAYED_NONCE
    impostor, _ = enclave_sim.make_quote(app.enclave.attestation_key, "0" * 64, workload)
    with pytest.raises(enclave_sim.AttestationError) as err:
        app.enclave.broker.release_key(impostor.to_bytes(), dataset_key, context=context)
    assert err.value.reason is enclave_sim.Reason.WRONG_MEASUREMENT
    decisions = {tuple(s.labels.values()): s.value for m in app.metrics.registry.collect() if m.name == "cleanroom_key_broker_decisions"
                 for s in m.samples if s.name.endswith("_total")}
    assert decisions[("released", "ok")] == 1 and decisions[("refused", "REPLAYED_NONCE")] == 1
    assert app.audit.verify().ok
