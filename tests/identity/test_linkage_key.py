"""The platform-wide linkage key (cleanroom.identity.keyring.LINKAGE_KEY): a service secret created
once, even by replicas that start together, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.identity.keyring import LINKAGE_KEY, PSEUDONYM_ROOT, KeyService
from cleanroom.storage import secret_repo
from cleanroom.storage.db import Database, migrate


class _Replica(KeyService):
    """A replica whose first look finds no key and then waits for the other one to look too: both
    go on to create one, the interleaving a naive read-then-insert loses on."""

    def __init__(self, db: Database, provider: LocalKeyFileProvider, both_looked: threading.Barrier) -> None:
        super().__init__(db, provider)
        self._both_looked = both_looked
        self.looks = 0

    def _stored_secret(self, name: str) -> bytes | None:
        found = super()._stored_secret(name)
        self.looks += 1
        if self.looks == 1:
            self._both_looked.wait(timeout=30)
        return found


def test_two_fresh_replicas_starting_at_once_agree_on_one_linkage_key(database_url: str, tmp_path) -> None:
    migrate(Database(database_url).engine)
    LocalKeyFileProvider(tmp_path).current_key_id()  # the shared KEK exists before the replicas start
    both_looked = threading.Barrier(2)
    replicas = [_Replica(Database(database_url), LocalKeyFileProvider(tmp_path), both_looked) for _ in range(2)]
    keys: list[bytes] = [b"", b""]
    errors: list[BaseException] = []

    def start(index: int) -> None:
        try:
            keys[index] = replicas[index].linkage_key()
        except BaseException as error:  # reported below, with the other replica's outcome
            errors.append(error)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(keys[0]) == 32 and keys[0] == keys[1]
    assert sorted(r.looks for r in replicas) == [1, 2]  # the loser read the winner's key back
    db = Database(database_url)
    with db.read() as session:
        assert [name for name, _ in secret_repo.all_secrets(session)] == [LINKAGE_KEY]
    # A third replica, started later, reads the same key; the pseudonym root is another secret.
    later = KeyService(db, LocalKeyFileProvider(tmp_path))
    assert later.linkage_key() == keys[0] and later.secret(PSEUDONYM_ROOT) != keys[0]
