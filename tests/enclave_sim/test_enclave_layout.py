"""enclave_sim stays importable by both the SDK and the service: pure Python plus `cryptography`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "enclave_sim"
ALLOWED_THIRD_PARTY = {"cryptography"}


def _imported_top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_enclave_sim_imports_only_the_standard_library_and_cryptography() -> None:
    offenders = {}
    for path in sorted(PACKAGE.glob("*.py")):
        foreign = _imported_top_level_names(path) - set(sys.stdlib_module_names) - ALLOWED_THIRD_PARTY - {"enclave_sim", "__future__"}
        if foreign:
            offenders[path.name] = sorted(foreign)
    assert offenders == {}
    assert len(list(PACKAGE.glob("*.py"))) >= 8  # the scan really looked at the package


def test_enclave_sim_modules_stay_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_the_package_says_it_is_a_simulation() -> None:
    import enclave_sim

    assert "SIMULATION" in (enclave_sim.__doc__ or "")
    assert "does NOT protect" in enclave_sim.__doc__
