"""Architecture rules that keep the code a place people want to work in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


# --- package dependencies -------------------------------------------------------------------------
# A package is every directory with an __init__.py under cleanroom/ and enclave_sim/. Package A
# depends on B when a module directly in A imports anything in B, at module level or inside a
# function (a lazy import is still a dependency); imports under `if TYPE_CHECKING:` are annotations
# only and do not count. A subpackage may import its parent's modules and the reverse is the
# parent's own business: both are one room.

SOURCE_ROOTS = ("cleanroom", "enclave_sim")
GENERATED = ("cleanroom/v1", "cleanroom/storage/migrations")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str) -> str:
    return module if (ROOT / Path(*module.split("."))).is_dir() else module.rpartition(".")[0]


def _resolve(name: str) -> str | None:
    parts = name.split(".")
    while parts:
        candidate = ROOT / Path(*parts)
        if candidate.is_dir() or candidate.with_suffix(".py").exists():
            return ".".join(parts)
        parts.pop()
    return None


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        names.extend(_imported_names(node))
    return names


def _sources() -> list[Path]:
    paths = [p for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*.py")]
    return [p for p in paths if not str(p.relative_to(ROOT)).startswith(GENERATED)]


def package_dependencies() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _sources():
        module = _module_name(path)
        source = module if path.name == "__init__.py" else _package_of(module)
        for name in _imported_names(ast.parse(path.read_text())):
            target = _resolve(name) if name.startswith(SOURCE_ROOTS) else None
            if target is None or target.startswith(GENERATED[0].replace("/", ".")):
                continue
            package = _package_of(target)
            one_room = package == source or source.startswith(package + ".") or package.startswith(source + ".")
            if not one_room:
                graph.setdefault(source, set()).add(package)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    advanced = True
                    break
                if succ in stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []


def test_packages_do_not_import_each_other_in_a_cycle() -> None:
    graph = package_dependencies()
    assert "cleanroom.server" in graph, "the dependency scan found nothing: it is broken, not the code clean"
    found = cycles(graph)
    detail = {member: sorted(graph[member] & set(component)) for component in found for member in component}
    assert found == [], f"package cycles (package -> packages it imports inside the cycle): {detail}"


def test_the_top_level_holds_packages_and_a_handful_of_modules() -> None:
    modules = sorted(p.name for p in (ROOT / "cleanroom").glob("*.py"))
    assert modules == ["__init__.py", "codegen.py"], modules


# What each package may import besides cleanroom.domain: the table in ARCHITECTURE.md. A new arrow
# is a design decision: add it here and there together, or find the room the code belongs in.
SERVICES = {"attestation", "crypto", "datasets", "identity", "jobs", "models", "observability", "privacy", "sandbox", "statistics", "storage"}
MAY_IMPORT: dict[str, set[str]] = {
    "domain": {"enclave_sim"},
    "enclave_sim": set(),
    "trainer": set(),
    "statistics.engine": set(),
    "storage": set(),
    "crypto": {"storage"},
    "identity": {"crypto", "storage"},
    "sandbox": set(),
    "observability": {"sandbox"},
    "attestation": {"enclave_sim", "observability", "privacy", "sandbox", "storage"},
    "datasets": {"crypto", "identity", "observability", "storage"},
    "models": {"crypto", "datasets", "identity", "observability", "sandbox", "storage", "enclave_sim"},
    "privacy": {"observability", "storage"},
    "jobs": {"attestation", "crypto", "identity", "models", "observability", "privacy", "sandbox", "storage", "enclave_sim"},
    "statistics": {"attestation", "jobs", "observability", "privacy", "sandbox", "storage", "statistics.engine", "enclave_sim"},
    "notifications": {"observability", "privacy", "storage"},
    "worker": {"crypto", "models", "sandbox", "statistics.engine", "trainer", "enclave_sim"},
    "wire": {"statistics.engine"},
    "api": SERVICES - {"storage", "crypto", "sandbox"} | {"server", "wire", "statistics.engine"},  # services, never their storage
    "server": SERVICES | {"statistics.engine", "enclave_sim", "notifications"},
    "sdk": {"wire", "models", "statistics.engine", "trainer", "enclave_sim"},
    # The web console is an API client: what it shows and does goes through the SDK.
    "console": {"sdk", "wire", "statistics.engine", "trainer", "enclave_sim"},
    "cli": {"console", "sdk", "api", "server", "storage", "attestation", "statistics.engine", "enclave_sim"},
}


def _room(package: str) -> str:
    """The table's name for a package: cleanroom.models.intake -> models; enclave_sim stays itself."""
    name = package.removeprefix("cleanroom.")
    return next((room for room in sorted(MAY_IMPORT, key=len, reverse=True) if name == room or name.startswith(room + ".")), name)


def test_every_package_imports_only_what_the_architecture_allows() -> None:
    unexpected = {}
    for package, targets in package_dependencies().items():
        room = _room(package)
        assert room in MAY_IMPORT, f"{package} is a new room: add it to ARCHITECTURE.md and MAY_IMPORT"
        extra = {_room(t) for t in targets} - MAY_IMPORT[room] - {room, "domain"}
        if extra:
            unexpected[package] = sorted(extra)
    assert unexpected == {}, f"imports outside ARCHITECTURE.md's table: {unexpected}"


def test_the_architecture_table_matches_the_document() -> None:
    document = (ROOT / "ARCHITECTURE.md").read_text()
    for room in MAY_IMPORT:
        path = room.replace(".", "/")
        assert f"| `{path}/` |" in document, f"ARCHITECTURE.md has no row for {path}/"
