"""Organisations: hospitals, manufacturers and the platform operator."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cleanroom.domain.organisations import Organisation, OrgKind
from cleanroom.storage.tables import OrganisationRow


def add_organisation(session: Session, organisation: Organisation) -> None:
    session.add(OrganisationRow(id=organisation.id, display_name=organisation.display_name,
                                kind=organisation.kind.value, created_at=organisation.created_at))


def ensure_organisation(session: Session, organisation: Organisation) -> tuple[Organisation, bool]:
    """Adds `organisation` unless one with its id exists; (what is stored, whether this call added
    it). Race-safe: two servers creating the operator at once both end with the one row (the
    loser's insert is rolled back to a savepoint, not its whole transaction)."""
    existing = get_organisation(session, organisation.id)
    if existing is not None:
        return existing, False
    try:
        with session.begin_nested():
            add_organisation(session, organisation)
    except IntegrityError:
        stored = get_organisation(session, organisation.id)
        assert stored is not None
        return stored, False
    return organisation, True


def _organisation(row: OrganisationRow) -> Organisation:
    return Organisation(row.id, row.display_name, OrgKind(row.kind), row.created_at)


def get_organisation(session: Session, organisation_id: str) -> Organisation | None:
    row = session.get(OrganisationRow, organisation_id)
    return _organisation(row) if row else None


def list_organisations(session: Session, *, after_id: str | None, limit: int) -> list[Organisation]:
    query = select(OrganisationRow).order_by(OrganisationRow.id).limit(limit)
    if after_id is not None:
        query = query.where(OrganisationRow.id > after_id)
    return [_organisation(r) for r in session.scalars(query)]
