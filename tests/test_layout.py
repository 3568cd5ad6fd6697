"""Architecture rules that keep the code a place people want to work in."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
FORBIDDEN_IN_DOMAIN = {"grpc", "sqlalchemy", "torch", "opacus", "pyarrow", "google"}


def test_domain_imports_no_transport_storage_or_torch() -> None:
    offenders = []
    for path in (ROOT / "cleanroom" / "domain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_DOMAIN]
    assert offenders == []


def test_generated_stubs_match_the_protos() -> None:
    result = subprocess.run([sys.executable, "-m", "cleanroom.codegen", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_stubs_are_not_committed() -> None:
    tracked = subprocess.run(["git", "ls-files", "cleanroom/v1"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert tracked in ([], ["cleanroom/v1/__init__.py"])
