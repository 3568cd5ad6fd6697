"""common.proto <-> domain (roles), and what every wire module shares: timestamps, enum values.

Every module of this package converts one proto file's messages; they import the generated
messages, the domain and the standard library only, so the server and the SDK share them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom.domain.cohort import MAX_SITES, CohortSite, SiteRole, make_site
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


_SITE_ROLE_TO_PROTO: dict[SiteRole, common_pb2.SiteRole.ValueType] = {
    SiteRole.TRAIN: common_pb2.SITE_ROLE_TRAIN, SiteRole.VALIDATE: common_pb2.SITE_ROLE_VALIDATE}
_SITE_ROLE_FROM_PROTO: dict[int, SiteRole] = {int(v): k for k, v in _SITE_ROLE_TO_PROTO.items()}


def cohort_from_proto(sites: Iterable[common_pb2.CohortSite], field: str = "cohort") -> tuple[CohortSite, ...]:
    """A request's cohort as domain sites, in the request's order; names checked, nothing looked up."""
    listed = list(sites)
    if len(listed) > MAX_SITES:
        raise bad_request(f"a cohort names at most {MAX_SITES} datasets", FieldViolation(field, f"{len(listed)} sites"))
    result, seen = [], set()
    for index, site in enumerate(listed):
        where = f"{field}[{index}]"
        dataset_id = site.dataset.removeprefix("datasets/")
        if not site.dataset.startswith("datasets/") or not dataset_id:
            raise bad_request("each cohort site names a dataset as datasets/{id}", FieldViolation(f"{where}.dataset", "not a dataset name"))
        if dataset_id in seen:
            raise bad_request("a cohort names each dataset once", FieldViolation(f"{where}.dataset", "named twice"))
        seen.add(dataset_id)
        blank = [k for k, v in site.columns.items() if not k.strip() or not v.strip()]
        if blank:
            raise bad_request("a cohort site's column mapping needs a study name and a column name on every entry",
                              FieldViolation(f"{where}.columns", "an empty name"))
        role = known_enum(site.role, _SITE_ROLE_FROM_PROTO, f"{where}.role") or SiteRole.TRAIN
        result.append(make_site(dataset_id, dict(site.columns), role))
    return tuple(result)


def cohort_to_proto(sites: Iterable[CohortSite]) -> list[common_pb2.CohortSite]:
    return [common_pb2.CohortSite(dataset=f"datasets/{s.dataset_id}", columns=dict(s.columns), role=_SITE_ROLE_TO_PROTO[s.role])
            for s in sites]
