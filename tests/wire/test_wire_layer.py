"""The wire layer is one module per proto file, shared by the server and the SDK: it imports the
generated messages, the domain and the standard library, nothing of the server, storage or engines."""

from __future__ import annotations

import ast

from cleanroom.domain.approvals import MAX_STATS_ROWS_PER_PATIENT
from cleanroom.statistics.engine.query import MAX_ROWS_PER_PATIENT
from tests.paths import REPO_ROOT

WIRE = REPO_ROOT / "cleanroom" / "wire"
PROTOS = REPO_ROOT / "proto" / "cleanroom" / "v1"
ALLOWED_FIRST_PARTY = ("cleanroom.domain", "cleanroom.v1", "cleanroom.wire")
# wire/stats.py converts statistics queries, whose types live with the statistics engine for now.
ALLOWED_IN = {"stats.py": ("cleanroom.statistics.engine",)}


def _imports(path: str) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse((WIRE / path).read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_one_module_per_proto_file() -> None:
    modules = sorted(p.stem for p in WIRE.glob("*.py") if p.name != "__init__.py")
    assert modules == sorted(p.stem for p in PROTOS.glob("*.proto"))


def test_wire_modules_import_only_protos_the_domain_and_the_standard_library() -> None:
    offenders = []
    for path in sorted(WIRE.glob("*.py")):
        allowed = ALLOWED_FIRST_PARTY + ALLOWED_IN.get(path.name, ())
        for name in _imports(path.name):
            first_party = name.split(".")[0] in ("cleanroom", "enclave_sim")
            if first_party and not name.startswith(allowed):
                offenders.append(f"{path.name}: {name}")
            if name.split(".")[0] in ("grpc", "sqlalchemy", "torch", "opendp", "numpy", "pyarrow"):
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_the_policy_bound_on_statistics_rows_is_the_engines() -> None:
    assert MAX_STATS_ROWS_PER_PATIENT == MAX_ROWS_PER_PATIENT
