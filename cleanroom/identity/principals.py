"""Principals and their first bearer token.

The token made with a principal is derived, not stored: HMAC(token root, principal id). Only its
SHA-256 is kept, as a row of `tokens` (with an optional expiry), so a retried CreatePrincipal (same
request_id) answers with the same token without the token ever being written down. Later tokens,
revocation and the check of every call: cleanroom/identity/tokens.py.

Every principal belongs to an organisation (cleanroom/domain/organisations.py); MEMBERSHIP says
which kind of organisation each role may join.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from cleanroom.domain.credentials import TokenCheck, TokenState, check_lifetime
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role, hash_token, new_principal_id
from cleanroom.domain.organisations import OPERATOR_ID, Organisation, OrgKind, new_organisation_id
from cleanroom.domain.pagination import PageRequest
from cleanroom.identity.console_logins import ConsoleLoginService
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.tokens import TokenService
from cleanroom.storage import audit_repo, clock, organisation_repo, principal_repo
from cleanroom.storage.db import Database

MAX_DISPLAY_NAME = 200

# Which organisations each role may belong to. A hospital's officers and auditors govern its datasets
# only; the operator's act platform-wide. The first kind listed is where an omitted organisation goes.
MEMBERSHIP: dict[Role, tuple[OrgKind, ...]] = {
    Role.DATA_OWNER: (OrgKind.HOSPITAL,),
    Role.MANUFACTURER: (OrgKind.MANUFACTURER,),
    Role.ADMIN: (OrgKind.OPERATOR,),
    Role.PRIVACY_OFFICER: (OrgKind.OPERATOR, OrgKind.HOSPITAL),
    Role.AUDITOR: (OrgKind.OPERATOR, OrgKind.HOSPITAL),
}
OPERATOR_NAME = "Platform operator"
ORGANISATION_NOT_FOUND = "organisation not found"


class PrincipalService:
    def __init__(self, db: Database, keys: KeyService) -> None:
        self._db = db
        self.tokens = TokenService(db, keys)
        self.console_logins = ConsoleLoginService(db, self.tokens)

    def token_for(self, principal_id: str) -> str:
        """The bearer token made with the principal."""
        return self.tokens.derive(principal_id)

    def create(self, display_name: str, role: Role, *, actor: str, organisation_id: str | None = None,
               token_lifetime: timedelta | None = None) -> tuple[Principal, str]:
        """`actor` is the creating admin's resource name, or \"local-bootstrap\" for the first admin.
        Without `organisation_id` the principal gets its role's default organisation (MEMBERSHIP).
        Without `token_lifetime` its first token never expires."""
        _check_display_name(display_name)
        token_lifetime = check_lifetime(token_lifetime, "token_lifetime")
        name, principal_id = display_name.strip(), new_principal_id()
        token = self.token_for(principal_id)  # before the transaction: the token root may be made in one of its own
        with self._db.transaction() as session:
            if organisation_id is None:
                organisation = self._default_organisation(session, name, role, actor)
            else:
                organisation = _named_organisation(session, organisation_id, role)
            principal = Principal(principal_id, name, role, clock.now(), organisation.id)
            principal_repo.add_principal(session, principal, hash_token(token))
            self.tokens.record_first(session, principal, token, token_lifetime, actor)
            audit_repo.append(session, actor=actor, action="principal.create", target=principal.resource_name,
                              details={"role": role.value, "organisation": organisation.resource_name})
        return principal, token

    def _default_organisation(self, session: Session, name: str, role: Role, actor: str) -> Organisation:
        kind = MEMBERSHIP[role][0]
        if kind is not OrgKind.OPERATOR:
            return self._add_organisation(session, name, kind, actor)
        operator, added = organisation_repo.ensure_organisation(session, Organisation(OPERATOR_ID, OPERATOR_NAME, kind, clock.now()))
        if added:
            audit_repo.append(session, actor=actor, action="organisation.create", target=operator.resource_name, details={"kind": kind.value})
        return operator

    @staticmethod
    def _add_organisation(session: Session, name: str, kind: OrgKind, actor: str) -> Organisation:
        organisation = Organisation(new_organisation_id(), name, kind, clock.now())
        organisation_repo.add_organisation(session, organisation)
        audit_repo.append(session, actor=actor, action="organisation.create", target=organisation.resource_name,
                          details={"kind": kind.value})
        return organisation

    def create_organisation(self, display_name: str, kind: OrgKind, *, actor: str) -> Organisation:
        """A hospital or a manufacturer; the operator exists once and is made on first need."""
        _check_display_name(display_name)
        if kind is OrgKind.OPERATOR:
            raise bad_request("only hospitals and manufacturers can be created; the operator organisation exists once",
                              FieldViolation("kind", "HOSPITAL or MANUFACTURER"))
        with self._db.transaction() as session:
            return self._add_organisation(session, display_name.strip(), kind, actor)

    def list_organisations(self, page: PageRequest) -> list[Organisation]:
        with self._db.read() as session:
            return organisation_repo.list_organisations(session, after_id=page.after_id, limit=page.size)

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose working token this is (None for an unknown, revoked or expired one)."""
        return self.check(token).principal

    def check(self, token: str) -> TokenCheck:
        """Every call is checked (cleanroom/identity/tokens.py): VALID with the principal, or why not."""
        result = self.tokens.check(token)
        assert (result.state is TokenState.VALID) == (result.principal is not None)
        return result

    def get(self, principal_id: str) -> Principal:
        with self._db.read() as session:
            principal = principal_repo.get_principal(session, principal_id)
        if principal is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, "principal not found")
        return principal

    def list(self, page: PageRequest) -> list[Principal]:
        with self._db.read() as session:
            return principal_repo.list_principals(session, after_id=page.after_id, limit=page.size)


def _named_organisation(session: Session, organisation_id: str, role: Role) -> Organisation:
    organisation = organisation_repo.get_organisation(session, organisation_id)
    if organisation is None:
        raise CleanroomError(ErrorCode.NOT_FOUND, ORGANISATION_NOT_FOUND)
    allowed = MEMBERSHIP[role]
    if organisation.kind not in allowed:
        kinds = " or ".join(k.value for k in allowed)
        raise bad_request(f"a {role.value} belongs to an organisation of kind {kinds}",
                          FieldViolation("organisation", f"must be a {kinds} organisation for this role"))
    return organisation


def _check_display_name(display_name: str) -> None:
    name = display_name.strip()
    if not name or len(name) > MAX_DISPLAY_NAME or not name.isprintable():
        raise bad_request(
            "display_name must be 1 to 200 printable characters",
            FieldViolation("display_name", "empty, too long or not printable"),
        )
