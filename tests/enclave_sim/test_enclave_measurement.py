"""Measurements, workload hashes and model package digests: every input byte counts, order does not."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_sim import (
    canonical_json,
    installed_versions,
    measure,
    measure_tree,
    model_package_digest,
    parse_locked_requirements,
    workload_hash,
)

CODE = {"trainer/train.py": b"import math\nprint(math.pi)\n", "trainer/__init__.py": b"", "sandbox.py": b"RUN = 1\n"}
DEPENDENCIES = {"torch": "2.13.0", "opacus": "1.6.0", "numpy": "2.4.6"}
POLICY = {"network": "none", "rlimits": {"cpu_seconds": 3600, "memory_bytes": 8 << 30}, "read_only_root": True}
MODEL_DIGEST = hashlib.sha256(b"model version 1").hexdigest()
JOB = {"epochs": 3, "batch_size": 256, "features": ["hr", "spo2"], "label": "arrhythmia", "noise_multiplier": "1.1"}


def _chain_by_hand(code: dict[str, bytes], dependencies: list[str], policy: dict) -> str:
    """The documented chain, restated independently: h = sha256(h || len(label) || label || sha256(item))."""

    def step(h: bytes, label: bytes, item: bytes) -> bytes:
        return hashlib.sha256(h + bytes([len(label)]) + label + hashlib.sha256(item).digest()).digest()

    h = hashlib.sha256(b"cleanroom-measurement-v1").digest()
    for path in sorted(code):
        h = step(h, b"code-file", canonical_json([path, hashlib.sha256(code[path]).hexdigest()]))
    for line in dependencies:
        h = step(h, b"dependency", line.encode())
    return step(h, b"sandbox-policy", canonical_json(policy)).hex()


def test_measurement_follows_the_documented_hash_chain() -> None:
    expected = _chain_by_hand(CODE, ["numpy==2.4.6", "opacus==1.6.0", "torch==2.13.0"], POLICY)
    assert measure(CODE, DEPENDENCIES, POLICY) == expected


def test_measurement_is_stable_under_reordering() -> None:
    reordered_code = dict(reversed(list(CODE.items())))
    reordered_deps = dict(reversed(list(DEPENDENCIES.items())))
    reordered_policy = {"rlimits": {"memory_bytes": 8 << 30, "cpu_seconds": 3600}, "read_only_root": True, "network": "none"}
    assert measure(reordered_code, reordered_deps, reordered_policy) == measure(CODE, DEPENDENCIES, POLICY)


@given(st.sampled_from(sorted(CODE)), st.data())
def test_any_changed_code_byte_changes_the_measurement(path: str, data: st.DataObject) -> None:
    original = CODE[path] or b"\x00"
    position = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    changed = bytearray(original)
    changed[position] ^= mask
    baseline = measure({**CODE, path: original}, DEPENDENCIES, POLICY)
    assert measure({**CODE, path: bytes(changed)}, DEPENDENCIES, POLICY) != baseline


@pytest.mark.parametrize(
    ("code", "dependencies", "policy"),
    [
        ({**CODE, "extra.py": b""}, DEPENDENCIES, POLICY),  # a file added
        ({k: v for k, v in CODE.items() if k != "sandbox.py"}, DEPENDENCIES, POLICY),  # a file removed
        ({**{k: v for k, v in CODE.items() if k != "sandbox.py"}, "sandbox2.py": CODE["sandbox.py"]}, DEPENDENCIES, POLICY),  # renamed
        (CODE, {**DEPENDENCIES, "torch": "2.13.1"}, POLICY),  # a version
        (CODE, {**DEPENDENCIES, "scipy": "1.17.0"}, POLICY),  # a dependency added
        (CODE, {k: v for k, v in DEPENDENCIES.items() if k != "numpy"}, POLICY),  # removed
        (CODE, DEPENDENCIES, {**POLICY, "network": "host"}),  # a policy field
        (CODE, DEPENDENCIES, {**POLICY, "rlimits": {"cpu_seconds": 3601, "memory_bytes": 8 << 30}}),  # nested
        (CODE, DEPENDENCIES, {**POLICY, "read_only_root": "true"}),  # a type
        (CODE, DEPENDENCIES, {**POLICY, "seccomp": "default"}),  # a field added
    ],
)
def test_any_changed_input_changes_the_measurement(code: dict, dependencies: dict, policy: dict) -> None:
    assert measure(code, dependencies, policy) != measure(CODE, DEPENDENCIES, POLICY)


def test_dependency_names_are_normalised_as_pip_does() -> None:
    assert measure(CODE, {"Torch": "2.13.0", "OPACUS": "1.6.0", "numpy": "2.4.6"}, POLICY) == measure(CODE, DEPENDENCIES, POLICY)


@pytest.mark.parametrize("dependencies", [{"torch": ">=2.0"}, {"torch": "2.13.0", "Torch": "2.13.0"}, {"torch": ""}, {"bad name": "1"}, {"torch": "1 ; x"}])
def test_loose_or_duplicate_dependencies_are_refused(dependencies: dict) -> None:
    with pytest.raises(ValueError):
        measure(CODE, dependencies, POLICY)


@pytest.mark.parametrize("path", ["../evil.py", "/abs.py", "a//b.py", "./a.py", "a\\b.py", ""])
def test_code_paths_must_be_normalised_and_relative(path: str) -> None:
    with pytest.raises(ValueError):
        measure({path: b""}, DEPENDENCIES, POLICY)


def test_policy_floats_are_refused() -> None:
    with pytest.raises(TypeError):
        measure(CODE, DEPENDENCIES, {"cpu_fraction": 0.5})


def test_measure_tree_collects_matching_files_deterministically(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "b.py").write_bytes(b"B")
    (tmp_path / "pkg" / "a.py").write_bytes(b"A")
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.py").write_bytes(b"cache")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    (tmp_path / "policy.toml").write_bytes(b"P")
    files = measure_tree(tmp_path, ["**/*.py", "*.toml"])
    assert files == {"pkg/a.py": b"A", "pkg/b.py": b"B", "policy.toml": b"P"}
    assert list(files) == ["pkg/a.py", "pkg/b.py", "policy.toml"]
    before = measure(files, DEPENDENCIES, POLICY)
    (tmp_path / "pkg" / "b.py").write_bytes(b"b")
    assert measure(measure_tree(tmp_path, ["**/*.py", "*.toml"]), DEPENDENCIES, POLICY) != before


def test_measure_tree_refuses_symbolic_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.py").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "x.py", root / "x.py")
    with pytest.raises(ValueError, match="symbolic"):
        measure_tree(root)


def test_measure_tree_refuses_files_under_a_linked_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "m.py").write_bytes(b"m")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root" / "pkg")
    with pytest.raises(ValueError, match="symbolic"):
        measure_tree(tmp_path / "root", ["pkg/*.py"])


def test_workload_hash_binds_each_of_its_inputs() -> None:
    baseline = workload_hash(MODEL_DIGEST, JOB, "ds-1")
    assert workload_hash(MODEL_DIGEST, dict(reversed(list(JOB.items()))), "ds-1") == baseline
    variants = {
        workload_hash(hashlib.sha256(b"model version 2").hexdigest(), JOB, "ds-1"),
        workload_hash(MODEL_DIGEST, {**JOB, "epochs": 4}, "ds-1"),
        workload_hash(MODEL_DIGEST, {**JOB, "features": ["spo2", "hr"]}, "ds-1"),
        workload_hash(MODEL_DIGEST, JOB, "ds-2"),
    }
    assert baseline not in variants and len(variants) == 4


@pytest.mark.parametrize(("digest", "job", "dataset_id"), [("ABCD" * 16, JOB, "ds"), ("ab", JOB, "ds"), (MODEL_DIGEST, JOB, ""), (MODEL_DIGEST, {"lr": 0.1}, "ds")])
def test_workload_hash_refuses_bad_inputs(digest: str, job: dict, dataset_id: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        workload_hash(digest, job, dataset_id)


def test_model_package_digest_covers_names_and_contents_not_order() -> None:
    package = {"cleanroom-model.toml": b'name = "m"\n', "model.py": b"def build_model(): ...\n"}
    digest = model_package_digest(package)
    assert model_package_digest(dict(reversed(list(package.items())))) == digest
    assert model_package_digest({**package, "model.py": b"def build_model(): pass\n"}) != digest
    assert model_package_digest({"cleanroom-model.toml": package["cleanroom-model.toml"], "model2.py": package["model.py"]}) != digest
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_parse_locked_requirements_reads_exact_pins_only() -> None:
    text = "# runtime\ngrpcio==1.85.3\npsycopg[binary]==3.3.9  # driver\n\ntorch==2.13.0+cpu\n"
    assert parse_locked_requirements(text) == {"grpcio": "1.85.3", "psycopg": "3.3.9", "torch": "2.13.0+cpu"}


@pytest.mark.parametrize("text", ["numpy>=2\n", "-r other.txt\n", "git+https://example.org/x.git\n", "a==1\nA==2\n", "x==1 ; python_version<'3.12'\n"])
def test_parse_locked_requirements_refuses_anything_looser(text: str) -> None:
    with pytest.raises(ValueError):
        parse_locked_requirements(text)


def test_installed_versions_reports_what_is_installed() -> None:
    import cryptography

    assert installed_versions(["cryptography"]) == {"cryptography": cryptography.__version__}
