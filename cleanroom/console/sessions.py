"""Console sessions, in this process's memory: a random id in an HttpOnly cookie, the API token on
the server side only. An idle session ends (and its token is revoked) after `idle` seconds.

Memory is per console process: behind several console replicas, route a browser to one replica
(sticky sessions), or it is asked to sign in again. The API token lives at most 8 hours anyway.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "cleanroom_session"


@dataclass
class Session:
    id: str
    token: str                 # the bearer token (never sent to the browser)
    token_name: str            # "tokens/{id}", for sign-out
    principal: str             # "principals/{id}"
    display_name: str
    role: str                  # "privacy_officer", "auditor", "data_owner", "manufacturer", "admin"
    organisation: str
    must_set_password: bool
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_seen: float = 0.0

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, **values: object) -> Session:
        session = Session(id=secrets.token_urlsafe(32), last_seen=self._clock(), **values)  # type: ignore[arg-type]
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> tuple[Session | None, Session | None]:
        """(the live session, or None; a session that just idled out, for its token's revocation)."""
        if not session_id:
            return None, None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None, None
            if now - session.last_seen > self.idle_seconds:
                del self._sessions[session_id]
                return None, session
            session.last_seen = now
            return session, None

    def end(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.pop(session_id, None)

    def expired(self) -> list[Session]:
        """Removes and returns every idle session (a periodic sweep revokes their tokens)."""
        now = self._clock()
        with self._lock:
            gone = [s for s in self._sessions.values() if now - s.last_seen > self.idle_seconds]
            for session in gone:
                del self._sessions[session.id]
        return gone
