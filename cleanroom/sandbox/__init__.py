"""Sandboxes for untrusted or data-bearing work: gVisor (runsc), bubblewrap and Kubernetes Jobs, all
behind one interface (base.py), one entry each in the registry (backends.py). `choose_launcher`
picks one for model intake on this host."""

from cleanroom.sandbox.backends import SandboxUnavailable, choose_launcher
from cleanroom.sandbox.base import Outcome, SandboxLauncher, SandboxPolicy, SandboxRequest, SandboxResult
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.runsc import RunscLauncher

__all__ = [
    "BubblewrapLauncher", "Outcome", "RunscLauncher", "SandboxLauncher", "SandboxPolicy", "SandboxRequest",
    "SandboxResult", "SandboxUnavailable", "choose_launcher",
]
