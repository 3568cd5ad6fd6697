"""Quotes: the simulated enclave's signed claim "this code, for this workload, with this key".

A quote binds the measurement, the workload hash, a fresh 32-byte nonce and an ephemeral X25519
public key; the key broker wraps the dataset key to that ephemeral key, so only the process that
made the quote (and holds the private half) can open it.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from enclave_sim._schema import FieldReader
from enclave_sim.canonical import format_time, is_hex, utc_now
from enclave_sim.keys import AttestationCertificate, AttestationKey
from enclave_sim.signing import envelope_bytes, parse_envelope_bytes, signature_valid

QUOTE_TYPE = "attestation-quote"
NONCE_BYTES = 32
_QUOTE_FIELDS = {"type", "simulated", "measurement", "workload", "nonce", "ephemeral_public_key", "certificate", "issued_at"}


def new_nonce() -> str:
    """32 random bytes, hex: the format of every nonce in quotes and reports."""
    return secrets.token_hex(NONCE_BYTES)


def raw_x25519_public_key(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Quote:
    measurement: str  # sha256 hex, see measurement.measure
    workload: str  # sha256 hex, see measurement.workload_hash
    nonce: str  # 32 bytes hex
    ephemeral_public_key: str  # raw X25519 public key, hex
    certificate: AttestationCertificate
    issued_at: datetime
    signature: str
    simulated: Literal[True] = field(default=True)

    def payload(self) -> dict[str, Any]:
        return {
            "type": QUOTE_TYPE,
            "simulated": True,
            "measurement": self.measurement,
            "workload": self.workload,
            "nonce": self.nonce,
            "ephemeral_public_key": self.ephemeral_public_key,
            "certificate": self.certificate.to_json(),
            "issued_at": format_time(self.issued_at),
        }

    def to_bytes(self) -> bytes:
        return envelope_bytes(self.payload(), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        """Parse strictly (MALFORMED, NOT_SIMULATED_FLAG); trusts nothing, checks no signature."""
        payload, signature = parse_envelope_bytes(data, QUOTE_TYPE)
        reader = FieldReader(payload, _QUOTE_FIELDS, "quote")
        return cls(
            measurement=reader.hex("measurement", 32),
            workload=reader.hex("workload", 32),
            nonce=reader.hex("nonce", NONCE_BYTES),
            ephemeral_public_key=reader.hex("ephemeral_public_key", 32),
            certificate=AttestationCertificate.from_json(reader.raw("certificate")),
            issued_at=reader.time("issued_at"),
            signature=signature,
        )

    def signed_by_certified_key(self) -> bool:
        """Whether the key named in the embedded certificate signed this quote (trust the certificate separately)."""
        return signature_valid(self.certificate.attestation_public_key(), self.payload(), self.signature)

    def enclave_public_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(bytes.fromhex(self.ephemeral_public_key))


def make_quote(
    attestation_key: AttestationKey, measurement: str, workload: str, nonce: str | None = None, *, now: datetime | None = None
) -> tuple[Quote, X25519PrivateKey]:
    """A signed quote and the ephemeral private key that must stay inside the (simulated) enclave."""
    nonce = nonce if nonce is not None else new_nonce()
    for name, value, nbytes in (("measurement", measurement, 32), ("workload", workload, 32), ("nonce", nonce, NONCE_BYTES)):
        if not is_hex(value, nbytes):
            raise ValueError(f"{name} must be {nbytes} bytes of lower-case hex")
    ephemeral = X25519PrivateKey.generate()
    unsigned = Quote(
        measurement=measurement,
        workload=workload,
        nonce=nonce,
        ephemeral_public_key=raw_x25519_public_key(ephemeral.public_key()).hex(),
        certificate=attestation_key.certificate,
        issued_at=(now or utc_now()).replace(microsecond=0),
        signature="",
    )
    return dataclasses.replace(unsigned, signature=attestation_key.sign(unsigned.payload())), ephemeral
