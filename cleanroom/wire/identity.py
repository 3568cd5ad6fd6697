"""identity.proto <-> domain: principals, organisations, tokens and their resource names."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from cleanroom.domain.console_logins import ConsoleLogin
from cleanroom.domain.credentials import MAX_LIFETIME, Token, check_lifetime
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Principal
from cleanroom.domain.organisations import Organisation, OrgKind
from cleanroom.v1 import identity_pb2
from cleanroom.wire.common import role_to_proto, timestamp

_KIND_TO_PROTO: dict[OrgKind, identity_pb2.OrganisationKind.ValueType] = {
    OrgKind.HOSPITAL: identity_pb2.ORGANISATION_KIND_HOSPITAL,
    OrgKind.MANUFACTURER: identity_pb2.ORGANISATION_KIND_MANUFACTURER,
    OrgKind.OPERATOR: identity_pb2.ORGANISATION_KIND_OPERATOR,
}
_KIND_FROM_PROTO: dict[int, OrgKind] = {int(v): k for k, v in _KIND_TO_PROTO.items()}


def principal_to_proto(principal: Principal) -> identity_pb2.Principal:
    return identity_pb2.Principal(
        name=principal.resource_name,
        display_name=principal.display_name,
        role=role_to_proto(principal.role),
        create_time=timestamp(principal.created_at),
        organisation=f"organisations/{principal.organisation_id}" if principal.organisation_id else "",
    )


def organisation_to_proto(organisation: Organisation) -> identity_pb2.Organisation:
    return identity_pb2.Organisation(
        name=organisation.resource_name,
        display_name=organisation.display_name,
        kind=_KIND_TO_PROTO[organisation.kind],
        create_time=timestamp(organisation.created_at),
    )


def organisation_kind_from_proto(value: int, field: str = "kind") -> OrgKind:
    kind = _KIND_FROM_PROTO.get(value)
    if kind is None:
        raise bad_request("an organisation kind is required", FieldViolation(field, "HOSPITAL or MANUFACTURER"))
    return kind


def organisation_id_from_name(name: str, field: str = "organisation") -> str:
    if not name.startswith("organisations/") or len(name) <= len("organisations/"):
        raise bad_request("expected an organisation name like organisations/{id}", FieldViolation(field, "not an organisation name"))
    return name.removeprefix("organisations/")


def principal_id_from_name(name: str, field: str) -> str:
    if not name.startswith("principals/") or len(name) <= len("principals/"):
        raise bad_request("expected a principal name like principals/{id}", FieldViolation(field, "not a principal name"))
    return name.removeprefix("principals/")


def token_to_proto(token: Token) -> identity_pb2.Token:
    message = identity_pb2.Token(name=token.resource_name, principal=f"principals/{token.principal_id}",
                                 create_time=timestamp(token.created_at), created_by=token.created_by)
    if token.expires_at is not None:
        message.expire_time.CopyFrom(timestamp(token.expires_at))
    if token.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(token.revoked_at))
    return message


def console_login_to_proto(login: ConsoleLogin) -> identity_pb2.ConsoleLogin:
    return identity_pb2.ConsoleLogin(username=login.username, principal=f"principals/{login.principal_id}",
                                     create_time=timestamp(login.created_at), password_set=login.password_set)


def token_id_from_name(name: str, field: str = "token") -> str:
    tail = name.removeprefix("tokens/")
    if not name.startswith("tokens/") or not tail or "/" in tail:
        raise bad_request("expected a token name like tokens/{id}", FieldViolation(field, "not a token name"))
    return tail


def lifetime_from_proto(lifetime: Duration | None, field: str) -> timedelta | None:
    """None (the field unset): no expiry. A negative, zero or malformed duration is a bad request."""
    if lifetime is None:
        return None
    too_long = lifetime.seconds > MAX_LIFETIME.total_seconds()  # before timedelta, which overflows on absurd values
    if lifetime.seconds < 0 or lifetime.nanos < 0 or lifetime.nanos >= 1_000_000_000 or too_long:
        raise bad_request("a token lifetime must be between 1 second and 3650 days (leave it unset for no expiry)",
                          FieldViolation(field, "must be 1 s to 3650 days"))
    return check_lifetime(timedelta(seconds=lifetime.seconds, microseconds=lifetime.nanos // 1000), field)


def duration_to_proto(lifetime: timedelta) -> Duration:
    message = Duration()
    message.FromTimedelta(lifetime)
    return message
