"""Result reports: the simulated enclave's signed account of what it released and at what cost.

A report binds the measurement, the workload, the DP parameters (an opaque mapping to this module:
noise multiplier, sample rate, steps, clipping norm, delta...), the epsilon spent and the
accountant that computed it, a commitment to the dataset, the sha256 of every released file, the
requester's nonce and the time. It embeds the attestation certificate, so it verifies on its own
against the pinned root (see verify.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from enclave_sim._schema import FieldReader, check_relative_path
from enclave_sim.canonical import decimal_text, format_time, is_hex, plain_copy, sha256_hex, utc_now
from enclave_sim.keys import AttestationCertificate, AttestationKey
from enclave_sim.quote import NONCE_BYTES
from enclave_sim.signing import envelope_bytes, parse_envelope_bytes, signature_valid

REPORT_TYPE = "result-report"
_REPORT_FIELDS = {
    "type", "simulated", "measurement", "workload", "dp_parameters", "epsilon_spent", "accountant",
    "dataset_commitment", "released_files", "nonce", "issued_at", "certificate",
}  # fmt: skip


@dataclass(frozen=True)
class ResultReport:
    measurement: str
    workload: str
    dp_parameters: dict[str, Any]  # canonical-JSON values: fractions as decimal strings
    epsilon_spent: str  # decimal string, e.g. "0.98"
    accountant: str  # e.g. "prv"
    dataset_commitment: str  # sha256 hex
    released_files: dict[str, str]  # relative name -> sha256 hex of its bytes
    nonce: str  # 32 bytes hex, the requester's
    issued_at: datetime
    certificate: AttestationCertificate
    signature: str
    simulated: Literal[True] = field(default=True)

    def payload(self) -> dict[str, Any]:
        return {
            "type": REPORT_TYPE,
            "simulated": True,
            "measurement": self.measurement,
            "workload": self.workload,
            "dp_parameters": self.dp_parameters,
            "epsilon_spent": self.epsilon_spent,
            "accountant": self.accountant,
            "dataset_commitment": self.dataset_commitment,
            "released_files": self.released_files,
            "nonce": self.nonce,
            "issued_at": format_time(self.issued_at),
            "certificate": self.certificate.to_json(),
        }

    def to_bytes(self) -> bytes:
        return envelope_bytes(self.payload(), self.signature)

    def signed_by_certified_key(self) -> bool:
        return signature_valid(self.certificate.attestation_public_key(), self.payload(), self.signature)


def released_file_digests(files: Mapping[str, bytes]) -> dict[str, str]:
    """Relative name -> sha256 hex, sorted by name."""
    return {check_relative_path(name): sha256_hex(bytes(files[name])) for name in sorted(files)}


def _check_hex_fields(**fields: str) -> None:
    for name, value in fields.items():  # all four are 32 bytes: sha256 digests and the nonce
        if not is_hex(value, 32):
            raise ValueError(f"{name} must be 32 bytes of lower-case hex")


def sign_report(
    attestation_key: AttestationKey,
    *,
    measurement: str,
    workload: str,
    dp_parameters: Mapping[str, Any],
    epsilon_spent: str | Decimal | float,
    accountant: str,
    dataset_commitment: str,
    released_files: Mapping[str, bytes],
    nonce: str,
    issued_at: datetime | None = None,
) -> bytes:
    """The serialised, signed report. dp_parameters must be canonical JSON (no floats: decimal_text())."""
    _check_hex_fields(measurement=measurement, workload=workload, dataset_commitment=dataset_commitment, nonce=nonce)
    if not isinstance(accountant, str) or not accountant:
        raise ValueError("accountant must name the privacy accountant, e.g. 'prv'")
    unsigned = ResultReport(
        measurement=measurement,
        workload=workload,
        dp_parameters=plain_copy(dict(dp_parameters)),  # a plain, detached copy
        epsilon_spent=decimal_text(epsilon_spent),
        accountant=accountant,
        dataset_commitment=dataset_commitment,
        released_files=released_file_digests(released_files),
        nonce=nonce,
        issued_at=(issued_at or utc_now()).replace(microsecond=0),
        certificate=attestation_key.certificate,
        signature="",
    )
    return attestation_key.signed_envelope(unsigned.payload())


def parse_report(data: bytes) -> ResultReport:
    """Parse strictly (MALFORMED, NOT_SIMULATED_FLAG); trusts nothing, checks no signature."""
    payload, signature = parse_envelope_bytes(data, REPORT_TYPE)
    reader = FieldReader(payload, _REPORT_FIELDS, "report")
    return ResultReport(
        measurement=reader.hex("measurement", 32),
        workload=reader.hex("workload", 32),
        dp_parameters=reader.mapping("dp_parameters"),
        epsilon_spent=reader.decimal("epsilon_spent"),
        accountant=reader.text("accountant"),
        dataset_commitment=reader.hex("dataset_commitment", 32),
        released_files=reader.digest_map("released_files"),
        nonce=reader.hex("nonce", NONCE_BYTES),
        issued_at=reader.time("issued_at"),
        certificate=AttestationCertificate.from_json(reader.raw("certificate")),
        signature=signature,
    )
