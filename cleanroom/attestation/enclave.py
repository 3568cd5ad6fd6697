"""The service's side of the (simulated) enclave: keys, the measurement, the trust bundle, the broker.

Everything here is a SIMULATION (see enclave_sim): the root key and the launcher's attestation key
are files in the state directory, so whoever runs the host could forge quotes. It gives every
result a verifiable origin against a substituted trainer, replay and key release without a
reservation; a real TEE would root the attestation key in hardware.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError as DbIntegrityError

import enclave_sim
from cleanroom.observability.metrics import Metrics
from cleanroom.privacy.ledger import Ledger
from cleanroom.sandbox.base import SandboxPolicy
from cleanroom.storage import audit_repo, clock
from cleanroom.storage.db import Database
from cleanroom.storage.tables import UsedNonceRow

ROOT = Path(__file__).resolve().parents[2]
# The code that runs where data is decrypted: its bytes are part of the measurement.
MEASURED_PACKAGES = ("cleanroom/trainer", "cleanroom/statistics/engine", "cleanroom/sandbox", "cleanroom/worker")


def trainer_code() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for package in MEASURED_PACKAGES:
        directory = ROOT / package
        if directory.is_dir():
            files.update({f"{package}/{name}": data for name, data in enclave_sim.measure_tree(directory).items()})
    return files


def root_directory(state_dir: Path) -> Path:
    """Where the server keeps the simulated root's private key (`cleanroom trust export` reads it)."""
    return state_dir / "enclave" / "root"


def locked_dependencies() -> dict[str, str]:
    return enclave_sim.parse_locked_requirements((ROOT / "requirements.txt").read_text())


def measurement_for(policy: SandboxPolicy) -> str:
    limits = {k: enclave_sim.decimal_text(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(policy).items()}
    return enclave_sim.measure(trainer_code(), locked_dependencies(), limits)


class DatabaseNonceStore:
    """A nonce is honoured once, ever: the primary key makes the claim atomic on every backend."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, nonce: str) -> bool:
        try:
            with self._db.transaction() as session:
                session.add(UsedNonceRow(nonce=nonce, used_at=clock.now()))
        except DbIntegrityError:
            return False
        return True


@dataclass(frozen=True)
class TrustBundle:
    root_public_key_pem: str
    root_fingerprint: str
    allowed_measurements: tuple[str, ...]
    simulated: bool = True


class Enclave:
    def __init__(self, state_dir: Path, db: Database, ledger: Ledger, metrics: Metrics, policy: SandboxPolicy) -> None:
        self.root = enclave_sim.RootAuthority.load_or_create(root_directory(state_dir))
        self.attestation_key = enclave_sim.AttestationKey.load_or_create(state_dir / "enclave" / "launcher", self.root)
        self.policy = policy
        self.measurement = measurement_for(policy)
        self._db = db
        self._metrics = metrics
        self.broker = enclave_sim.KeyBroker(
            self.root.public_key,
            {self.measurement},
            ledger.has_open_reservation,
            DatabaseNonceStore(db),
            on_decision=self._on_decision,
        )

    def trust_bundle(self) -> TrustBundle:
        return TrustBundle(self.root.public_key_pem().decode("ascii"), self.root.fingerprint, (self.measurement,))

    def release_to_sandbox(self, workload: str, dataset_id: str, dataset_key: bytes) -> dict[str, str]:
        """Quote `workload`, have the broker wrap the key to the quote's ephemeral key, and return
        what the sandbox needs on stdin (hex) plus the quote's nonce. Raises AttestationError."""
        from cryptography.hazmat.primitives import serialization

        quote, ephemeral = enclave_sim.make_quote(self.attestation_key, self.measurement, workload)
        wrapped = self.broker.release_key(quote.to_bytes(), dataset_key, context=dataset_id.encode("ascii"))
        raw = ephemeral.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return {"quote": quote.to_bytes().hex(), "ephemeral_private_key": raw.hex(), "wrapped_key": wrapped.to_bytes().hex(),
                "nonce": quote.nonce}

    def _on_decision(self, decision: enclave_sim.BrokerDecision) -> None:
        outcome = "released" if decision.released else "refused"
        self._metrics.broker_decisions.labels(outcome, str(decision.reason or "ok")).inc()
        with self._db.transaction() as session:
            audit_repo.append(session, actor="system", action=f"broker.{outcome}", target=f"workloads/{decision.workload or 'unknown'}",
                              details={"reason": str(decision.reason or ""), "measurement": decision.measurement or ""})
