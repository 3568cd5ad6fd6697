"""The sandbox backend registry decides, for every workload, where it runs; nothing else names a
backend. No sandbox starts here: probes are scripted."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cleanroom.observability.metrics import Metrics
from cleanroom.sandbox import backends
from cleanroom.sandbox.backends import Backend, Placement, StatisticsHost, Workload
from cleanroom.sandbox.base import Outcome, SandboxPolicy, SandboxRequest, SandboxResult, SetupError
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.probed import ProbedLauncher
from cleanroom.sandbox.runsc import RunscLauncher
from cleanroom.server import config as server_config


def _probes(monkeypatch: pytest.MonkeyPatch, runsc: tuple[bool, str], bwrap: tuple[bool, str]) -> None:
    monkeypatch.setattr(RunscLauncher, "available", lambda self: runsc)
    monkeypatch.setattr(BubblewrapLauncher, "available", lambda self: bwrap)


GOOD = {"runsc": (True, "gVisor runsc with --platform=ptrace"), "bwrap": (True, "bubblewrap works")}


@pytest.mark.parametrize(("preference", "intake", "training", "statistics"), [
    ("auto", "runsc", "bwrap", "bwrap"),     # gVisor for manufacturer code; bubblewrap where torch must start fast
    ("runsc", "runsc", "runsc", "runsc"),    # a named backend serves every workload it can host
    ("bwrap", "bwrap", "bwrap", "bwrap"),
])
def test_each_workload_gets_the_backend_its_entry_says(monkeypatch, preference, intake, training, statistics) -> None:
    _probes(monkeypatch, GOOD["runsc"], GOOD["bwrap"])
    placement = Placement()
    assert backends.choose_local(preference, Workload.INTAKE, placement)[0].name == intake
    assert backends.choose_local(preference, Workload.TRAINING, placement)[0].name == training
    assert backends.choose_session_host(preference, placement)[0].name == statistics


def test_reasons_say_why_a_backend_was_chosen(monkeypatch) -> None:
    _probes(monkeypatch, GOOD["runsc"], GOOD["bwrap"])
    launcher, reason = backends.choose_local("runsc", Workload.TRAINING, Placement())
    assert reason == "gVisor runsc with --platform=ptrace (forced by configuration)" == launcher.reason
    _probes(monkeypatch, (False, "runsc is not installed"), GOOD["bwrap"])
    assert backends.choose_local("auto", Workload.INTAKE, Placement())[1] == "bubblewrap fallback: runsc unavailable: runsc is not installed"
    _probes(monkeypatch, (False, "runsc is not installed"), (False, "bwrap is not installed"))
    with pytest.raises(backends.SandboxUnavailable, match="^no sandbox backend: runsc unavailable: .*; bwrap unavailable: "):
        backends.choose_local("auto", Workload.INTAKE, Placement())
    with pytest.raises(backends.SandboxUnavailable, match="^bwrap unavailable: bwrap is not installed$"):
        backends.choose_local("auto", Workload.TRAINING, Placement())  # gVisor alone does not serve training


def test_a_backend_that_cannot_host_sessions_passes_statistics_to_auto_and_says_why(monkeypatch) -> None:
    _probes(monkeypatch, GOOD["runsc"], GOOD["bwrap"])
    kubernetes = backends.get("kubernetes")
    assert kubernetes.sessions is None and "stdin" in kubernetes.no_sessions
    choice = backends.candidates("kubernetes", Workload.STATISTICS)
    assert [b.name for b in choice.entries] == ["bwrap"] and not choice.forced and kubernetes.no_sessions in choice.passed_over
    host, reason = backends.choose_session_host("kubernetes", Placement())
    assert host.name == "bwrap" and reason == f"bubblewrap works (kubernetes cannot host statistics workers: {kubernetes.no_sessions})"
    ok, detail = backends.check("kubernetes", Workload.STATISTICS, [])
    assert ok and "bubblewrap works" in detail and "cannot host statistics workers" in detail
    assert backends.check("kubernetes", Workload.INTAKE, []) == (True, f"{kubernetes.title}; not probed from here")


def test_the_self_check_names_the_missing_tool_and_its_install(monkeypatch) -> None:
    _probes(monkeypatch, (False, "runsc is not installed"), (False, "bwrap is not installed"))
    ok, detail = backends.check("auto", Workload.INTAKE, [])
    assert not ok and "apt-get install runsc" in detail and "apt-get install bubblewrap" in detail


def test_the_statistics_host_is_chosen_once_on_first_use(monkeypatch) -> None:
    _probes(monkeypatch, GOOD["runsc"], GOOD["bwrap"])
    built: list[str] = []

    def counted(placement: Placement) -> BubblewrapLauncher:
        built.append("bwrap")
        return BubblewrapLauncher(deny=placement.deny)

    monkeypatch.setattr(backends, "BACKENDS", tuple(dataclasses.replace(b, sessions=counted) if b.name == "bwrap" else b
                                                    for b in backends.BACKENDS))
    host = StatisticsHost("auto", Placement())
    assert host.name == "none" and not built  # nothing chosen or probed at start-up
    assert host.available() == (True, "bubblewrap works") and host.name == "bwrap"
    assert host.available()[0] and host.reason == "bubblewrap works" and built == ["bwrap"]  # chosen once, then kept
    with pytest.raises(ValueError):
        StatisticsHost("docker", Placement())


def test_no_statistics_backend_fails_as_a_setup_error(monkeypatch, tmp_path) -> None:
    _probes(monkeypatch, GOOD["runsc"], (False, "bwrap is not installed"))
    host = StatisticsHost("auto", Placement())
    with pytest.raises(SetupError, match="bwrap unavailable"):
        host.prepare_session(SandboxRequest(argv=("true",)), SandboxPolicy(), tmp_path)
    assert host.name == "none"


class _Fake(ProbedLauncher):
    """A backend that exists only in this test: one module (this class) plus one registry entry."""

    name = "fake"
    works = "fake works"

    def available(self) -> tuple[bool, str]:
        return True, self.works

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        return SandboxResult(Outcome.EXITED, 0, b"", b"", self.name, self.reason, 0.1)


def test_a_new_backend_is_one_registry_entry(monkeypatch) -> None:
    """Configuration, metrics labels and every workload's launcher follow the registry alone."""
    fake = Backend("fake", "a fake sandbox", local=lambda placement: _Fake(deny=placement.deny),
                   no_sessions="it is a test double")
    monkeypatch.setattr(backends, "BACKENDS", (*backends.BACKENDS, fake))
    assert "fake" in backends.preferences()
    args = argparse.Namespace(state_dir=None, sandbox="fake")
    assert server_config.build_config(args, {"CLEANROOM_STATE_DIR": "/tmp/cleanroom-fake-state"}).sandbox == "fake"
    metrics = Metrics()
    assert metrics.registry.get_sample_value("cleanroom_sandbox_kills_total", {"backend": "fake", "limit": "memory"}) == 0
    launcher, reason = backends.launcher_for("fake", Workload.TRAINING, Placement(metrics=metrics))
    assert reason == "chosen on first use"
    result = launcher.run(SandboxRequest(argv=("true",)), SandboxPolicy())
    assert result.backend == "fake" and result.backend_reason == "fake works (forced by configuration)"
    assert metrics.registry.get_sample_value("cleanroom_sandbox_starts_total", {"backend": "fake", "purpose": "training"}) == 1
    _probes(monkeypatch, GOOD["runsc"], GOOD["bwrap"])
    assert backends.choose_session_host("fake", Placement())[0].name == "bwrap"  # it hosts no sessions: "auto" does


def test_an_unknown_backend_is_refused_by_the_configuration() -> None:
    args = argparse.Namespace(state_dir=None, sandbox="docker")
    with pytest.raises(SystemExit, match="--sandbox must be auto, runsc, bwrap or kubernetes"):
        server_config.build_config(args, {"CLEANROOM_STATE_DIR": str(Path("/tmp/cleanroom-x-state"))})
