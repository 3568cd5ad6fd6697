"""atheris harness: the model package checks before phase A (cleanroom/models/intake/package.py):
the zip's central directory and entries (archive.py), the manifest, the entrypoint, and every
weights file's safetensors header.

Expected: IntakeRejected. See _harness.py for the crash rule.
"""

from __future__ import annotations

import io
import zipfile

from _harness import INSTRUMENTED, ROOT, atheris, run

with atheris.instrument_imports(include=INSTRUMENTED):
    from cleanroom.models.intake.limits import IntakeLimits
    from cleanroom.models.intake.package import load_package
    from cleanroom.models.intake.reasons import IntakeRejected

# Small limits, so that the size, count and ratio checks are reachable from small inputs.
LIMITS = IntakeLimits(max_zip_bytes=1 << 20, max_entries=16, max_file_bytes=256 << 10, max_source_bytes=64 << 10,
                      max_total_bytes=512 << 10, ratio_floor_bytes=4 << 10, max_header_bytes=16 << 10, max_tensors=32)


def target(data: bytes) -> None:
    load_package(data, LIMITS)


def seeds() -> list[bytes]:
    import numpy as np
    import safetensors.numpy

    from cleanroom.models.intake.pack import pack_package

    packages = ROOT / "tests" / "model_packages"
    out = [pack_package(packages / name) for name in ("mlp", "cnn")]
    weights = safetensors.numpy.save({"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    manifest = (packages / "mlp" / "cleanroom-model.toml").read_text() + 'weights = "weights/model.safetensors"\n'
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:   # in one top folder, deflated, with weights
        archive.writestr("pkg/cleanroom-model.toml", manifest)
        archive.writestr("pkg/model.py", (packages / "mlp" / "model.py").read_text())
        archive.writestr("pkg/weights/model.safetensors", weights)
    return [*out, buffer.getvalue()]


if __name__ == "__main__":
    run(target, (IntakeRejected,), seeds)
