"""The sandbox backends: one entry each, the one place a backend is named.

Everything that depends on which backends exist reads `BACKENDS`: the `--sandbox` choices, their
help and their validation (server/config.py), the start-up self-check (server/selfcheck.py), the
`backend` labels the metrics start at zero (server/metrics.py), and the launchers of every
workload built by the app (server/app.py): model intake, training and evaluation, and the
long-lived statistics workers.

Adding a backend touches exactly:

  1. `cleanroom/sandbox/<name>.py`: the launcher (base.SandboxLauncher: `name`, `available()`,
     `run()`); to host statistics workers also `prepare_session()` (session.SessionHost). A backend
     on this host subclasses probed.ProbedLauncher (a real probe before first use).
  2. One `Backend(...)` entry in `BACKENDS` below.
  3. Its tests, in `tests/sandbox/test_<name>.py`. The shared suites read the registry, so a
     local backend also runs every end-to-end sandbox test (tests/sandbox/test_sandbox.py and
     test_sandbox_cancel.py) and, with `sessions`, the session tests (test_session_backends.py).

A backend that cannot host a workload says so in its entry: without `sessions`, `no_sessions`
gives the reason, and statistics workers then run where "auto" puts them (see `candidates`).

Workloads and what "auto" means for each (an entry's `auto` lists the workloads it serves under
"auto"; the first available entry in the order of BACKENDS wins):
  * intake (phase A, manufacturer code, no data): gVisor first, bubblewrap as the fallback;
  * training and evaluation (phase B, service code with data): bubblewrap, where torch starts far
    faster than under gVisor's ptrace platform;
  * statistics (warm workers, service code with data): bubblewrap, for the same reason.
A backend named by the configuration serves every workload it can host.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from cleanroom.sandbox.base import SandboxLauncher, SandboxPolicy, SandboxRequest, SetupError
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.metered import MeteredLauncher
from cleanroom.sandbox.probed import ProbedLauncher
from cleanroom.sandbox.runsc import RunscLauncher
from cleanroom.sandbox.session import SessionHost
from cleanroom.sandbox.supervise import Launch

if TYPE_CHECKING:
    from cleanroom.observability.metrics import Metrics

AUTO = "auto"


class Workload(enum.Enum):
    """What a sandbox runs; the value is the `purpose` label of the sandbox metrics."""

    INTAKE = "intake"            # phase A: the manufacturer's code, no data
    TRAINING = "training"        # phase B: training and evaluation, service code with data
    STATISTICS = "statistics"    # warm statistics workers: long-lived sessions with data


class SandboxUnavailable(RuntimeError):
    """The backend asked for (or every backend "auto" may use) cannot run on this host."""


@dataclass(frozen=True)
class Placement:
    """Where sandboxes go, from the server configuration; what a backend's factory may use."""

    deny: tuple[Path, ...] = ()                       # no mount may overlap these (the state directory)
    worker_image: str = "cleanroom:0.1.0"             # remote backends: the worker container image
    worker_namespace: str = "cleanroom-workers"
    job_volume: Path = Path("/var/lib/cleanroom/jobs")
    metrics: Metrics | None = None                    # remote backends count their own sandboxes


@dataclass(frozen=True)
class Backend:
    """One sandbox backend. Exactly one of `local` and `remote` is set.

    `local` backends run on this host: each workload's launcher is chosen on first use after a real
    probe (so a host without one still starts, and its workloads fail closed) and counted by
    MeteredLauncher. `remote` backends (a cluster) are built at start-up, are not probed from here,
    and count their own sandboxes.
    """

    name: str                                  # the --sandbox value, the metrics label, SandboxResult.backend
    title: str                                 # how reasons and the self-check call it
    local: Callable[[Placement], ProbedLauncher] | None = None
    remote: Callable[[Placement, Workload], SandboxLauncher] | None = None
    auto: frozenset[Workload] = frozenset()    # the workloads "auto" may give it
    sessions: Callable[[Placement], SessionHost] | None = None  # hosts long-lived statistics sessions
    no_sessions: str = ""                      # why it cannot, when `sessions` is None
    install: str = ""                          # how to install its tool, for the self-check

    def __post_init__(self) -> None:
        if (self.local is None) == (self.remote is None):
            raise ValueError(f"backend {self.name}: exactly one of local and remote")
        if (self.sessions is None) != bool(self.no_sessions):
            raise ValueError(f"backend {self.name}: without sessions, no_sessions says why (and only then)")
        if self.local is None and (self.sessions is not None or self.auto):
            raise ValueError(f"backend {self.name}: sessions and \"auto\" probe on this host: a remote backend has neither")

    def hosts(self, workload: Workload) -> bool:
        """Whether it can run `workload` (every backend runs one-shot work; sessions need `sessions`)."""
        return self.sessions is not None if workload is Workload.STATISTICS else True


def _bwrap(placement: Placement) -> BubblewrapLauncher:
    return BubblewrapLauncher(deny=placement.deny)


def _runsc(placement: Placement) -> RunscLauncher:
    return RunscLauncher(deny=placement.deny)


def _kubernetes(placement: Placement, workload: Workload) -> SandboxLauncher:
    from cleanroom.sandbox.kubernetes import KubernetesLauncher  # needs the kubernetes package

    return KubernetesLauncher.from_cluster(image=placement.worker_image, namespace=placement.worker_namespace,
                                           purpose=workload.value, work_root=placement.job_volume,
                                           metrics=placement.metrics)


# In order of preference under "auto".
BACKENDS: tuple[Backend, ...] = (
    Backend("runsc", "gVisor runsc", local=_runsc, sessions=_runsc, auto=frozenset({Workload.INTAKE}),
            install="apt-get install runsc"),
    Backend("bwrap", "bubblewrap", local=_bwrap, sessions=_bwrap,
            auto=frozenset({Workload.INTAKE, Workload.TRAINING, Workload.STATISTICS}),
            install="apt-get install bubblewrap"),
    Backend("kubernetes", "Kubernetes worker Jobs (RuntimeClass gvisor)", remote=_kubernetes,
            no_sessions="a worker Job's stdin is a file staged before it starts and its output is read after it "
                        "ends: no channel stays open for a warm worker's queries"),
)


def names() -> tuple[str, ...]:
    return tuple(backend.name for backend in BACKENDS)


def preferences() -> tuple[str, ...]:
    """What `--sandbox` accepts."""
    return (AUTO, *names())


def get(name: str) -> Backend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ValueError(f"sandbox preference must be one of {preferences()}, not {name!r}")


@dataclass(frozen=True)
class Candidates:
    """The backends a workload may use, in order of preference."""

    entries: tuple[Backend, ...]
    forced: bool = False     # one backend, named by the configuration
    passed_over: str = ""    # why the named backend was passed over for this workload ("" if it was not)

    @property
    def remote(self) -> Backend | None:
        """The named backend when it is a remote one (built at start-up, never probed here)."""
        return self.entries[0] if self.forced and self.entries[0].remote is not None else None


def candidates(preference: str, workload: Workload) -> Candidates:
    """The backends `workload` may use under `preference`: the named backend alone when it can host
    the workload; under "auto", or when the named one cannot host it, the entries whose `auto`
    lists the workload (and then `passed_over` says why the named one was not used)."""
    auto = tuple(backend for backend in BACKENDS if workload in backend.auto)
    if preference == AUTO:
        return Candidates(auto)
    named = get(preference)
    if named.hosts(workload):
        return Candidates((named,), forced=True)
    return Candidates(auto, passed_over=f"{named.name} cannot host {workload.value} workers: {named.no_sessions}")


# --- choosing on this host ---------------------------------------------------------------------


class _Probed(Protocol):
    def available(self) -> tuple[bool, str]: ...


P = TypeVar("P", bound=_Probed)


def _pick(preference: str, workload: Workload, make: Callable[[Backend], P | None]) -> tuple[P, str]:
    """The first candidate whose real probe passes, with why it was chosen; raises SandboxUnavailable."""
    choice = candidates(preference, workload)
    failed: list[str] = []
    for backend in choice.entries:
        launcher = make(backend)
        if launcher is None:
            raise SandboxUnavailable(f"{backend.name} does not run on this host (not probed from here)")
        ok, why = launcher.available()
        if ok:
            if choice.forced:
                return launcher, f"{why} (forced by configuration)"
            reason = f"{backend.title} fallback: {'; '.join(failed)}" if failed else why
            return launcher, f"{reason} ({choice.passed_over})" if choice.passed_over else reason
        failed.append(f"{backend.name} unavailable: {why}")
    detail = "; ".join(failed) if len(failed) == 1 else f"no sandbox backend: {'; '.join(failed)}"
    raise SandboxUnavailable(f"{detail} ({choice.passed_over})" if choice.passed_over else detail)


def choose_local(preference: str, workload: Workload, placement: Placement) -> tuple[SandboxLauncher, str]:
    """(launcher, why) for a one-shot workload on this host; the reason also lands in every
    SandboxResult.backend_reason. Raises SandboxUnavailable."""
    launcher, reason = _pick(preference, workload, lambda b: b.local(placement) if b.local else None)
    launcher.reason = reason
    return launcher, reason


def choose_session_host(preference: str, placement: Placement) -> tuple[SessionHost, str]:
    """(host, why) for statistics sessions on this host. Raises SandboxUnavailable."""
    return _pick(preference, Workload.STATISTICS, lambda b: b.sessions(placement) if b.sessions else None)


def choose_launcher(preference: str = AUTO, *, deny: Sequence[Path] = ()) -> tuple[SandboxLauncher, str]:
    """Model intake's pick on this host (gVisor when it works here, bubblewrap otherwise, or a
    forced one): (launcher, why). `deny` lists paths no mount may overlap; pass the state directory."""
    if preference != AUTO and get(preference).local is None:
        raise ValueError(f"{preference} is not a backend on this host")
    return choose_local(preference, Workload.INTAKE, Placement(deny=tuple(Path(d) for d in deny)))


# --- what the app builds -----------------------------------------------------------------------


def launcher_for(preference: str, workload: Workload, placement: Placement) -> tuple[SandboxLauncher, str]:
    """The launcher of a one-shot workload (intake, training, evaluation) and why: a remote
    backend's, built now; else a local one chosen on first use, counted in the metrics."""
    remote = candidates(preference, workload).remote
    if remote is not None and remote.remote is not None:
        return remote.remote(placement, workload), remote.title
    return MeteredLauncher(lambda: choose_local(preference, workload, placement), placement.metrics, workload.value), \
        "chosen on first use"


class StatisticsHost:
    """The statistics workers' backend (a SessionHost), chosen on first use and kept: probed once.
    `name` is the backend chosen, "none" before (or while none works here)."""

    def __init__(self, preference: str, placement: Placement) -> None:
        candidates(preference, Workload.STATISTICS)  # a bad preference fails now, not at the first query
        self._preference, self._placement = preference, placement
        self._lock = threading.Lock()
        self._host: SessionHost | None = None
        self.reason = ""

    @property
    def name(self) -> str:
        return self._host.name if self._host is not None else "none"

    def _chosen(self) -> SessionHost:
        with self._lock:
            if self._host is None:
                self._host, self.reason = choose_session_host(self._preference, self._placement)
            return self._host

    def available(self) -> tuple[bool, str]:
        try:
            return self._chosen().available()
        except SandboxUnavailable as exc:
            return False, str(exc)

    def prepare_session(self, request: SandboxRequest, policy: SandboxPolicy, scratch: Path) -> Launch:
        try:
            host = self._chosen()
        except SandboxUnavailable as exc:
            raise SetupError(str(exc)) from None
        return host.prepare_session(request, policy, scratch)


# --- the self-check ----------------------------------------------------------------------------


def check(preference: str, workload: Workload, deny: Sequence[Path]) -> tuple[bool, str]:
    """Whether `workload` can run here under `preference`, and the detail: the real probe of the
    backend it would get; a remote backend is not probed from here. A missing tool names its install."""
    remote = candidates(preference, workload).remote
    if remote is not None:
        return True, f"{remote.title}; not probed from here"
    placement = Placement(deny=tuple(deny))
    try:
        if workload is Workload.STATISTICS:
            return True, choose_session_host(preference, placement)[1]
        return True, choose_local(preference, workload, placement)[1]
    except SandboxUnavailable as exc:
        message = str(exc)
    hints = [b.install for b in BACKENDS if b.install and f"{b.name} is not installed" in message]
    return False, message + (f" (install: {'; '.join(hints)})" if hints else "")
