"""TokenService against a real database (SQLite and PostgreSQL): a token works iff its row exists,
is not revoked and has not expired, judged on a clock the test moves; revocation is seen by a second
service on the same database at once (nothing cached); the last working admin token cannot be
revoked, not even by two admins racing (PostgreSQL); the migration's copied tokens keep working."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.domain.credentials import TokenState
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Role
from cleanroom.domain.pagination import PageRequest
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.principals import PrincipalService
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import AuditEntryRow, TokenRow


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at


_OPEN: list[Database] = []


@pytest.fixture(autouse=True)
def _dispose() -> Iterator[None]:
    """Connections closed before the PostgreSQL fixture drops its database (else it waits, then forces)."""
    yield
    while _OPEN:
        _OPEN.pop().dispose()


def _service(url: str, keys_dir: Path, clock: Clock | None = None) -> PrincipalService:
    db = Database(url)
    _OPEN.append(db)
    migrate(db.engine)
    service = PrincipalService(db, KeyService(db, LocalKeyFileProvider(keys_dir)))
    if clock is not None:
        service.tokens.now = clock
    return service


def test_a_token_works_until_it_expires_or_is_revoked(database_url: str, tmp_path: Path) -> None:
    clock = Clock()
    service = _service(database_url, tmp_path, clock)
    admin, admin_token = service.create("admin", Role.ADMIN, actor="test")
    maker, first = service.create("maker", Role.MANUFACTURER, actor="test", token_lifetime=timedelta(hours=1))
    assert service.check(first).principal == maker  # the first token is a row of `tokens` too
    issued = service.tokens.issue(maker.id, timedelta(seconds=30), actor=admin.resource_name)
    second = service.tokens.secret_of(issued.id)
    assert issued.expires_at == clock.at + timedelta(seconds=30)
    assert service.check(second).principal == maker

    clock.at += timedelta(seconds=30)  # expiry is inclusive: at expires_at the token no longer works
    assert service.check(second).state is TokenState.EXPIRED and service.check(second).principal is None
    assert service.authenticate(second) is None

    revoked = service.tokens.revoke(_first_token_id(service, maker.id), actor=admin.resource_name)
    assert revoked.revoked_at == clock.at
    assert service.check(first).state is TokenState.REVOKED
    assert service.check(admin_token).state is TokenState.VALID
    assert service.check("crt_" + "x" * 43).state is TokenState.UNKNOWN and service.check("nonsense").state is TokenState.UNKNOWN
    with service._db.read() as session:
        actions = [(e.action, e.target) for e in session.scalars(select(AuditEntryRow).order_by(AuditEntryRow.seq))]
    assert ("token.issue", issued.resource_name) in actions and ("token.revoke", revoked.resource_name) in actions


def _first_token_id(service: PrincipalService, principal_id: str) -> str:
    """The token made with the principal (by actor "test"; later ones are issued by an admin)."""
    [first] = [t.id for t in service.tokens.list(principal_id, PageRequest(10, None)) if t.created_by == "test"]
    return first


def test_a_revocation_holds_on_the_next_check_of_another_service(database_url: str, tmp_path: Path) -> None:
    """Two services on one database stand for two replicas: nothing is cached between calls."""
    one, other = _service(database_url, tmp_path), _service(database_url, tmp_path)
    admin, _ = one.create("admin", Role.ADMIN, actor="test")
    owner, token = one.create("owner", Role.DATA_OWNER, actor="test")
    for _ in range(3):
        assert other.check(token).principal == owner
    assert [t.id for t in one.tokens.revoke_principal(owner.id, actor=admin.resource_name)] == [_first_token_id(one, owner.id)]
    assert other.check(token).state is TokenState.REVOKED
    assert one.tokens.revoke_principal(owner.id, actor=admin.resource_name) == []  # nothing left to revoke


def test_the_last_working_admin_token_cannot_be_revoked(database_url: str, tmp_path: Path) -> None:
    clock = Clock()
    service = _service(database_url, tmp_path, clock)
    admin, _ = service.create("admin", Role.ADMIN, actor="test")
    only = _first_token_id(service, admin.id)
    with pytest.raises(CleanroomError) as refused:
        service.tokens.revoke(only, actor=admin.resource_name)
    assert refused.value.code is ErrorCode.FAILED_PRECONDITION
    with pytest.raises(CleanroomError):
        service.tokens.revoke_principal(admin.id, actor=admin.resource_name)
    assert service.tokens.list(admin.id, PageRequest(10, None))[0].revoked_at is None  # rolled back
    short = service.tokens.issue(admin.id, timedelta(seconds=5), actor=admin.resource_name)
    clock.at += timedelta(seconds=5)  # an expired replacement is no replacement
    with pytest.raises(CleanroomError):
        service.tokens.revoke(only, actor=admin.resource_name)
    replacement = service.tokens.issue(admin.id, None, actor=admin.resource_name)
    assert service.tokens.revoke(only, actor=admin.resource_name).revoked_at == clock.at
    assert {t.id for t in service.tokens.list(admin.id, PageRequest(10, None)) if t.state(clock.at) is TokenState.VALID} == {replacement.id}
    assert short.id != replacement.id


@pytest.mark.postgres
def test_two_admins_revoking_each_others_last_token_at_once_leave_one(postgres_url: str, tmp_path: Path) -> None:
    """A barrier holds both revocations after their UPDATE and before the audit append, where the
    count of live admin tokens is serialised: one must be refused."""
    from cleanroom.storage import token_repo

    service = _service(postgres_url, tmp_path)
    first, _ = service.create("first admin", Role.ADMIN, actor="test")
    second, _ = service.create("second admin", Role.ADMIN, actor="test")
    updated, revoke = threading.Barrier(2, timeout=20), token_repo.revoke

    def revoke_then_wait(session, token_ids, at):  # type: ignore[no-untyped-def]
        done = revoke(session, token_ids, at)
        updated.wait()
        return done

    outcomes: list[object] = []

    def run(principal_id: str, actor: str) -> None:
        try:
            outcomes.append(service.tokens.revoke_principal(principal_id, actor=actor))
        except CleanroomError as error:
            outcomes.append(error.code)

    token_repo.revoke = revoke_then_wait  # type: ignore[assignment]
    try:
        threads = [threading.Thread(target=run, args=(a.id, b.resource_name)) for a, b in ((first, second), (second, first))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        token_repo.revoke = revoke  # type: ignore[assignment]
    assert sorted(map(str, outcomes)).count(str(ErrorCode.FAILED_PRECONDITION)) == 1, outcomes
    with service._db.read() as session:
        assert len(session.scalars(select(TokenRow).where(TokenRow.revoked_at.is_(None))).all()) == 1


def test_tokens_copied_by_migration_0012_keep_working(database_url: str, tmp_path: Path) -> None:
    """A principal made before 0012 had only principals.token_hash; the upgrade copies it into
    `tokens`, so its token still works (and can now be revoked)."""
    from cleanroom.domain.identity import hash_token
    from cleanroom.storage import principal_repo
    from cleanroom.storage.tables import PrincipalRow

    db = Database(database_url)
    _OPEN.append(db)
    migrate(db.engine, to="0011")
    keys = KeyService(db, LocalKeyFileProvider(tmp_path))
    old = PrincipalService.__new__(PrincipalService)  # only token_for is used before the upgrade
    from cleanroom.identity.tokens import TokenService

    old.tokens = TokenService(db, keys)
    token = old.token_for("pold0000000000001")
    with db.transaction() as session:
        session.add(PrincipalRow(id="pold0000000000001", display_name="old admin", role=Role.ADMIN.value,
                                 token_hash=hash_token(token), created_at=datetime.now(UTC), organisation_id=""))
    migrate(db.engine)
    service = PrincipalService(db, keys)
    assert service.check(token).principal is not None
    with db.read() as session:
        assert principal_repo.get_principal(session, "pold0000000000001") is not None
