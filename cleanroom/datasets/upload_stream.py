"""A file-like view of an upload's chunks, with the size limit and the trailer check."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request

MAX_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Trailer:
    size_bytes: int
    sha256: str


class UploadStream(io.RawIOBase):
    """Reads the chunks of one upload as a byte stream.

    `parts` yields `bytes` chunks and finally one Trailer. The stream enforces the chunk and total
    size limits while reading, and `verify_trailer()` checks, once the reader is done, that the
    client really reached the end of its file: a stream cut off half-way has no matching trailer.
    """

    def __init__(self, parts: Iterator[bytes | Trailer], *, max_bytes: int) -> None:
        super().__init__()
        self._parts = parts
        self._max_bytes = max_bytes
        self._buffer = memoryview(b"")
        self._digest = hashlib.sha256()
        self._trailer: Trailer | None = None
        self.bytes_received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and self._trailer is None:
            self._next_part()
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def _next_part(self) -> None:
        part = next(self._parts, None)
        if part is None:
            raise CleanroomError(ErrorCode.UPLOAD_INCOMPLETE, "the upload ended before its trailer; nothing was stored")
        if isinstance(part, Trailer):
            self._trailer = part
            return
        if len(part) > MAX_CHUNK_BYTES:
            raise bad_request("chunks must be at most 1 MiB", FieldViolation("chunk", "larger than 1 MiB"))
        self.bytes_received += len(part)
        if self.bytes_received > self._max_bytes:
            raise too_large(self._max_bytes)
        self._digest.update(part)
        self._buffer = memoryview(part)

    def drain(self) -> None:
        """Reads to the trailer (a reader may stop early, e.g. Parquet's footer-first access)."""
        while self._trailer is None:
            self._buffer = memoryview(b"")
            self._next_part()

    def explain(self, error: CleanroomError) -> CleanroomError:
        """A parse error in a file that arrived incomplete is reported as the incomplete upload it is."""
        if self._trailer is not None:
            try:
                self.verify_trailer()
            except CleanroomError as incomplete:
                return incomplete
        return error

    def verify_trailer(self) -> None:
        self.drain()
        assert self._trailer is not None
        if self._trailer.size_bytes != self.bytes_received or self._trailer.sha256.lower() != self._digest.hexdigest():
            raise CleanroomError(
                ErrorCode.UPLOAD_INCOMPLETE,
                "the bytes received do not match the trailer's size and SHA-256; nothing was stored",
            )


def too_large(max_bytes: int) -> CleanroomError:
    return CleanroomError(
        ErrorCode.UPLOAD_TOO_LARGE,
        f"the file is larger than this server accepts ({max_bytes} bytes)",
        violations=[FieldViolation("metadata.size_bytes", f"at most {max_bytes} bytes")],
    )
