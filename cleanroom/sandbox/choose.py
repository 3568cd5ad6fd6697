"""Pick a sandbox backend: gVisor when it works here, bubblewrap otherwise, or a forced one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cleanroom.sandbox.base import SandboxLauncher
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.runsc import RunscLauncher

PREFERENCES = ("auto", "runsc", "bwrap")


def phase_b_preference(configured: str) -> str:
    """Training and evaluation run service code only, so "auto" means bubblewrap for them: torch
    starts far faster there than under gVisor's ptrace platform."""
    return "bwrap" if configured == "auto" else configured


class SandboxUnavailable(RuntimeError):
    """The backend asked for (or every backend, for "auto") cannot run on this host."""


def choose_launcher(preference: str = "auto", *, deny: Sequence[Path] = ()) -> tuple[SandboxLauncher, str]:
    """(launcher, why) — the reason also lands in every SandboxResult.backend_reason.

    `deny` lists paths no mount may overlap; pass the state directory.
    """
    if preference not in PREFERENCES:
        raise ValueError(f"sandbox preference must be one of {PREFERENCES}, not {preference!r}")
    runsc, bwrap = RunscLauncher(deny=deny), BubblewrapLauncher(deny=deny)
    if preference == "bwrap":
        return _forced(bwrap, "bubblewrap (forced by configuration)")
    runsc_ok, runsc_why = runsc.available()
    if preference == "runsc" or runsc_ok:
        if not runsc_ok:
            raise SandboxUnavailable(f"runsc unavailable: {runsc_why}")
        return _chosen(runsc, runsc_why if preference == "auto" else f"{runsc_why} (forced by configuration)")
    bwrap_ok, bwrap_why = bwrap.available()
    if not bwrap_ok:
        raise SandboxUnavailable(f"no sandbox backend: runsc unavailable: {runsc_why}; bwrap unavailable: {bwrap_why}")
    return _chosen(bwrap, f"bubblewrap fallback: runsc unavailable: {runsc_why}")


def _forced(launcher: BubblewrapLauncher | RunscLauncher, reason: str) -> tuple[SandboxLauncher, str]:
    ok, why = launcher.available()
    if not ok:
        raise SandboxUnavailable(f"{launcher.name} unavailable: {why}")
    return _chosen(launcher, reason)


def _chosen(launcher: BubblewrapLauncher | RunscLauncher, reason: str) -> tuple[SandboxLauncher, str]:
    launcher.reason = reason
    return launcher, reason
