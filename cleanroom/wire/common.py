"""common.proto <-> domain (roles), and what every wire module shares: timestamps, enum values.

Every module of this package converts one proto file's messages; they import the generated
messages, the domain and the standard library only, so the server and the SDK share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Role
from cleanroom.v1 import common_pb2

T = TypeVar("T")

_ROLE_TO_PROTO: dict[Role, common_pb2.Role.ValueType] = {
    Role.DATA_OWNER: common_pb2.DATA_OWNER,
    Role.MANUFACTURER: common_pb2.MANUFACTURER,
    Role.PRIVACY_OFFICER: common_pb2.PRIVACY_OFFICER,
    Role.AUDITOR: common_pb2.AUDITOR,
    Role.ADMIN: common_pb2.ADMIN,
}
_ROLE_FROM_PROTO: dict[int, Role] = {int(v): k for k, v in _ROLE_TO_PROTO.items()}


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def role_to_proto(role: Role) -> common_pb2.Role.ValueType:
    return _ROLE_TO_PROTO[role]


def role_from_proto(value: int, field: str = "role") -> Role:
    role = _ROLE_FROM_PROTO.get(value)
    if role is None:
        raise bad_request("a role is required", FieldViolation(field, "one of DATA_OWNER, MANUFACTURER, PRIVACY_OFFICER, AUDITOR, ADMIN"))
    return role


def known_enum(value: int, known: Mapping[int, T], field: str) -> T | None:
    """A proto enum value as its domain value; 0 (unspecified) as None. An open proto3 enum carries
    any int32, so a number this server does not know is the caller's error, never a KeyError."""
    if value == 0:
        return None
    if value not in known:
        names = ", ".join(sorted(getattr(v, "name", str(v)).upper() for v in known.values()))
        raise bad_request("an enum field has a value this server does not know", FieldViolation(field, f"one of {names}"))
    return known[value]
