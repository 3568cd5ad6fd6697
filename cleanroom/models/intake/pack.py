"""The SDK side of the package contract: a model directory -> a deterministic zip.

Same bytes for the same files on every machine (sorted names, fixed timestamps and modes), so the
manufacturer can recompute the model version digest. Links and anything that resolves outside the
directory are refused rather than followed: what is packed is exactly what is there.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

from cleanroom.models.intake.archive import classify_name
from cleanroom.models.intake.manifest import MANIFEST_NAME, parse_manifest
from cleanroom.models.intake.reasons import IntakeRejected

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIPPED_DIRS = frozenset({"__pycache__"})


class PackError(ValueError):
    """The directory cannot be packed as a model package; the message names the file."""


def pack_package(directory: Path) -> bytes:
    """Zip the model package in `directory` (cleanroom-model.toml at its root)."""
    root = Path(directory)
    if root.is_symlink() or not root.is_dir():
        raise PackError(f"{root}: not a directory")
    files = _collect(root)
    if MANIFEST_NAME not in files:
        raise PackError(f"{root}: {MANIFEST_NAME} is missing")
    parse_manifest(files[MANIFEST_NAME].read_bytes())  # ManifestError names the field
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            archive.writestr(_info(name), _read_regular(files[name]))
    return buffer.getvalue()


def _collect(root: Path) -> dict[str, Path]:
    resolved_root = root.resolve()
    files: dict[str, Path] = {}
    for current, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not _skipped(d) and _checked_dir(Path(current) / d))
        for name in names:
            path = Path(current) / name
            if name.startswith(".") or name.endswith(".pyc"):
                continue
            relative = path.relative_to(root).as_posix()
            _check_file(path, relative, resolved_root)
            files[relative] = path
    return files


def _skipped(name: str) -> bool:
    return name in SKIPPED_DIRS or name.startswith(".")


def _checked_dir(path: Path) -> bool:
    if path.is_symlink():
        raise PackError(f"{path}: symbolic links are not packed")
    return True


def _check_file(path: Path, relative: str, resolved_root: Path) -> None:
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise PackError(f"{relative}: symbolic links are not packed")
    if not stat.S_ISREG(mode):
        raise PackError(f"{relative}: not a regular file")
    if not path.resolve().is_relative_to(resolved_root):
        raise PackError(f"{relative}: resolves outside the package directory")
    try:
        classify_name(relative)
    except IntakeRejected as exc:
        raise PackError(exc.findings[0].message) from None


def _info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, so the mode bits below mean what they say
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def _read_regular(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()
