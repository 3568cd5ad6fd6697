"""Client-streamed files (datasets, model packages): metadata, chunks, then a trailer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from cleanroom.datasets.upload_stream import Trailer, nothing_after_trailer
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request


def upload_parts(requests: Iterator[Any]) -> Iterator[bytes | Trailer]:
    try:
        yield from _parts(requests)
    except grpc.RpcError:  # the client went away half-way
        raise CleanroomError(ErrorCode.UPLOAD_INCOMPLETE, "the upload was cut off; nothing was stored") from None


def _parts(requests: Iterator[Any]) -> Iterator[bytes | Trailer]:
    for message in requests:
        kind = message.WhichOneof("payload")
        if kind == "chunk":
            yield message.chunk
        elif kind == "trailer":
            yield Trailer(message.trailer.size_bytes, message.trailer.sha256)
            break
        else:
            raise bad_request("after the metadata, only chunks and one trailer may follow", FieldViolation("payload", "unexpected"))
    # Resumed only when the reader asks past the trailer: the stream must end there.
    for _ in requests:
        raise nothing_after_trailer()

