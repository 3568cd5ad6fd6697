"""Envelope encryption at rest: per-blob data keys, KEK wrapping and a chunked AES-GCM stream.

    cleanroom.crypto.envelope  data keys, their KEK wrapping, KeyProviders (the KEK file)
    cleanroom.crypto.sealed    the sealed chunk stream (SealedWriter / SealedReader)

Each blob gets its own 256-bit data key, wrapped (AES-256-GCM) under a KEK held by a KeyProvider
with the owner's id bound as associated data; blob contents are sealed in chunks. Callers import
this package (`from cleanroom import crypto`); it re-exports both modules.
"""

from __future__ import annotations

from cleanroom.crypto.envelope import (
    DATA_KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    KeyFileError,
    KeyProvider,
    LocalKeyFileProvider,
    WrappedKey,
    new_data_key,
    rewrap,
    unwrap_with_kek,
    wrap_with_kek,
)
from cleanroom.crypto.sealed import (
    CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    SealedReader,
    SealedWriter,
    _ArrowReads,
    _NoDigest,
    _PipelinedSha256,
    as_arrow_file,
    open_bytes,
    seal_bytes,
)

__all__ = [
    "DATA_KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "KeyFileError",
    "KeyProvider",
    "LocalKeyFileProvider",
    "WrappedKey",
    "new_data_key",
    "rewrap",
    "unwrap_with_kek",
    "wrap_with_kek",
    "CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "SealedReader",
    "SealedWriter",
    "_ArrowReads",
    "_NoDigest",
    "_PipelinedSha256",
    "as_arrow_file",
    "open_bytes",
    "seal_bytes",
]
