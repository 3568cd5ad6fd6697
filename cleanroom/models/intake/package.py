"""A submitted model package, checked as a whole: archive, manifest, weights, digest.

Nothing here runs or imports manufacturer code; it all happens before phase A starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom.models.intake.archive import WEIGHTS_SUFFIX, read_package_zip
from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.manifest import MANIFEST_NAME, Manifest, ManifestError, parse_manifest
from cleanroom.models.intake.reasons import IntakeRejected, Reason
from cleanroom.models.intake.safetensors_check import SafetensorsError, check_safetensors
from enclave_sim.measurement import model_package_digest


@dataclass(frozen=True)
class Package:
    files: dict[str, bytes]
    manifest: Manifest
    digest: str   # model_package_digest: every file's path and content, independent of zip metadata


def load_package(zip_bytes: bytes, limits: IntakeLimits) -> Package:
    """Validate a submitted zip into a Package; raises IntakeRejected with the first fatal reason."""
    files = read_package_zip(zip_bytes, limits)
    manifest = _manifest(files)
    _check_entrypoint(files, manifest)
    _check_weights(files, manifest, limits)
    return Package(files=files, manifest=manifest, digest=model_package_digest(files))


def _manifest(files: dict[str, bytes]) -> Manifest:
    if MANIFEST_NAME not in files:
        raise IntakeRejected(Reason.PACKAGE_INCOMPLETE, f"{MANIFEST_NAME} is missing from the package root")
    try:
        return parse_manifest(files[MANIFEST_NAME])
    except ManifestError as exc:
        raise IntakeRejected(Reason.MANIFEST_INVALID, exc.message) from None


def _check_entrypoint(files: dict[str, bytes], manifest: Manifest) -> None:
    if manifest.module_path not in files:
        raise IntakeRejected(Reason.PACKAGE_INCOMPLETE,
                             f"entrypoint module {manifest.module!r} needs {manifest.module_path} in the package")


def _check_weights(files: dict[str, bytes], manifest: Manifest, limits: IntakeLimits) -> None:
    """Every .safetensors file must be the one the manifest names, and must be honest safetensors."""
    for name in sorted(n for n in files if n.endswith(WEIGHTS_SUFFIX)):
        _check_one_weights_file(name, files[name], limits)
        if name != manifest.weights:
            raise IntakeRejected(Reason.PACKAGE_INCOMPLETE, f"{name}: weights file not named in the manifest's `weights`")
    if manifest.weights is not None and manifest.weights not in files:
        raise IntakeRejected(Reason.PACKAGE_INCOMPLETE, f"weights: {manifest.weights} is not in the package")


def _check_one_weights_file(name: str, data: bytes, limits: IntakeLimits) -> None:
    try:
        check_safetensors(data, max_header_bytes=limits.max_header_bytes, max_tensors=limits.max_tensors)
    except SafetensorsError as exc:
        reason = Reason.WEIGHTS_NOT_SAFETENSORS if exc.not_safetensors else Reason.WEIGHTS_INVALID
        raise IntakeRejected(reason, f"{name}: {exc}") from None
