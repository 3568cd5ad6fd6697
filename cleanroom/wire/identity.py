"""identity.proto <-> domain: principals and their resource names."""

from __future__ import annotations

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Principal
from cleanroom.v1 import identity_pb2
from cleanroom.wire.common import role_to_proto, timestamp


def principal_to_proto(principal: Principal) -> identity_pb2.Principal:
    return identity_pb2.Principal(
        name=principal.resource_name,
        display_name=principal.display_name,
        role=role_to_proto(principal.role),
        create_time=timestamp(principal.created_at),
    )


def principal_id_from_name(name: str, field: str) -> str:
    if not name.startswith("principals/") or len(name) <= len("principals/"):
        raise bad_request("expected a principal name like principals/{id}", FieldViolation(field, "not a principal name"))
    return name.removeprefix("principals/")
