"""atheris harness: the model manifest parser (cleanroom/models/intake/manifest.py).

Expected: ManifestError (it names the field). See _harness.py for the crash rule.
"""

from __future__ import annotations

from _harness import INSTRUMENTED, ROOT, atheris, run

with atheris.instrument_imports(include=INSTRUMENTED):
    from cleanroom.models.intake.manifest import ManifestError, parse_manifest


def target(data: bytes) -> None:
    parse_manifest(data)


def seeds() -> list[bytes]:
    packages = sorted((ROOT / "tests" / "model_packages").glob("*/cleanroom-model.toml"))
    extra = b'name = "r"\nversion = "1.2.3-rc.1+b5"\nentrypoint = "a.b:c"\ntask = "regression"\ninput_shape = [2, 3]\n' \
            b'weights = "w/x.safetensors"\ntrainable = ["head.*"]\n'
    return [p.read_bytes() for p in packages[:4]] + [extra]


if __name__ == "__main__":
    run(target, (ManifestError,), seeds)
