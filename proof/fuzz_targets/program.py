"""atheris harness: the exported-program validator, on what phase A hands back. The input is the
program's serde JSON: vetted by program_json.py, then (tensors from the same seed model) read by
torch's deserializer as artifact.py does, and validated by validate.py against the manifest.

Expected: IntakeRejected; input that is not UTF-8 is not a program and is skipped (artifact.py
reads the JSON out of a safetensors header, whose parser has refused it by then). Seeds: the MLP
and CNN test packages exported exactly as phase A exports them.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import INSTRUMENTED, ROOT, atheris, run

with atheris.instrument_imports(include=INSTRUMENTED):
    from cleanroom.models.intake.artifact import _deserialize, _split_tensors
    from cleanroom.models.intake.limits import IntakeLimits
    from cleanroom.models.intake.manifest import MANIFEST_NAME, Manifest, parse_manifest
    from cleanroom.models.intake.ops import strip_assertions
    from cleanroom.models.intake.program_json import vet_program_json
    from cleanroom.models.intake.reasons import IntakeRejected, Reason
    from cleanroom.models.intake.validate import validate_program

LIMITS = IntakeLimits()
PACKAGES = ("mlp", "cnn")


def _export(name: str) -> tuple[str, dict[str, Any], Manifest]:
    """(program JSON, the artifact's tensors, the manifest) of one test package, exported as phase A does."""
    import safetensors.torch

    from cleanroom.models.intake.phase_a import ARTIFACT_NAME, export_package
    from cleanroom.models.intake.safetensors_check import check_safetensors

    package = ROOT / "tests" / "model_packages" / name
    with tempfile.TemporaryDirectory() as out:
        export_package(package, Path(out), {})
        data = (Path(out) / ARTIFACT_NAME).read_bytes()
    sys.path.remove(str(package))   # phase A imports the package's modules by bare name ("model"):
    for module in [m for m, v in sys.modules.items() if str(getattr(v, "__file__", "")).startswith(str(package))]:
        del sys.modules[module]     # forget them, or the next package would get this one's
    info = check_safetensors(data, max_header_bytes=LIMITS.max_header_bytes, max_tensors=LIMITS.max_tensors)
    return info.metadata["program"], safetensors.torch.load(data), parse_manifest((package / MANIFEST_NAME).read_bytes())


@functools.cache
def exports() -> list[tuple[str, dict[str, Any], Manifest]]:
    """Exported on first use (seconds of torch.export), not at import: a --canary run needs none."""
    return [_export(name) for name in PACKAGES]


def target(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    program = vet_program_json(text, max_nodes=LIMITS.max_graph_nodes)
    for _, tensors, manifest in exports():   # the seed whose tensors the graph's signature names
        try:
            state, constants = _split_tensors(dict(tensors), program)
        except IntakeRejected:
            continue
        exported = _deserialize(program, state, constants)
        strip_assertions(exported)
        validate_program(exported, manifest, LIMITS)
        return
    raise IntakeRejected(Reason.ARTIFACT_INVALID, "exported tensors do not match the graph signature")


def seeds() -> list[bytes]:
    programs = [program for program, _, _ in exports()]
    return [p.encode() for p in programs] + [json.dumps(json.loads(programs[0]), indent=1).encode()]


if __name__ == "__main__":
    run(target, (IntakeRejected,), seeds)
