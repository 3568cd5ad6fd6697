"""Failed authentications per source address, in this process's memory (so the limit is per replica).

After `limit` failures within `window` seconds from one source, `blocked(source)` answers how long
until the oldest of them leaves the window; calls from it are refused without checking a token
until then. Successful calls neither count nor reset the count (a holder of one valid token must
not be able to wipe out its failures in between guesses). The clock is injected, so tests move it.

Memory is bounded: at most `max_sources` sources are tracked, each with at most `limit` times;
past that, the sources whose last failure is oldest are forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_SOURCES = 100_000


class FailureLimiter:
    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic,
                 max_sources: int = MAX_SOURCES) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("the failure limit must be at least 1 and the window positive")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failing first
        self._lock = threading.Lock()

    def blocked(self, source: str) -> float | None:
        """Seconds until `source` may try again, or None when it may now."""
        with self._lock:
            times = self._failures.get(source)
            if times is None:
                return None
            now = self._clock()
            self._expire(times, now)
            if not times:
                del self._failures[source]
                return None
            if len(times) < self.limit:
                return None
            return max(times[0] + self.window - now, 0.001)

    def failed(self, source: str) -> None:
        with self._lock:
            now = self._clock()
            times = self._failures.pop(source, None) or deque(maxlen=self.limit)
            self._expire(times, now)
            times.append(now)
            self._failures[source] = times
            while len(self._failures) > self._max_sources:
                self._failures.popitem(last=False)

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def tracked(self) -> int:
        with self._lock:
            return len(self._failures)


def source_of(peer: str) -> str:
    """The address part of gRPC's peer string ("ipv4:10.0.0.7:51234", "ipv6:[::1]:51234"): the
    port changes with every connection, the source does not."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return "ipv4:" + rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return "ipv6:" + rest.rsplit(":", 1)[0].strip("[]")
    return peer  # unix sockets and anything else: the whole peer string
