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
        self._part = b""  # the current chunk, and how far into it the reader is
        self._pos = 0
        self._digest = hashlib.sha256()
        self._trailer: Trailer | None = None
        self.bytes_received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        piece = self._take(len(target)) if self._fill() else b""
        target[: len(piece)] = piece
        return len(piece)

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes, spanning chunks; a whole chunk comes back as is, without a copy.

        pyarrow reads its CSV blocks through here, so the per-chunk copy of readinto would show.
        """
        if size is None or size < 0:
            return self.readall()
        pieces = self.read_pieces(size)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_pieces(self, size: int) -> list[bytes]:
        """Up to `size` bytes as the chunks they arrived in (no join): for a reader that joins
        them with bytes of its own anyway."""
        pieces, wanted = [], size
        while wanted > 0 and self._fill():
            pieces.append(self._take(wanted))
            wanted -= len(pieces[-1])
        return pieces

    def _fill(self) -> bool:
        """Makes a chunk with unread bytes current; False at the trailer."""
        while self._pos == len(self._part) and self._trailer is None:
            self._next_part()
        return self._pos < len(self._part)

    def _take(self, size: int) -> bytes:
        part, start = self._part, self._pos
        self._pos = min(start + size, len(part))
        return part if start == 0 and self._pos == len(part) else part[start : self._pos]

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
        self._part, self._pos = part, 0

    def drain(self) -> None:
        """Reads to the trailer (a reader may stop early, e.g. Parquet's footer-first access)."""
        while self._trailer is None:
            self._part, self._pos = b"", 0
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
        if next(self._parts, None) is not None:  # a chunk after the trailer is not part of the file
            raise nothing_after_trailer()
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


def nothing_after_trailer() -> CleanroomError:
    return bad_request("the trailer must be the upload's last message; nothing was stored",
                       FieldViolation("trailer", "must be the last message of the stream"))
