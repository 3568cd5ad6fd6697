"""Warm statistics workers: one attested sandbox per dataset, kept while queries keep coming.

Starting a worker is the expensive part (sandbox, key release, decryption, column preparation);
answering is cheap. So the first query on a dataset starts one, later queries reuse it, and it
is closed once idle for `idle_seconds` and, whatever happens, at the sandbox policy's wall clock:
that is the bounded time decrypted columns may live. Queries on one dataset are answered one at a
time by its single-threaded worker, but sent without waiting (the next one is already queued when
it finishes the current one); different datasets run side by side.

The key leaves the broker only against a fresh quote for the statistics workload of the dataset,
and only while a statistics reservation on that dataset is open (the query that started it).

A cohort (several hospitals' datasets read as one table) has a worker of its own, keyed by its
datasets and their column mapping: one key release per dataset, each against its own quote for the
cohort's workload; the worker's receipts carry the first site's quote nonce.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import enclave_sim
from cleanroom.attestation.enclave import Enclave
from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest
from cleanroom.sandbox.session import SandboxSession, SessionBroken, SessionHost

log = logging.getLogger(__name__)

STATS_WORKER_ARGV = ("python3", "-m", "cleanroom.worker.stats_worker")
LOAD_SECONDS = 600.0     # decrypt and prepare a large dataset
QUERY_SECONDS = 120.0    # one answer
# A stream's first query on a view derives it from every reading (worker/stream_views.py): its
# answer may take longer by the stream's readings at this rate, a floor well under the ~4.7 million
# readings a second measured on two shared cores, so a large stream's answer is not cut off (its
# data already opened, its budget spent) while the worker is still deriving.
STREAM_READINGS_PER_SECOND = 1_000_000
REAP_SECONDS = 5.0


def answer_seconds(stream_readings: int = 0) -> float:
    """How long one answer may take: QUERY_SECONDS, plus a stream's readings at the floor rate."""
    return QUERY_SECONDS + stream_readings / STREAM_READINGS_PER_SECOND


class WorkerFailed(Exception):
    """No answer: `reason` is "attestation" (the broker refused the key) or "worker"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DatasetSource:
    """What a worker needs to open one dataset (ciphertext and wrapped key, never plaintext)."""

    id: str
    blob_path: Path
    wrapped_key: bytes
    patient_column: str
    public_group_keys: dict[str, list[str]] = field(default_factory=dict)
    # A stream dataset: what the worker needs to derive stream views (statistics.service); None: a table.
    stream: dict[str, Any] | None = None


@dataclass(frozen=True)
class SiteSource:
    """One dataset of a cohort: its ciphertext and wrapped key, its key columns, its study mapping."""

    dataset_id: str
    blob_path: Path
    wrapped_key: bytes
    patient_column: str
    linkage_column: str | None
    columns: dict[str, str]          # study name -> this site's column


@dataclass(frozen=True)
class CohortSource:
    """What a cohort's worker needs: `id` is its pool key (the datasets and their mapping)."""

    id: str
    sites: tuple[SiteSource, ...]
    unit_column: str                 # the study table's privacy unit (cleanroom.domain.cohort.unit_key)
    public_group_keys: dict[str, list[str]] = field(default_factory=dict)


Source = DatasetSource | CohortSource


@dataclass
class _Warm:
    session: SandboxSession
    nonce: str                       # the quote's: every receipt from this worker carries it
    last_used: float
    in_flight: int = 0               # queries sent and not yet answered (the session pipelines them)
    retired: bool = False            # being reaped: takes no more queries
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> bool:
        with self.lock:
            if self.retired or not self.session.alive:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.last_used = time.monotonic()


class _Once:
    def __init__(self, action: Callable[[], None]) -> None:
        self._action, self._done = action, False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._action()


class StatsWorkerPool:
    def __init__(self, *, enclave: Enclave, unwrap_key: Callable[[str, bytes], bytes], host: SessionHost,
                 policy: SandboxPolicy, work_dir: Path, idle_seconds: float = 300.0,
                 on_start: Callable[[str], None] = lambda outcome: None) -> None:
        """`host`: the sandbox backend the workers run in (any that hosts sessions, see
        sandbox/backends.py). `on_start` hears each start's outcome: "started", "failed", "refused"."""
        self._enclave, self._unwrap_key, self._host = enclave, unwrap_key, host
        self._policy, self._work_dir, self._idle = policy, work_dir, idle_seconds
        self._on_start = on_start
        self._workers: dict[str, _Warm] = {}
        self._starting: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="stats-reaper", daemon=True)
        self._reaper.start()

    def ask(self, dataset_id: str, source: Callable[[], Source], workload: str, query: dict[str, Any],
            *, opening: Callable[[], None] = lambda: None, stream_readings: int = 0) -> tuple[dict[str, Any], str]:
        """The worker's reply to one query and the nonce of the worker's attestation; `source` is
        called only when no warm worker holds the dataset. `opening` runs once, just before data
        is touched for this query: before a new worker receives the key, or before a warm worker
        is asked (the ledger marks the spend decrypted there). `stream_readings`: a stream dataset's
        stored readings, which lengthen the time one answer may take (see answer_seconds)."""
        once = _Once(opening)
        for _ in range(2):  # a worker reaped between lookup and entry has seen nothing: start afresh once
            warm = self._warm(dataset_id, source, workload, once)
            if warm.enter():
                try:
                    once()
                    return self._ask_live(dataset_id, warm, query, answer_seconds(stream_readings)), warm.nonce
                finally:
                    warm.leave()
            self._drop(dataset_id, warm)
        raise WorkerFailed("worker")

    def is_warm(self, dataset_id: str) -> bool:
        with self._guard:
            warm = self._workers.get(dataset_id)
        return warm is not None and warm.session.alive

    def _ask_live(self, dataset_id: str, warm: _Warm, query: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One query on a worker the caller has entered (queries on one worker are pipelined)."""
        try:
            answer = json.loads(warm.session.call(json.dumps({"query": query}).encode(), timeout=timeout))
            if not isinstance(answer, dict):
                raise ValueError("an answer is a JSON object")
            return answer
        except (SessionBroken, ValueError):
            self._drop(dataset_id, warm)
            log.warning("statistics worker stopped: %s", warm.session.error_type())
            raise WorkerFailed("worker") from None

    def warm_datasets(self) -> list[str]:
        with self._guard:
            return [d for d, w in self._workers.items() if w.session.alive]

    def close(self) -> None:
        self._stop.set()
        with self._guard:
            workers, self._workers = list(self._workers.values()), {}
        for warm in workers:
            warm.session.close()

    # --- starting ------------------------------------------------------------------------------

    def _warm(self, dataset_id: str, source: Callable[[], Source], workload: str, opening: Callable[[], None]) -> _Warm:
        with self._guard:
            warm = self._workers.get(dataset_id)
        if warm is not None and warm.session.alive:  # the common case: no start lock to take
            return warm
        with self._guard:
            starting = self._starting.setdefault(dataset_id, threading.Lock())
        with starting:  # one start per dataset; queries arriving meanwhile wait for it
            with self._guard:
                warm = self._workers.get(dataset_id)
            if warm is not None and warm.session.alive:
                return warm
            started = source()
            if started.id != dataset_id:
                raise ValueError("the source names another dataset")
            warm = self._start(started, workload, opening)
            with self._guard:
                self._workers[dataset_id] = warm
            return warm

    def _start(self, source: Source, workload: str, opening: Callable[[], None]) -> _Warm:
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = Path(tempfile.mkdtemp(prefix=f"stats-{source.id}-", dir=self._work_dir))
        try:
            inputs = work / "in"
            inputs.mkdir()
            hello, nonce = self._stage(source, inputs, workload)
            session = self._open(inputs, source.id)
            try:
                opening()  # the worker is about to receive the key: from here on the data counts as opened
                ready = json.loads(session.call(json.dumps(hello).encode(), timeout=LOAD_SECONDS))
            except BaseException as failure:
                session.close()
                if not isinstance(failure, (SessionBroken, ValueError)):
                    raise
                log.warning("statistics worker did not start: %s", session.error_type())
                ready = None
            if ready != {"ready": True}:
                session.close()
                self._on_start("failed")
                raise WorkerFailed("worker")
            self._on_start("started")
            return _Warm(session, nonce, time.monotonic())
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the sandbox holds its own open view of the input

    def _stage(self, source: Source, inputs: Path, workload: str) -> tuple[dict[str, Any], str]:
        """Copies the ciphertext in and has the broker release each key: (the worker's first frame, the nonce)."""
        if isinstance(source, DatasetSource):
            shutil.copyfile(source.blob_path, inputs / "dataset.blob")  # ciphertext only
            secrets, nonce = self._release_key(source.id, source.wrapped_key, workload)
            hello = {"secrets": secrets, "dataset_id": source.id, "patient_column": source.patient_column,
                     "public_group_keys": source.public_group_keys}
            return ({**hello, "stream": source.stream} if source.stream is not None else hello), nonce
        sites, nonces = [], []
        for index, site in enumerate(source.sites):
            shutil.copyfile(site.blob_path, inputs / f"site{index}.blob")
            secrets, nonce = self._release_key(site.dataset_id, site.wrapped_key, workload)
            nonces.append(nonce)
            sites.append({"dataset_id": site.dataset_id, "blob": f"site{index}.blob", "secrets": secrets, "columns": site.columns,
                          "patient_column": site.patient_column, "linkage_column": site.linkage_column})
        return {"sites": sites, "patient_column": source.unit_column, "public_group_keys": source.public_group_keys}, nonces[0]

    def _release_key(self, dataset_id: str, wrapped_key: bytes, workload: str) -> tuple[dict[str, str], str]:
        dataset_key = self._unwrap_key(dataset_id, wrapped_key)
        try:
            secrets = self._enclave.release_to_sandbox(workload, dataset_id, dataset_key)
        except enclave_sim.AttestationError:
            self._on_start("refused")
            raise WorkerFailed("attestation") from None
        nonce = secrets.pop("nonce")
        return secrets, nonce

    def _open(self, inputs: Path, key: str) -> SandboxSession:
        request = SandboxRequest(argv=STATS_WORKER_ARGV, inputs={"job": inputs}, env={"CLEANROOM_REQUEST_ID": f"stats-{key}"})
        try:
            return SandboxSession(self._host, request, self._policy)
        except SessionBroken:
            self._on_start("failed")
            raise WorkerFailed("worker") from None

    # --- ending --------------------------------------------------------------------------------

    def _drop(self, dataset_id: str, warm: _Warm) -> None:
        warm.session.close()
        with self._guard:
            if self._workers.get(dataset_id) is warm:
                del self._workers[dataset_id]

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_SECONDS):
            self.reap()

    def reap(self, now: float | None = None) -> int:
        """Close workers idle past the limit or already dead; returns how many were closed."""
        now = time.monotonic() if now is None else now
        with self._guard:
            stale = [(d, w) for d, w in self._workers.items() if not w.session.alive or now - w.last_used > self._idle]
        closed = 0
        for dataset_id, warm in stale:
            with warm.lock:  # never under a query in flight
                idle = warm.in_flight == 0
                warm.retired = warm.retired or idle
            if idle:
                self._drop(dataset_id, warm)
                closed += 1
        return closed
