"""A site's dataset key, unwrapped inside the sandbox from what the key broker released for this run.

Per site, the runner's stdin carries the dataset key wrapped to this run's ephemeral X25519 key, that
ephemeral private key, and the quote the wrap was bound to (hex each). Tables (phase_b) and streams
(stream_source) both open their blobs with the key this returns; it lives in memory only.
"""

from __future__ import annotations

from collections.abc import Mapping


def unwrap_site_key(secrets: Mapping[str, str], dataset_id: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    import enclave_sim

    quote = enclave_sim.Quote.from_bytes(bytes.fromhex(secrets["quote"]))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(secrets["ephemeral_private_key"]))
    wrapped = enclave_sim.WrappedForEnclave.from_bytes(bytes.fromhex(secrets["wrapped_key"]))
    return enclave_sim.unwrap_in_enclave(wrapped, ephemeral, quote, context=dataset_id.encode("ascii"))
