"""Tampering with what the server stores, for the tests that show verification catching it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cleanroom.server.app import App
from cleanroom.storage import job_repo
from cleanroom.storage.blobs import BlobStore


@contextmanager
def flipped_artifact(app: App, job_id: str, name: str) -> Iterator[None]:
    """One bit flipped in the middle of a released job's stored artefact blob, put back afterwards."""
    with app.db.read() as session:
        listing, _ = job_repo.artifacts(session, job_id)
    blob = BlobStore(app.config.blob_dir).path_of(next(a["blob"] for a in listing if a["name"] == name))
    original = blob.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    blob.write_bytes(bytes(flipped))
    try:
        yield
    finally:
        blob.write_bytes(original)
