"""Model packages before any code runs: manifest, packer, archive safety, safetensors honesty, digest.

Nothing here starts a sandbox: every refusal happens on bytes in memory, before anything is
unpacked, which the service-level tests check by looking at the (absent) workdir.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from cleanroom.models.intake import IntakeLimits, IntakeRejected, ManifestError, PackError, Reason, pack_package, parse_manifest
from cleanroom.models.intake.manifest import Task
from cleanroom.models.intake.package import load_package
from cleanroom.models.intake.safetensors_check import SafetensorsError, check_safetensors
from cleanroom.models.intake.service import ModelIntake
from enclave_sim import model_package_digest
from tests.models.test_intake_support import MODELS, minimal_package_entries, raw_zip

DESIGN_EXAMPLE = """
name = "arrhythmia-mlp"
version = "1.0.0"
entrypoint = "model:build_model"   # module:function returning a torch.nn.Module
task = "binary-classification"     # or "multiclass-classification", "regression"
num_classes = 2                    # classification: the model returns logits [batch, num_classes]
input_shape = [30]                 # per-example shape, without the batch dimension
weights = "weights.safetensors"    # optional
trainable = ["*"]                  # globs over parameter names; the rest stay frozen
"""
BASE = {"name": '"m"', "version": '"1.0.0"', "entrypoint": '"model:build_model"', "task": '"multiclass-classification"',
        "num_classes": "3", "input_shape": "[12, 250]"}


def toml(**changes: str | None) -> str:
    fields = {**BASE, **changes}
    return "\n".join(f"{k} = {v}" for k, v in fields.items() if v is not None)


def rejected(call, *args) -> IntakeRejected:
    with pytest.raises(IntakeRejected) as info:
        call(*args)
    return info.value


def code(exc: IntakeRejected) -> Reason:
    return exc.findings[0].code


# --- manifest ---------------------------------------------------------------------------------

def test_manifest_from_the_design_document_parses() -> None:
    manifest = parse_manifest(DESIGN_EXAMPLE)
    assert manifest.task is Task.BINARY and manifest.num_classes == 2 and manifest.input_shape == (30,)
    assert (manifest.module, manifest.function, manifest.module_path) == ("model", "build_model", "model.py")
    assert manifest.weights == "weights.safetensors" and manifest.trainable == ("*",)
    assert parse_manifest(manifest_text := toml()).trainable == ("*",), manifest_text  # default


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": None}, "name"),
    ({"name": '"../x"'}, "name"),
    ({"version": '"1.0"'}, "version"),
    ({"version": "1"}, "version"),
    ({"entrypoint": '"model.build_model"'}, "entrypoint"),
    ({"entrypoint": '"model:build-model"'}, "entrypoint"),
    ({"task": '"clustering"'}, "task"),
    ({"num_classes": "1"}, "num_classes"),
    ({"num_classes": "true"}, "num_classes"),
    ({"num_classes": None}, "num_classes"),
    ({"task": '"binary-classification"'}, "num_classes"),
    ({"task": '"regression"'}, "num_classes"),
    ({"input_shape": "[]"}, "input_shape"),
    ({"input_shape": "[1, 2, 3, 4, 5]"}, "input_shape"),
    ({"input_shape": "[0]"}, "input_shape"),
    ({"input_shape": "[30.0]"}, "input_shape"),
    ({"weights": '"weights.pt"'}, "weights"),
    ({"weights": '"../weights.safetensors"'}, "weights"),
    ({"weights": '"/abs/weights.safetensors"'}, "weights"),
    ({"trainable": "[]"}, "trainable"),
    ({"trainable": '"*"'}, "trainable"),
    ({"learning_rate": "0.1"}, "learning_rate"),
])
def test_manifest_errors_name_the_field(changes: dict[str, str | None], field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(toml(**changes))
    assert info.value.field == field
    assert field in info.value.message and info.value.violations[0].field == field


def test_manifest_regression_and_invalid_toml() -> None:
    manifest = parse_manifest(toml(task='"regression"', num_classes=None))
    assert manifest.num_classes is None and manifest.expected_output_shapes() == ((1,), (1, 1))
    with pytest.raises(ManifestError) as info:
        parse_manifest(b'name = "unterminated')
    assert info.value.field == "(file)"


# --- packer -----------------------------------------------------------------------------------

def copy_fixture(name: str, dest: Path) -> Path:
    target = dest / name
    target.mkdir()
    for path in (MODELS / name).iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_pack_is_deterministic_and_digest_is_independent_of_zip_metadata(tmp_path: Path) -> None:
    package = copy_fixture("cnn", tmp_path)
    first = pack_package(package)
    os.utime(package / "model.py", (1, 1))
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"derived")
    (package / ".DS_Store").write_bytes(b"noise")
    assert pack_package(package) == first
    infos = zipfile.ZipFile(io.BytesIO(first)).infolist()
    assert [i.filename for i in infos] == sorted(["cleanroom-model.toml", "layers.py", "model.py"])
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)} and {i.external_attr >> 16 for i in infos} == {0o100644}
    files = {p.name: p.read_bytes() for p in (MODELS / "cnn").iterdir()}
    restored = raw_zip([(name, files[name]) for name in reversed(sorted(files))])  # other order, other times
    assert load_package(first, IntakeLimits()).digest == load_package(restored, IntakeLimits()).digest == model_package_digest(files)


def test_a_zip_of_the_folder_itself_is_read_from_inside_it(tmp_path: Path) -> None:
    """`zip -r pkg.zip pkg/` puts every entry under `pkg/`: same files, same digest as the SDK's zip."""
    package = copy_fixture("cnn", tmp_path)
    folder_zip = Path(shutil.make_archive(str(tmp_path / "folder"), "zip", root_dir=tmp_path, base_dir=package.name))
    assert f"{package.name}/cleanroom-model.toml" in zipfile.ZipFile(folder_zip).namelist()
    loaded = load_package(folder_zip.read_bytes(), IntakeLimits())
    assert sorted(loaded.files) == ["cleanroom-model.toml", "layers.py", "model.py"]
    assert loaded.digest == load_package(pack_package(package), IntakeLimits()).digest


@pytest.mark.parametrize("names", [
    ["a/b/cleanroom-model.toml", "a/b/model.py"],                     # two levels deep
    ["pkg/cleanroom-model.toml", "pkg/model.py", "notes.txt"],        # a folder and a file beside it
    ["pkg/cleanroom-model.toml", "other/model.py"],                   # two top-level folders
    ["../cleanroom-model.toml", "../model.py"],                       # not a plain folder name
])
def test_a_manifest_away_from_the_package_root_is_refused_saying_so(names: list[str]) -> None:
    entries = dict(minimal_package_entries())
    exc = rejected(load_package, raw_zip([(name, entries.get(name.rsplit("/", 1)[-1], b"")) for name in names]), IntakeLimits())
    assert code(exc) is Reason.ARCHIVE_PATH
    assert "manifest must be at the package root" in exc.findings[0].message or "'..'" in exc.findings[0].message


def test_pack_refuses_links_outside_files_and_pickles(tmp_path: Path) -> None:
    package = copy_fixture("mlp", tmp_path)
    secret = tmp_path / "secret.py"
    secret.write_text("KEY = 1\n")
    (package / "helper.py").symlink_to(secret)
    with pytest.raises(PackError, match="symbolic link"):
        pack_package(package)
    (package / "helper.py").unlink()
    (package / "sub").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PackError, match="symbolic link"):
        pack_package(package)
    (package / "sub").unlink()
    (package / "weights.pt").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(PackError, match="safetensors"):
        pack_package(package)
    (package / "weights.pt").unlink()
    os.mkfifo(package / "pipe.py")
    with pytest.raises(PackError, match="not a regular file"):
        pack_package(package)


def test_pack_needs_a_valid_manifest(tmp_path: Path) -> None:
    package = copy_fixture("mlp", tmp_path)
    (package / "cleanroom-model.toml").write_text(toml(version='"one"'))
    with pytest.raises(ManifestError, match="version"):
        pack_package(package)
    (package / "cleanroom-model.toml").unlink()
    with pytest.raises(PackError, match="cleanroom-model.toml"):
        pack_package(package)


# --- archive ----------------------------------------------------------------------------------

def link_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def with_entry(name_or_info: zipfile.ZipInfo | str, data: bytes) -> bytes:
    return raw_zip([*minimal_package_entries(), (name_or_info, data)])


@pytest.mark.parametrize(("name", "reason"), [
    ("../evil.py", Reason.ARCHIVE_PATH),
    ("sub/../../evil.py", Reason.ARCHIVE_PATH),
    ("/etc/cron.d/evil.py", Reason.ARCHIVE_PATH),
    ("..\\evil.py", Reason.ARCHIVE_PATH),
    ("./model2.py", Reason.ARCHIVE_PATH),
    ("weights.pt", Reason.WEIGHTS_NOT_SAFETENSORS),
    ("model.bin", Reason.WEIGHTS_NOT_SAFETENSORS),
    ("native.so", Reason.ARCHIVE_FILE_TYPE),
    ("__pycache__/model.cpython-311.pyc", Reason.ARCHIVE_FILE_TYPE),
    (".hidden.py", Reason.ARCHIVE_FILE_TYPE),
])
def test_bad_entry_names_are_refused(name: str, reason: Reason) -> None:
    assert code(rejected(load_package, with_entry(name, b"x = 1\n"), IntakeLimits())) is reason


def test_symlink_entries_and_special_files_are_refused() -> None:
    assert code(rejected(load_package, with_entry(*link_entry("helper.py", "/state/keys/kek.json")), IntakeLimits())) is Reason.ARCHIVE_LINK
    device = zipfile.ZipInfo("dev.py")
    device.create_system = 3
    device.external_attr = (stat.S_IFCHR | 0o666) << 16
    assert code(rejected(load_package, with_entry(device, b""), IntakeLimits())) is Reason.ARCHIVE_FILE_TYPE


def test_duplicates_encryption_and_garbage_are_refused() -> None:
    assert code(rejected(load_package, with_entry("MODEL.py", b""), IntakeLimits())) is Reason.ARCHIVE_DUPLICATE
    assert code(rejected(load_package, with_entry("model.py/inner.py", b""), IntakeLimits())) is Reason.ARCHIVE_DUPLICATE
    assert code(rejected(load_package, b"this is not a zip", IntakeLimits())) is Reason.ARCHIVE_INVALID
    data = bytearray(raw_zip(minimal_package_entries()))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" flag bit
        at = data.find(signature)
        data[at + offset] |= 1
    assert code(rejected(load_package, bytes(data), IntakeLimits())) is Reason.ARCHIVE_INVALID


@pytest.fixture(scope="module")
def gigabyte_bomb() -> bytes:
    """1 GiB of zeros deflated to a few MiB, streamed so the test never holds the gigabyte."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in minimal_package_entries():
            archive.writestr(name, data)
        with archive.open("weights.safetensors", "w") as handle:
            chunk = bytes(16 << 20)
            for _ in range(64):
                handle.write(chunk)
    return buffer.getvalue()


def test_zip_bomb_is_refused_from_the_directory_without_inflating(gigabyte_bomb: bytes) -> None:
    assert len(gigabyte_bomb) < 8 << 20
    limits = IntakeLimits(max_file_bytes=2 << 30, max_total_bytes=4 << 30)  # only the ratio can catch it
    started = time.monotonic()
    exc = rejected(load_package, gigabyte_bomb, limits)
    assert code(exc) is Reason.ARCHIVE_BOMB and "ratio" in exc.findings[0].message
    assert time.monotonic() - started < 1.0  # decided from the central directory, nothing inflated
    assert code(rejected(load_package, gigabyte_bomb, IntakeLimits())) is Reason.ARCHIVE_FILE_TOO_LARGE


def test_a_size_that_lies_is_never_inflated_past_the_declared_size() -> None:
    data = bytearray(with_entry("big.py", b"# " + b"a" * (4 << 20)))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # declare 1000 bytes uncompressed
        at = data.rfind(signature)
        data[at + offset:at + offset + 4] = struct.pack("<I", 1000)
    assert code(rejected(load_package, bytes(data), IntakeLimits())) in (Reason.ARCHIVE_INVALID, Reason.ARCHIVE_BOMB)


def test_size_limits() -> None:
    noise = os.urandom(3 << 20).hex().encode()  # incompressible: the ratio rule stays out of it
    assert code(rejected(load_package, with_entry("big.py", b"#" + noise), IntakeLimits())) is Reason.ARCHIVE_FILE_TOO_LARGE
    small = IntakeLimits(max_file_bytes=1 << 20)
    weights = save_safetensors({"w": torch.randn(512, 1024)})
    assert code(rejected(load_package, with_entry("weights.safetensors", weights), small)) is Reason.ARCHIVE_FILE_TOO_LARGE
    assert code(rejected(load_package, with_entry("x.py", b""), IntakeLimits(max_entries=2))) is Reason.ARCHIVE_TOO_LARGE
    tiny_total = IntakeLimits(max_total_bytes=300)
    assert code(rejected(load_package, raw_zip(minimal_package_entries()), tiny_total)) is Reason.ARCHIVE_BOMB
    assert code(rejected(load_package, b"x" * 2000, IntakeLimits(max_zip_bytes=1000))) is Reason.ARCHIVE_TOO_LARGE


# --- package ----------------------------------------------------------------------------------

def mlp_with(manifest_extra: str = "", **files: bytes) -> bytes:
    base = dict(minimal_package_entries())
    base["cleanroom-model.toml"] += manifest_extra.encode()
    base.update({k.replace("__", "."): v for k, v in files.items()})
    return raw_zip(list(base.items()))


def test_package_completeness() -> None:
    assert load_package(mlp_with(), IntakeLimits()).manifest.name == "arrhythmia-mlp"
    no_manifest = raw_zip([e for e in minimal_package_entries() if e[0] != "cleanroom-model.toml"])
    assert code(rejected(load_package, no_manifest, IntakeLimits())) is Reason.PACKAGE_INCOMPLETE
    no_module = raw_zip([e for e in minimal_package_entries() if e[0] != "model.py"])
    assert code(rejected(load_package, no_module, IntakeLimits())) is Reason.PACKAGE_INCOMPLETE
    missing = mlp_with('weights = "weights.safetensors"\n')
    assert code(rejected(load_package, missing, IntakeLimits())) is Reason.PACKAGE_INCOMPLETE
    unreferenced = mlp_with(weights__safetensors=save_safetensors({"w": torch.ones(1)}))
    assert code(rejected(load_package, unreferenced, IntakeLimits())) is Reason.PACKAGE_INCOMPLETE
    bad = raw_zip([("cleanroom-model.toml", toml(task="3").encode()), ("model.py", b"")])
    exc = rejected(load_package, bad, IntakeLimits())
    assert code(exc) is Reason.MANIFEST_INVALID and "task" in exc.findings[0].message


# --- safetensors ------------------------------------------------------------------------------

def forge(header: dict, data: bytes, *, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("blob", "words"), [
    (forge({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)), "past the end"),
    (forge({"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "overlaps"),
    (forge({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "unexplained"),
    (forge({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)), "needs 12 bytes"),
    (forge({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "needs 16 bytes"),
    (forge({"a": F32_2}, bytes(12)), "trailing"),
    (forge({"a": F32_2}, bytes(8), length=1 << 40), "absurd"),
    (forge({"a": F32_2}, bytes(8), length=1), "absurd"),
    (forge({"a": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)), "not allowed"),
    (forge({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)), "shape"),
    (forge({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)), "bytes"),
    (forge({"a": {**F32_2, "extra": 1}}, bytes(8)), "exactly"),
    (forge({"__metadata__": {"k": 1}, "a": F32_2}, bytes(8)), "__metadata__"),
    (struct.pack("<Q", 30) + b'{"a": 1, "a": 2}              ', "twice"),
    (struct.pack("<Q", 6) + b"{oops}", "not valid JSON"),
    (b"\x80\x04\x95" + pickle.dumps({"w": [1.0]})[3:], "pickle"),
    (b"PK\x03\x04" + bytes(40), "zip"),
])
def test_safetensors_headers_that_lie_are_refused(blob: bytes, words: str) -> None:
    with pytest.raises(SafetensorsError, match=words):
        check_safetensors(blob, max_header_bytes=1 << 20, max_tensors=16)


def test_honest_safetensors_pass_including_odd_but_legal_ones() -> None:
    tensors = {"w": torch.randn(3, 4), "b": torch.zeros(0), "h": torch.ones(2, dtype=torch.bfloat16),
               "i": torch.arange(3), "m": torch.tensor([True, False])}
    info = check_safetensors(save_safetensors(tensors, metadata={"format": "pt"}), max_header_bytes=1 << 20, max_tensors=16)
    assert set(info.tensors) == set(tensors) and info.metadata == {"format": "pt"}
    with pytest.raises(SafetensorsError, match="at most 2"):
        check_safetensors(save_safetensors(tensors), max_header_bytes=1 << 20, max_tensors=2)


class Payload:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_and_torch_save_disguised_as_safetensors_are_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    pickled = pickle.dumps(Payload(marker))
    buffer = io.BytesIO()
    torch.save({"0.weight": Payload(marker)}, buffer)
    for blob in (pickled, buffer.getvalue()):
        exc = rejected(load_package, mlp_with('weights = "weights.safetensors"\n', weights__safetensors=blob), IntakeLimits())
        assert code(exc) is Reason.WEIGHTS_NOT_SAFETENSORS
    lie = forge({"0.weight": {"dtype": "F32", "shape": [32, 30], "data_offsets": [0, 3840]}}, bytes(16))
    exc = rejected(load_package, mlp_with('weights = "weights.safetensors"\n', weights__safetensors=lie), IntakeLimits())
    assert code(exc) is Reason.WEIGHTS_INVALID
    assert not marker.exists()


# --- service: refusals stop before anything is unpacked or run --------------------------------

@pytest.mark.parametrize("archive", ["traversal", "absolute", "symlink", "pickle", "oversize"])
def test_service_refuses_bad_archives_before_unpacking(tmp_path: Path, archive: str) -> None:
    marker = tmp_path / "payload-ran"
    blob = {
        "traversal": lambda: with_entry("../../escaped.py", b"x = 1\n"),
        "absolute": lambda: with_entry(str(tmp_path / "escaped.py"), b"x = 1\n"),
        "symlink": lambda: with_entry(*link_entry("layers.py", str(tmp_path / "escaped.py"))),
        "pickle": lambda: mlp_with('weights = "weights.safetensors"\n', weights__safetensors=pickle.dumps(Payload(marker))),
        "oversize": lambda: with_entry("big.py", b"#" + os.urandom(1 << 20).hex().encode()),
    }[archive]()
    (tmp_path / "submission.zip").write_bytes(blob)
    intake = ModelIntake(launcher=_NoSandbox(), launcher_reason="must not be reached")
    outcome = intake.run(tmp_path / "submission.zip", tmp_path / "work")
    assert not outcome.accepted and outcome.report.sandbox is None and outcome.artifact_path is None
    assert not (tmp_path / "work").exists() and not (tmp_path / "escaped.py").exists() and not marker.exists()
    assert outcome.report.reasons and json.loads(outcome.report.to_json())["accepted"] is False


class _NoSandbox:
    """Fails the test if intake ever gets as far as launching anything."""

    name = "none"

    def available(self) -> tuple[bool, str]:
        return False, "test double"

    def run(self, request, policy):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a refused package reached the sandbox")


# --- import hygiene ---------------------------------------------------------------------------

def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(result.stdout.split())


def test_phase_a_needs_nothing_outside_the_cleanroom_package() -> None:
    """Only `cleanroom` (not enclave_sim) is mounted inside the intake sandbox."""
    loaded = _modules_after("import cleanroom.models.intake.phase_a, cleanroom.models.intake.artifact, cleanroom.models.intake.manifest")
    assert not any(name.split(".")[0] == "enclave_sim" for name in loaded)


def test_the_sdk_side_does_not_import_torch() -> None:
    loaded = _modules_after("from cleanroom.models.intake import pack_package, parse_manifest")
    assert "torch" not in loaded
