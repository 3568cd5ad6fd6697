"""Wrapping a dataset key to a quote's ephemeral X25519 key (ECDH + HKDF-SHA256 + AES-256-GCM).

The broker makes its own one-time X25519 key, derives a wrapping key from the shared secret with
HKDF whose `info` is the whole transcript (measurement, workload, quote nonce, both public keys,
the caller's context), and seals the dataset key with AES-256-GCM under that transcript as
associated data. The wrapped key therefore opens only with the quote's ephemeral private key, for
that very quote and context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_sim.canonical import canonical_json
from enclave_sim.errors import EnclaveSimError, Reason
from enclave_sim.quote import Quote, raw_x25519_public_key

WRAP_VERSION = 1
_TRANSCRIPT_DOMAIN = b"cleanroom-enclave-sim/key-wrap/v1\x00"
_GCM_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16
_HEADER_BYTES = 1 + 32 + _GCM_NONCE_BYTES


@dataclass(frozen=True)
class WrappedForEnclave:
    broker_public_key: bytes  # raw X25519, 32 bytes, used once
    nonce: bytes  # AES-GCM nonce, 12 bytes
    ciphertext: bytes  # the dataset key followed by the 16-byte GCM tag

    def to_bytes(self) -> bytes:
        return bytes([WRAP_VERSION]) + self.broker_public_key + self.nonce + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedForEnclave:
        if len(data) <= _HEADER_BYTES + _GCM_TAG_BYTES or data[0] != WRAP_VERSION:
            raise EnclaveSimError(Reason.MALFORMED, "not a wrapped key of a known version")
        return cls(broker_public_key=data[1:33], nonce=data[33:_HEADER_BYTES], ciphertext=data[_HEADER_BYTES:])


def _transcript(quote: Quote, broker_public_key: bytes, context: bytes) -> bytes:
    statement = {
        "measurement": quote.measurement,
        "workload": quote.workload,
        "quote_nonce": quote.nonce,
        "enclave_public_key": quote.ephemeral_public_key,
        "broker_public_key": broker_public_key.hex(),
        "context": bytes(context).hex(),
    }
    return _TRANSCRIPT_DOMAIN + canonical_json(statement)


def _wrapping_key(private_key: X25519PrivateKey, peer: X25519PublicKey, transcript: bytes) -> bytes:
    try:
        shared_secret = private_key.exchange(peer)
    except ValueError:  # a low-order peer key gives an all-zero secret, which OpenSSL refuses
        raise EnclaveSimError(Reason.MALFORMED, "ephemeral public key is not usable") from None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=transcript).derive(shared_secret)


def wrap_for_enclave(dataset_key: bytes, quote: Quote, *, context: bytes) -> WrappedForEnclave:
    """Seal `dataset_key` so that only the holder of the quote's ephemeral private key can open it."""
    if not dataset_key:
        raise ValueError("nothing to wrap")
    broker_key = X25519PrivateKey.generate()
    broker_public = raw_x25519_public_key(broker_key.public_key())
    transcript = _transcript(quote, broker_public, context)
    key = _wrapping_key(broker_key, quote.enclave_public_key(), transcript)
    nonce = os.urandom(_GCM_NONCE_BYTES)
    return WrappedForEnclave(broker_public, nonce, AESGCM(key).encrypt(nonce, bytes(dataset_key), transcript))


def unwrap_in_enclave(wrapped: WrappedForEnclave, ephemeral_private_key: X25519PrivateKey, quote: Quote, *, context: bytes) -> bytes:
    """The worker side: recover the dataset key, or raise UNWRAP_FAILED (wrong key, quote or context)."""
    transcript = _transcript(quote, wrapped.broker_public_key, context)
    try:
        broker_public = X25519PublicKey.from_public_bytes(wrapped.broker_public_key)
        key = _wrapping_key(ephemeral_private_key, broker_public, transcript)
        return AESGCM(key).decrypt(wrapped.nonce, wrapped.ciphertext, transcript)
    except (InvalidTag, ValueError, EnclaveSimError):
        raise EnclaveSimError(Reason.UNWRAP_FAILED, "wrapped key does not open with this key, quote and context") from None
