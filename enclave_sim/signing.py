"""Signed statements: canonical JSON `{"payload": {...}, "signature": hex}` with Ed25519.

Every payload names its `type` and carries `simulated: true`. The signed message is a domain tag,
the type and the canonical payload, so that a signature made for one kind of statement (say a
certificate) can never be presented as another (a quote or a report).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave_sim._schema import FieldReader, malformed
from enclave_sim.canonical import canonical_json, parse_canonical
from enclave_sim.errors import EnclaveSimError, Reason

_SIGNATURE_DOMAIN = b"cleanroom-enclave-sim/signature/v1\x00"
SIGNATURE_BYTES = 64


def _message(statement_type: str, payload: Mapping[str, Any]) -> bytes:
    return _SIGNATURE_DOMAIN + statement_type.encode("ascii") + b"\x00" + canonical_json(payload)  # as signed_envelope_bytes


def sign_payload(private_key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> str:
    """Hex signature over a payload that already holds its `type` and `simulated: true`."""
    if payload.get("simulated") is not True:
        raise ValueError("every simulated statement must say simulated: true")
    return private_key.sign(_message(payload["type"], payload)).hex()


def signature_valid(public_key: Ed25519PublicKey, payload: Mapping[str, Any], signature: str) -> bool:
    try:
        public_key.verify(bytes.fromhex(signature), _message(payload["type"], payload))
    except (InvalidSignature, ValueError):
        return False
    return True


def envelope(payload: Mapping[str, Any], signature: str) -> dict[str, Any]:
    return {"payload": dict(payload), "signature": signature}


def open_envelope(obj: Any, statement_type: str) -> tuple[dict[str, Any], str]:
    """Split an envelope into (payload, signature) after checking its shape, type and flag.

    The signature is NOT checked here: the caller knows which key must have made it.
    """
    reader = FieldReader(obj, {"payload", "signature"}, statement_type)
    signature = reader.hex("signature", SIGNATURE_BYTES)
    payload = reader.mapping("payload")
    if payload.get("type") != statement_type:
        raise malformed(f"expected a {statement_type}, got type {payload.get('type')!r}")
    if payload.get("simulated") is not True:
        raise EnclaveSimError(Reason.NOT_SIMULATED_FLAG, f"{statement_type} does not say simulated: true")
    return payload, signature


def parse_envelope_bytes(data: bytes, statement_type: str) -> tuple[dict[str, Any], str]:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("a serialised statement is bytes")
    return open_envelope(parse_canonical(bytes(data)), statement_type)


def envelope_bytes(payload: Mapping[str, Any], signature: str) -> bytes:
    return canonical_json(envelope(payload, signature))


def signed_envelope_bytes(private_key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> bytes:
    """`envelope_bytes(payload, sign_payload(private_key, payload))`, serialising the payload once:
    in canonical form the envelope is exactly `{"payload":<payload>,"signature":"<hex>"}`."""
    if payload.get("simulated") is not True:
        raise ValueError("every simulated statement must say simulated: true")
    body = canonical_json(payload)
    signature = private_key.sign(_SIGNATURE_DOMAIN + payload["type"].encode("ascii") + b"\x00" + body).hex()
    return b'{"payload":' + body + b',"signature":"' + signature.encode("ascii") + b'"}'

