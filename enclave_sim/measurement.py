"""Measurements (what code runs) and workload hashes (on what, with which parameters).

The measurement stands in for a TEE's launch measurement: a hash chain over the trainer's code
files, the locked dependency versions and the sandbox policy. Each step is
h = sha256(h || len(label) || label || sha256(item)), starting from sha256("cleanroom-measurement-v1"),
so any changed byte, version or policy field gives a different measurement, and the labels keep a
code file from ever being read as a dependency. Everything is sorted first: the same inputs give
the same measurement on every machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from enclave_sim._schema import check_relative_path
from enclave_sim.canonical import canonical_json, is_hex, sha256_hex

MEASUREMENT_DOMAIN = b"cleanroom-measurement-v1"
WORKLOAD_DOMAIN = b"cleanroom-workload-v1\x00"
PACKAGE_DOMAIN = b"cleanroom-model-package-v1\x00"
DEFAULT_CODE_PATTERNS = ("**/*.py",)

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_PIN = re.compile(r"(?P<name>[A-Za-z0-9._-]+)(?:\[[A-Za-z0-9._,-]+\])?==(?P<version>\S+)")


def _extend(chain: bytes, label: bytes, item: bytes) -> bytes:
    return hashlib.sha256(chain + bytes([len(label)]) + label + hashlib.sha256(item).digest()).digest()


def measure(code_files: Mapping[str, bytes], locked_dependencies: Mapping[str, str], sandbox_policy: Mapping[str, Any]) -> str:
    """The measurement (sha256 hex) of trainer code, exact dependency pins and sandbox policy."""
    chain = hashlib.sha256(MEASUREMENT_DOMAIN).digest()
    for path in sorted(code_files):
        item = canonical_json([check_relative_path(path), sha256_hex(bytes(code_files[path]))])
        chain = _extend(chain, b"code-file", item)
    for line in dependency_lines(locked_dependencies):
        chain = _extend(chain, b"dependency", line.encode("ascii"))
    return _extend(chain, b"sandbox-policy", canonical_json(dict(sandbox_policy))).hex()


def normalise_dependency_name(name: str) -> str:
    """PEP 503 normalisation: pip treats "Torch", "torch" and "tor_ch" alike, so must we."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a distribution name: {name!r}")
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_lines(locked_dependencies: Mapping[str, str]) -> list[str]:
    """Sorted "name==version" lines; refuses duplicates after normalisation and non-exact versions."""
    lines: dict[str, str] = {}
    for name, version in locked_dependencies.items():
        normalised = normalise_dependency_name(name)
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise ValueError(f"{name}: version must be an exact pin, got {version!r}")
        if normalised in lines:
            raise ValueError(f"{name}: listed twice")
        lines[normalised] = f"{normalised}=={version}"
    return [lines[name] for name in sorted(lines)]


def parse_locked_requirements(text: str) -> dict[str, str]:
    """name -> version from a requirements file made only of exact `name==version` pins.

    Comments and blank lines are skipped; anything looser (>=, URLs, -r includes) is refused,
    since it would not say what actually runs. Extras are dropped: a complete lock pins them too.
    """
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number}: not an exact name==version pin")
        if normalise_dependency_name(match["name"]) in {normalise_dependency_name(n) for n in pins}:
            raise ValueError(f"line {number}: {match['name']} is pinned twice")
        pins[match["name"]] = match["version"]
    dependency_lines(pins)  # same validation as measure(), reported here at parse time
    return pins


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """The versions actually installed, which is what a measurement should describe."""
    return {name: importlib.metadata.version(name) for name in names}


def measure_tree(root: Path, patterns: Iterable[str] = DEFAULT_CODE_PATTERNS) -> dict[str, bytes]:
    """Relative POSIX path -> contents of the regular files under `root` matching any glob pattern.

    __pycache__ is skipped. A path through a symbolic link is refused: its target could change
    after measurement without the measured tree changing.
    """
    root = Path(root)
    resolved_root = root.resolve()
    files: dict[str, bytes] = {}
    for pattern in patterns:
        for path in root.glob(pattern):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts or not path.is_file():
                continue
            if path.resolve() != resolved_root / relative:
                raise ValueError(f"{relative.as_posix()}: symbolic links are not measured")
            files[relative.as_posix()] = path.read_bytes()
    return dict(sorted(files.items()))


def workload_hash(model_version_digest: str, job_parameters: Mapping[str, Any], dataset_id: str) -> str:
    """sha256 hex binding a model version (sha256 hex), the job parameters and a dataset id.

    The SDK recomputes it from its own package (`model_package_digest`) and its own request.
    """
    if not is_hex(model_version_digest, 32):
        raise ValueError("model_version_digest must be lower-case sha256 hex")
    if not isinstance(dataset_id, str) or not dataset_id:
        raise ValueError("dataset_id must be a non-empty string")
    statement = {"model_version": model_version_digest, "job_parameters": dict(job_parameters), "dataset_id": dataset_id}
    return sha256_hex(WORKLOAD_DOMAIN + canonical_json(statement))


def model_package_digest(files: Mapping[str, bytes]) -> str:
    """sha256 hex over a model package's relative paths and contents, independent of zip metadata."""
    entries = [[check_relative_path(path), sha256_hex(bytes(files[path]))] for path in sorted(files)]
    return sha256_hex(PACKAGE_DOMAIN + canonical_json(entries))
