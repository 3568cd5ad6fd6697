"""Validate a safetensors file's header before any loader touches it.

The format is: 8-byte little-endian header length N, N bytes of JSON, then the raw tensor bytes.
A header can lie (offsets past the end, overlapping or gapped ranges, a dtype/shape that does not
match its byte range, an absurd N); every such lie is refused here, so the loader only ever sees
a file whose every byte is accounted for. Pickle and torch.save zips are recognised by their
magic and named as such. No torch import: this runs before anything else.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
MAX_RANK = 8
MAX_NAME = 512


class SafetensorsError(ValueError):
    """`not_safetensors` is true when the bytes are some other format (pickle, a zip) altogether."""

    def __init__(self, message: str, *, not_safetensors: bool = False) -> None:
        super().__init__(message)
        self.not_safetensors = not_safetensors


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsInfo:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def check_safetensors(data: bytes, *, max_header_bytes: int, max_tensors: int) -> SafetensorsInfo:
    """Validate `data` as a complete safetensors file; raises SafetensorsError naming the lie."""
    n = _header_length(data, max_header_bytes)
    header = _parse_header(bytes(data[8:8 + n]))
    metadata = _metadata(header.pop("__metadata__", {}))
    if len(header) > max_tensors:
        raise SafetensorsError(f"{len(header)} tensors; at most {max_tensors}")
    tensors = {name: _entry(name, raw) for name, raw in header.items()}
    _check_layout(tensors, len(data) - 8 - n)
    return SafetensorsInfo(tensors=tensors, metadata=metadata, data_start=8 + n)


def _header_length(data: bytes, max_header_bytes: int) -> int:
    problem = None
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    if len(data) < 8:
        problem = "shorter than the 8-byte header length"
    elif n < 2 or n > max_header_bytes or 8 + n > len(data):
        problem = f"header length {n} is absurd for a file of {len(data)} bytes (limit {max_header_bytes})"
    elif data[8:9] != b"{":
        problem = "the header is not a JSON object"
    if problem is not None:
        _refuse_other_formats(data)
        raise SafetensorsError(problem, not_safetensors=True)
    return n


def _refuse_other_formats(data: bytes) -> None:
    """Name the format of a file that is not safetensors (only called once parsing has failed)."""
    if data[:1] == b"\x80" or data[:2] in (b"(d", b"}q", b"(l"):
        raise SafetensorsError("this is a Python pickle, not safetensors; pickle is never loaded", not_safetensors=True)
    if data[:4] == b"PK\x03\x04":
        raise SafetensorsError("this is a zip (torch.save's format, which holds a pickle), not safetensors",
                               not_safetensors=True)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsError(f"header names {key!r} twice")
        out[key] = value
    return out


def _parse_header(raw: bytes) -> dict[str, Any]:
    text = raw.rstrip(b" ")
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SafetensorsError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    return header


def _metadata(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(name: str, raw: Any) -> TensorEntry:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise SafetensorsError(f"bad tensor name {name[:80]!r}")
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{name}: entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:  # a list is unhashable (found by fuzzing)
        raise SafetensorsError(f"{name}: dtype {str(dtype)[:20]!r} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"{name}: shape must be at most {MAX_RANK} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
        raise SafetensorsError(f"{name}: data_offsets must be two non-negative integers")
    entry = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
    if entry.end < entry.begin or entry.end - entry.begin != entry.numel * DTYPE_BYTES[dtype]:
        raise SafetensorsError(f"{name}: {dtype}{list(shape)} needs {entry.numel * DTYPE_BYTES[dtype]} bytes, "
                               f"data_offsets give {entry.end - entry.begin}")
    return entry


def _check_layout(tensors: dict[str, TensorEntry], data_len: int) -> None:
    """Ranges must tile the data section exactly: no overlap, no gap, nothing past the end."""
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < position:
            raise SafetensorsError(f"{name}: byte range overlaps another tensor")
        if entry.begin > position:
            raise SafetensorsError(f"{name}: unexplained bytes before this tensor")
        if entry.end > data_len:
            raise SafetensorsError(f"{name}: data_offsets run past the end of the file")
        position = entry.end
    if position != data_len:
        raise SafetensorsError(f"{data_len - position} trailing bytes not covered by any tensor")
