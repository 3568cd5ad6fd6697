"""Read a submitted zip into memory, refusing anything dangerous before one byte reaches disk.

Everything is decided from the central directory first (names, link bits, sizes, ratios), then each
entry is read with a bound one byte past its declared size, so a header that lies about its size
cannot inflate past the limits either. Only then may `unpack` write the files, read-only.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.manifest import MANIFEST_NAME, is_normalised_relative
from cleanroom.models.intake.reasons import IntakeRejected, Reason

SOURCE_SUFFIXES = frozenset({".py", ".md", ".txt"})
TEXT_NAMES = frozenset({MANIFEST_NAME, "LICENSE", "NOTICE"})
WEIGHTS_SUFFIX = ".safetensors"
PICKLE_LIKE = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5",
                         ".pb", ".onnx", ".tar", ".pt2"})


def classify_name(name: str) -> str:
    """'source' or 'weights' for an allowed package file; IntakeRejected otherwise (also used by the packer)."""
    if not is_normalised_relative(name):
        raise IntakeRejected(Reason.ARCHIVE_PATH, f"{name[:200]!r}: absolute, '..', or not a normalised relative path")
    path = PurePosixPath(name)
    if any(part.startswith(".") or part == "__pycache__" for part in path.parts):
        raise IntakeRejected(Reason.ARCHIVE_FILE_TYPE, f"{name}: hidden files and __pycache__ are not part of a package")
    if path.suffix == WEIGHTS_SUFFIX:
        return "weights"
    if path.suffix.lower() in PICKLE_LIKE:
        raise IntakeRejected(Reason.WEIGHTS_NOT_SAFETENSORS, f"{name}: weights must be safetensors; {path.suffix} is refused unread")
    if path.suffix in SOURCE_SUFFIXES or name in TEXT_NAMES:
        return "source"
    if path.name == MANIFEST_NAME:
        raise IntakeRejected(Reason.ARCHIVE_PATH, f"{name}: the manifest must be at the package root (the zip's root, "
                                                  f"or one top-level folder that holds every entry)")
    raise IntakeRejected(Reason.ARCHIVE_FILE_TYPE, f"{name}: only .py, .safetensors, the manifest and .md/.txt files are allowed")


def read_package_zip(data: bytes, limits: IntakeLimits) -> dict[str, bytes]:
    """Relative path -> contents of every file in the zip, after every check has passed."""
    if len(data) > limits.max_zip_bytes:
        raise IntakeRejected(Reason.ARCHIVE_TOO_LARGE, f"the zip is {len(data)} bytes; the limit is {limits.max_zip_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:  # "zip file version" (fuzzing)
        raise IntakeRejected(Reason.ARCHIVE_INVALID, f"not a readable zip: {exc}") from None
    with archive:
        files = [info for info in _check_directory(_inside_single_folder(infos), limits) if not info.is_dir()]
        return {info.filename: _read_entry(archive, info) for info in files}


def _inside_single_folder(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """`zip -r pkg.zip pkg/` puts every entry under `pkg/`: read the package from inside that folder.

    Only when the root has no manifest, every entry sits under one plainly named folder and that
    folder holds the manifest; the names are then relative to it, so the digest is the same as for
    the same files zipped at the root. Anything else is left for the checks to judge as it is.
    """
    names = [info.filename for info in infos]
    top = names[0].split("/", 1)[0] if names else ""
    prefix = top + "/"
    if MANIFEST_NAME in names or prefix + MANIFEST_NAME not in names or not all(n.startswith(prefix) for n in names):
        return infos
    if not is_normalised_relative(top) or top.startswith(".") or top == "__pycache__":
        return infos
    inner = [info for info in infos if info.filename != prefix]
    for info in inner:
        info.filename = info.filename[len(prefix):]  # zipfile reads by orig_filename, which stays
    return inner


def _check_directory(infos: list[zipfile.ZipInfo], limits: IntakeLimits) -> list[zipfile.ZipInfo]:
    if len(infos) > limits.max_entries:
        raise IntakeRejected(Reason.ARCHIVE_TOO_LARGE, f"{len(infos)} entries; the limit is {limits.max_entries}")
    seen: set[str] = set()
    for info in infos:
        _check_entry(info, limits)
        folded = info.filename.rstrip("/").casefold()
        if folded in seen:
            raise IntakeRejected(Reason.ARCHIVE_DUPLICATE, f"{info.filename}: appears twice (names are compared case-insensitively)")
        seen.add(folded)
    _check_file_dir_clash(infos)
    _check_totals(infos, limits)
    return infos


def _check_file_dir_clash(infos: list[zipfile.ZipInfo]) -> None:
    """`a.py` and `a.py/b.py` cannot both be unpacked: refuse before writing either."""
    files = {i.filename.casefold() for i in infos if not i.is_dir()}
    parents = {p.as_posix().casefold() for i in infos for p in PurePosixPath(i.filename.rstrip("/")).parents}
    clash = sorted(files & parents)
    if clash:
        raise IntakeRejected(Reason.ARCHIVE_DUPLICATE, f"{clash[0]}: is both a file and a directory")


def _check_entry(info: zipfile.ZipInfo, limits: IntakeLimits) -> None:
    if not info.filename:  # zipfile cuts a name at its first NUL: "\x00x" reads as "" (found by fuzzing)
        raise IntakeRejected(Reason.ARCHIVE_PATH, "an entry has an empty name")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise IntakeRejected(Reason.ARCHIVE_LINK, f"{info.filename}: symbolic links are refused")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise IntakeRejected(Reason.ARCHIVE_FILE_TYPE, f"{info.filename}: not a regular file")
    if info.is_dir():
        classify_name(info.filename.rstrip("/") + "/x.py")  # validates the directory's own path
        return
    role = classify_name(info.filename)
    if info.flag_bits & 0x1:
        raise IntakeRejected(Reason.ARCHIVE_INVALID, f"{info.filename}: encrypted entries are refused")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise IntakeRejected(Reason.ARCHIVE_INVALID, f"{info.filename}: only stored or deflated entries are accepted")
    limit = limits.max_file_bytes if role == "weights" else limits.max_source_bytes
    if info.file_size > limit:
        raise IntakeRejected(Reason.ARCHIVE_FILE_TOO_LARGE, f"{info.filename}: {info.file_size} bytes; the limit is {limit}")
    if info.file_size >= limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise IntakeRejected(Reason.ARCHIVE_BOMB, f"{info.filename}: compression ratio above {limits.max_ratio:g}")


def _check_totals(infos: list[zipfile.ZipInfo], limits: IntakeLimits) -> None:
    total = sum(info.file_size for info in infos)
    packed = sum(info.compress_size for info in infos)
    if total > limits.max_total_bytes:
        raise IntakeRejected(Reason.ARCHIVE_BOMB, f"{total} bytes uncompressed; the limit is {limits.max_total_bytes}")
    if total >= limits.ratio_floor_bytes and total > limits.max_ratio * max(packed, 1):
        raise IntakeRejected(Reason.ARCHIVE_BOMB, f"overall compression ratio above {limits.max_ratio:g}")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with archive.open(info) as handle:
            content = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, RuntimeError) as exc:
        raise IntakeRejected(Reason.ARCHIVE_INVALID, f"{info.filename}: cannot be read: {exc}") from None
    if len(content) > info.file_size:
        raise IntakeRejected(Reason.ARCHIVE_BOMB, f"{info.filename}: inflates to more than its declared size")
    if len(content) < info.file_size:
        raise IntakeRejected(Reason.ARCHIVE_INVALID, f"{info.filename}: shorter than its declared size")
    return content


def unpack(files: dict[str, bytes], dest: Path) -> None:
    """Write already-validated files under `dest` (which must not exist), read-only."""
    dest.mkdir(mode=0o755)
    for name in sorted(files):
        if not is_normalised_relative(name):
            raise ValueError(f"refusing to unpack {name[:200]!r}")
        target = dest.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        with os.fdopen(fd, "wb") as handle:
            handle.write(files[name])
    for directory, _, _ in os.walk(dest):
        os.chmod(directory, 0o555)
