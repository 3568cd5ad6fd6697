"""Hypothesis strategies built from protobuf descriptors, for fuzzing every RPC (proof/rpc_fuzz.py).

Three kinds of request, since pure noise stops at the first validation:
  noise   every field of the request type drawn from its descriptor (nested messages, repeated
          fields, maps, enums with unknown numbers, odd or huge text, extreme numbers, NaN/inf);
  near    a real, valid request (a real dataset, principal, request) with one field replaced;
  raw     bytes that are not a well-formed message at all (random, or a valid one with bytes flipped).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
HUGE_TEXT = 1 << 20      # under the server's 4 MiB message limit, far over any field's sense
ODD_TEXT = (
    "", " ", "\x00", "\x00abc", "a\nb", "\t\r", "../../../../etc/passwd", "/etc/passwd", "datasets/", "datasets/../x",
    "datasets/%00", "models/", "jobs/", "principals/", "privacyRequests/", "organisations/", "%s%n%x", "{0}",
    "\u202egnp.exe", "\ufeff", "\u0301", "ﷺ", "𝕏𝕐", "😀" * 50, "\U0010ffff", "Ā" * 300, "null", "NaN", "-1",
    "1e309", "' OR 1=1 --", "<script>", "*", "?", "a" * 10_000,
)
INT_EXTREMES = {
    32: (0, 1, -1, 2**31 - 1, -(2**31), 2**30), 64: (0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1),
    "u32": (0, 1, 2**32 - 1, 2**31), "u64": (0, 1, 2**64 - 1, 2**63),
}
FLOAT_EXTREMES = (0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308,
                  -1.7976931348623157e308, 1e-300, 1e300, 0.5, 1e-12)
_INT_RANGES = {
    F.TYPE_INT32: 32, F.TYPE_SINT32: 32, F.TYPE_SFIXED32: 32,
    F.TYPE_INT64: 64, F.TYPE_SINT64: 64, F.TYPE_SFIXED64: 64,
    F.TYPE_UINT32: "u32", F.TYPE_FIXED32: "u32", F.TYPE_UINT64: "u64", F.TYPE_FIXED64: "u64",
}
_BOUNDS = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1)}
MAX_DEPTH = 3


def message_class(descriptor: Descriptor) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=40), st.just("x" * HUGE_TEXT))


def _integers(kind: int | str) -> st.SearchStrategy[int]:
    low, high = _BOUNDS[kind]
    return st.one_of(st.sampled_from(INT_EXTREMES[kind]), st.integers(low, high))


def _floats(width: int) -> st.SearchStrategy[float]:
    drawn = st.floats(allow_nan=True, allow_infinity=True, width=width)
    return st.one_of(st.sampled_from(FLOAT_EXTREMES), drawn) if width == 64 else drawn


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """One value of a non-message field."""
    if field.type in _INT_RANGES:
        return _integers(_INT_RANGES[field.type])
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return _floats(64 if field.type == F.TYPE_DOUBLE else 32)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return text()
    if field.type == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * HUGE_TEXT))
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _integers(32))  # open enums: unknown numbers too
    raise TypeError(f"no strategy for field type {field.type} ({field.full_name})")


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def field_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """A value to assign to `field` with `assign`: a list for repeated fields, a dict for maps."""
    if _is_map(field):
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        values = messages(value.message_type, depth + 1) if value.message_type else scalar(value)
        return st.dictionaries(scalar(key), values, max_size=4)
    one = messages(field.message_type, depth + 1) if field.message_type else scalar(field)
    return st.lists(one, max_size=5) if field.is_repeated else one


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of fields set (nesting bounded by MAX_DEPTH)."""
    cls = message_class(descriptor)
    fields = [f for f in descriptor.fields if depth < MAX_DEPTH or f.message_type is None]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in fields:
            if draw(st.booleans()):
                assign(message, field, draw(field_value(field, depth)))
        return message

    return build()


def assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Set `field` of `message` to `value` (replacing what was there)."""
    if _is_map(field):
        target = getattr(message, field.name)
        target.clear()
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target = getattr(message, field.name)
        del target[:]
        if field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def slots(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every (message, field) of `message` and of the messages set inside it: what `mutated` may replace."""
    found = [(message, field) for field in message.DESCRIPTOR.fields]
    for field, value in message.ListFields():
        if field.message_type is None or _is_map(field):
            continue
        for inner in (value if field.is_repeated else [value]):
            found += slots(inner)
    return found


def mutated(baseline: Message) -> st.SearchStrategy[Message]:
    """`baseline` with exactly one field (anywhere in it) replaced by a drawn value."""

    if not baseline.DESCRIPTOR.fields:
        return st.just(baseline)  # nothing to change (WhoAmIRequest): the valid request itself

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(baseline)()
        message.CopyFrom(baseline)
        owner, field = draw(st.sampled_from(slots(message)))
        assign(owner, field, draw(field_value(field, 1)))
        return message

    return build()


def raw_bytes(baseline: bytes) -> st.SearchStrategy[bytes]:
    """Not a well-formed message: random bytes, or the valid `baseline` with bytes overwritten or cut."""

    @st.composite
    def flipped(draw: st.DrawFn) -> bytes:
        data = bytearray(baseline or b"\x00")
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)

    return st.one_of(st.binary(min_size=1, max_size=200), flipped())

