"""This server process's lease: an instance id, a row with a heartbeat, and the periodic sweeper.

Every server sharing a database holds a lease (storage/lease_repo.py) renewed by a background
thread every `lease_seconds / 6`; what it has in flight (running jobs, open reservations, request
claims, partial uploads, job scratch) carries its instance id. A second thread, every
`lease_seconds / 2`, runs the recovery of work whose owner's lease has expired: a dead peer's,
never a live one's. A clean stop removes the lease, so peers recover at once what it left.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cleanroom.storage import lease_repo
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)


def new_instance_id() -> str:
    return "srv" + secrets.token_hex(8)


def utcnow() -> datetime:
    return datetime.now(UTC)


def node_name() -> str:
    """Host name, boot and pid namespace: two leases with the same node see the same process ids."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if path.endswith("boot_id") else str(os.stat(path).st_ino))
        except OSError:
            parts.append("?")
    return "/".join(parts)[:200]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ServerLease:
    def __init__(self, db: Database, *, lease_seconds: float, instance_id: str | None = None) -> None:
        self._db = db
        self.instance_id = instance_id or new_instance_id()
        self.lease = timedelta(seconds=lease_seconds)
        self.heartbeat_seconds = lease_seconds / 6
        self.sweep_seconds = lease_seconds / 2
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sweep: Callable[[], object] | None = None
        self.node = node_name()

    def expire_gone_neighbours(self) -> int:
        """Ends at once the leases of servers on this node whose process is gone (a restart after
        SIGKILL need not wait for the expiry); peers elsewhere are only judged by their expiry."""
        with self._db.read() as session:
            neighbours = lease_repo.on_node(session, self.node)
        gone = [i for i, pid in neighbours if i != self.instance_id and pid != os.getpid() and _process_gone(pid)]
        ended = 0
        for instance_id in gone:
            with self._db.transaction() as session:
                ended += lease_repo.expire(session, instance_id, utcnow())
        if ended:
            log.info("%d lease(s) of stopped servers on this node ended", ended)
        return ended

    def acquire(self) -> None:
        with self._db.transaction() as session:
            lease_repo.acquire(session, self.instance_id, host=self.node, pid=os.getpid(), at=utcnow(), lease=self.lease)
        log.info("server lease %s acquired (expires %.0f s after its last heartbeat)", self.instance_id,
                 self.lease.total_seconds())

    def start(self, sweep: Callable[[], object]) -> None:
        """Starts the heartbeat and the sweeper (after acquire()), each in its own thread: a long
        recovery never delays the heartbeat past this server's own expiry."""
        self._sweep = sweep
        self._stop.clear()
        self._threads = [threading.Thread(target=self._heartbeat, name="server-lease", daemon=True),
                         threading.Thread(target=self._sweeper, name="lease-sweeper", daemon=True)]
        for thread in self._threads:
            thread.start()

    def renew(self) -> bool:
        at = utcnow()
        with self._db.transaction() as session:
            if lease_repo.renew(session, self.instance_id, at=at, lease=self.lease):
                return True
        # Paused past the expiry (or removed): a peer may already have recovered this server's work;
        # what it did is final (every recovery step is a conditional update). Hold a lease again.
        log.error("server lease %s had expired; work in flight may have been recovered by a peer", self.instance_id)
        with self._db.transaction() as session:
            lease_repo.release(session, self.instance_id)
            lease_repo.acquire(session, self.instance_id, host=self.node, pid=os.getpid(), at=at, lease=self.lease)
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the heartbeat
                log.warning("could not renew the server lease", exc_info=True)

    def _sweeper(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                if self._sweep is not None:
                    self._sweep()
            except Exception:  # noqa: BLE001 - retried at the next sweep
                log.warning("recovering expired servers' work failed; will retry", exc_info=True)

    def release(self) -> None:
        """Clean stop: ends the heartbeat and removes the lease, so peers recover what is left at once."""
        self._stop.set()
        if self._threads:
            for thread in self._threads:
                thread.join(self.heartbeat_seconds + 5)
            self._threads = []
            try:
                with self._db.transaction() as session:
                    lease_repo.release(session, self.instance_id)
            except Exception:  # noqa: BLE001
                log.warning("could not remove the server lease; it expires by itself", exc_info=True)
