"""Sandboxes for untrusted or data-bearing work: gVisor (runsc), bubblewrap, and (later) Kubernetes
Jobs, all behind one interface (base.py). `choose_launcher` picks one for this host."""

from cleanroom.sandbox.base import Outcome, SandboxLauncher, SandboxPolicy, SandboxRequest, SandboxResult
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.choose import SandboxUnavailable, choose_launcher
from cleanroom.sandbox.runsc import RunscLauncher

__all__ = [
    "BubblewrapLauncher", "Outcome", "RunscLauncher", "SandboxLauncher", "SandboxPolicy", "SandboxRequest",
    "SandboxResult", "SandboxUnavailable", "choose_launcher",
]
