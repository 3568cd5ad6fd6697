"""A stream's reading times, parsed batch by batch to int64 epoch microseconds.

Accepted, one form for the whole TIME column: ISO 8601 date-times (`2024-03-01T08:00:00`, a space
for the `T`, optional seconds and fraction) all carrying the same UTC offset (`Z`, `+09:00`,
`+0900`) or all carrying none (taken as UTC); whole epoch seconds (text or integers); or a Parquet
timestamp column (its zone on the type, or none: UTC). Microseconds keep sub-second readings apart
for the order check; intake stores whole seconds after shifting and coarsening.

Errors name the TIME column and a row, never a value or an offset (an offset is data too).
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.datasets.typed import column_field
from cleanroom.domain.errors import CleanroomError, FieldViolation, bad_request

MICROS = 1_000_000
# Readings from 1900 to 2200: anything else is a mistake (epoch milliseconds, most often).
MIN_SECONDS = -2_208_988_800
MAX_SECONDS = 7_258_118_400
MAX_OFFSET_MINUTES = 14 * 60
_ZONE = r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)$"
_ZONE_TAIL = re.compile(_ZONE)
_ISO = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?" + _ZONE.replace("$", "?$")
_EPOCH = r"^-?[0-9]{1,18}$"  # int64; the range check then names milliseconds
NAIVE = "naive"  # ISO text without an offset: UTC
EPOCH = "epoch"  # whole epoch seconds


def _int(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int64())


class TimeParser:
    """Parses one upload's TIME column, batch by batch, holding the whole column to one form and
    one UTC offset."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.zone: str | None = None  # NAIVE, EPOCH, "+09:00", or a Parquet type's zone name

    @property
    def time_zone(self) -> str:
        """As the intake report says it: "UTC", "+09:00", a Parquet zone name; "" for epoch seconds."""
        if self.zone is None or self.zone == EPOCH:
            return ""
        return "UTC" if self.zone in (NAIVE, "+00:00") else self.zone

    def parse(self, values: pa.Array, first_row: int) -> pa.Array:
        """Epoch microseconds (int64, no nulls) of one batch's TIME values."""
        if len(values) == 0:
            return pa.array([], pa.int64())
        if values.null_count:
            raise self._error(first_row + _first(pc.is_null(values)), "a reading has no time")
        if pa.types.is_timestamp(values.type):
            zone, micros = values.type.tz or NAIVE, self._timestamps(values, first_row)
        elif pa.types.is_integer(values.type):
            zone, micros = EPOCH, self._epoch(pc.cast(values, pa.int64()), first_row)
        else:
            zone, micros = self._text(values, first_row)
        self._hold(zone)
        self._check_range(micros, first_row)
        return micros

    def _timestamps(self, values: pa.Array, first_row: int) -> pa.Array:
        per_second = {"s": 1, "ms": 1000, "us": MICROS, "ns": 1000 * MICROS}[values.type.unit]
        raw = pc.cast(values, pa.int64())
        self._check_seconds(pc.divide(raw, _int(per_second)), first_row)  # before any scaling can overflow
        if per_second >= MICROS:
            return pc.divide(raw, _int(per_second // MICROS))  # sub-microsecond digits dropped
        return pc.multiply(raw, _int(MICROS // per_second))

    def _text(self, values: pa.Array, first_row: int) -> tuple[str, pa.Array]:
        iso = pc.match_substring_regex(values, _ISO)
        if pc.all(iso).as_py():
            return self._iso(values, first_row)
        epoch = pc.match_substring_regex(values, _EPOCH)
        if pc.all(epoch).as_py():
            return EPOCH, self._epoch(pc.cast(values, pa.int64()), first_row)
        neither = pc.invert(pc.or_(iso, epoch))
        if pc.any(neither).as_py():
            raise self._error(first_row + _first(neither),
                              "not an ISO 8601 date-time (YYYY-MM-DDThh:mm:ss, optional offset) or whole epoch seconds")
        raise self._error(first_row + _first(epoch), "ISO 8601 date-times and epoch seconds mixed in one column")

    def _iso(self, values: pa.Array, first_row: int) -> tuple[str, pa.Array]:
        """Each value's offset read from its last six characters (distinct ones once: a column
        holds few), then the wall-clock times parsed by Arrow and moved to UTC; regex extraction
        of every part cost four times as much."""
        zoned = pc.match_substring_regex(values, _ZONE)
        with_zone = int(pc.sum(zoned).as_py() or 0)
        if with_zone == 0:
            return NAIVE, self._wall_clock(values, first_row)
        if with_zone < len(values):
            raise self._mixed()
        tails = pc.unique(pc.utf8_slice_codeunits(values, -6)).to_pylist()
        texts = {_ZONE_TAIL.search(tail).group(0) for tail in tails}  # type: ignore[union-attr]
        zones = {_offset(text) for text in texts}
        if len(zones) > 1:  # "Z" and "+00:00" are one zone
            raise self._mixed()
        zone = zones.pop()
        if zone is None:
            raise self._error(None, "a UTC offset beyond ±14:00")
        # One spelling of the offset (the usual file): cut it off; else remove each.
        local = pc.utf8_slice_codeunits(values, 0, -len(texts.pop())) if len(texts) == 1 else \
            pc.replace_substring_regex(values, _ZONE, "")
        return zone, pc.subtract(self._wall_clock(local, first_row), _int(_offset_seconds(zone) * MICROS))

    def _wall_clock(self, local: pa.Array, first_row: int) -> pa.Array:
        """Epoch microseconds of date-times without an offset (nanoseconds parsed: up to 9 digits
        of fraction; the sub-microsecond digits dropped)."""
        try:
            nanos = pc.cast(pc.cast(local, pa.timestamp("ns")), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise self._error(first_row + _first_unparsed(local), "not a valid date and time of day") from None
        return pc.divide(nanos, _int(1000))

    def _epoch(self, seconds: pa.Array, first_row: int) -> pa.Array:
        self._check_seconds(seconds, first_row)
        return pc.multiply(seconds, _int(MICROS))

    def _check_seconds(self, seconds: pa.Array, first_row: int) -> None:
        outside = pc.or_(pc.less(seconds, _int(MIN_SECONDS)), pc.greater(seconds, _int(MAX_SECONDS)))
        if pc.any(outside).as_py():
            raise self._error(first_row + _first(outside),
                              "outside the years 1900 to 2200 (epoch times are whole seconds, not milliseconds)")

    def _check_range(self, micros: pa.Array, first_row: int) -> None:
        self._check_seconds(pc.divide(micros, _int(MICROS)), first_row)

    def _hold(self, zone: str) -> None:
        if self.zone is None:
            self.zone = zone
        elif self.zone != zone:
            raise self._mixed()

    def _mixed(self) -> CleanroomError:
        return bad_request("the upload's timestamps mix time zones; nothing was stored", FieldViolation(
            column_field(self.column),
            "timestamps carry different UTC offsets (or some one and some none): use one offset for the whole column"))

    def _error(self, row: int | None, rule: str) -> CleanroomError:
        where = f"row {row}: " if row is not None else ""
        return bad_request("a timestamp cannot be read; nothing was stored",
                           FieldViolation(column_field(self.column), where + rule))


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _first_unparsed(local: pa.Array) -> int:
    """Bisects to the first value that does not cast (pyarrow's error quotes it, never says where)."""
    low, high = 0, len(local)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            pc.cast(local.slice(low, middle - low), pa.timestamp("ns"))
            low = middle
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            high = middle
    return low


def _offset(text: str) -> str | None:
    """"Z", "+09", "+0900", "+09:00" as "+hh:mm"; "" as NAIVE; None beyond ±14:00."""
    if text == "":
        return NAIVE
    if text == "Z":
        return "+00:00"
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or "0")
    if minutes >= 60 or hours * 60 + minutes > MAX_OFFSET_MINUTES:
        return None
    return f"{text[0]}{hours:02d}:{minutes:02d}"


def _offset_seconds(zone: str) -> int:
    sign = -1 if zone[0] == "-" else 1
    return sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
