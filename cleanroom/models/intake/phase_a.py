"""Phase A, inside the intake sandbox: `python3 -m cleanroom.models.intake.phase_a`.

Runs the manufacturer's Python (there is no data, no key and no network here): build the module
from the entrypoint, load the safetensors weights strictly, export the per-example forward for a
batch of one, decompose to core ATen and write the artifact to /out. On failure the full
traceback goes to /out/error.txt: it is the manufacturer's own and holds nothing private.

Everything written here is untrusted once the manufacturer's code has run in this process (it can
patch any of these functions); the service re-validates the artifact outside from scratch.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from cleanroom.models.intake.manifest import Manifest

PACKAGE = Path("/in/package")
OUT = Path("/out")
ARTIFACT_NAME = "exported.safetensors"
SUMMARY_NAME = "summary.json"
ERROR_NAME = "error.txt"
MAX_ERROR_CHARS = 64 << 10


def main(package: Path = PACKAGE, out: Path = OUT) -> int:
    sys.dont_write_bytecode = True  # the package is read-only anyway; no .pyc noise
    # torch 2.13's own deprecation noise from run_decompositions; the manufacturer's stderr stays theirs.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    timings: dict[str, float] = {}
    try:
        summary = export_package(package, out, timings)
    except BaseException:  # SystemExit and KeyboardInterrupt from manufacturer code too
        (out / ERROR_NAME).write_text(_bounded_traceback())
        return 1
    (out / SUMMARY_NAME).write_text(json.dumps({**summary, "timings": timings}, sort_keys=True))
    return 0


def _bounded_traceback() -> str:
    text = traceback.format_exc()
    return text if len(text) <= MAX_ERROR_CHARS else "...(cut)\n" + text[-MAX_ERROR_CHARS:]


def _timed(timings: dict[str, float], key: str, start: float) -> float:
    now = time.monotonic()
    timings[key] = round(now - start, 4)
    return now


def export_package(package: Path, out: Path, timings: dict[str, float]) -> dict[str, object]:
    from cleanroom.models.intake.manifest import MANIFEST_NAME, parse_manifest

    start = time.monotonic()
    manifest = parse_manifest((package / MANIFEST_NAME).read_bytes())
    import torch

    from cleanroom.models.intake.artifact import write_artifact

    torch.set_num_threads(2)
    start = _timed(timings, "import_torch_seconds", start)
    model = build_model(package, manifest)
    start = _timed(timings, "build_seconds", start)
    load_weights(model, package, manifest)
    start = _timed(timings, "weights_seconds", start)
    model.eval()  # the per-example inference graph; dropout is inert, batch norm is refused outside
    example = torch.zeros(1, *manifest.input_shape, dtype=torch.float32)
    exported = torch.export.export(model, (example,), strict=False)
    start = _timed(timings, "export_seconds", start)
    exported = exported.run_decompositions()
    start = _timed(timings, "decompose_seconds", start)
    size = write_artifact(exported, out / ARTIFACT_NAME)
    _timed(timings, "write_seconds", start)
    return {"torch_version": torch.__version__, "artifact_bytes": size, "nodes": len(exported.graph.nodes)}


def build_model(package: Path, manifest: Manifest) -> torch.nn.Module:
    import torch

    sys.path.insert(0, str(package))
    module = importlib.import_module(manifest.module)
    factory = getattr(module, manifest.function, None)
    if not callable(factory):
        raise TypeError(f"entrypoint {manifest.entrypoint}: {manifest.function} is not a function in {manifest.module}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"entrypoint {manifest.entrypoint} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: torch.nn.Module, package: Path, manifest: Manifest) -> None:
    """safetensors only, validated header, strict names and shapes.

    Copied tensor by tensor rather than through load_state_dict: the model's load_state_dict (or a
    load hook on it) is manufacturer code that could quietly rewrite what it is given.
    """
    if manifest.weights is None:
        return
    import safetensors.torch
    import torch

    from cleanroom.models.intake.safetensors_check import check_safetensors

    data = (package / manifest.weights).read_bytes()
    check_safetensors(data, max_header_bytes=16 << 20, max_tensors=4096)
    loaded, targets = safetensors.torch.load(data), _state_tensors(model)
    missing, unexpected = sorted(set(targets) - set(loaded)), sorted(set(loaded) - set(targets))
    if missing or unexpected:
        raise KeyError(f"{manifest.weights} does not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}")
    with torch.no_grad():
        for name, target in targets.items():
            if tuple(loaded[name].shape) != tuple(target.shape):
                raise ValueError(f"{manifest.weights}: {name} has shape {list(loaded[name].shape)}, the model {list(target.shape)}")
            target.copy_(loaded[name])


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name, as load_state_dict would see them, no hooks run."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for name, tensor in module._parameters.items():
            if tensor is not None:
                out[dot + name] = tensor
        for name, tensor in module._buffers.items():
            if tensor is not None and name not in module._non_persistent_buffers_set:
                out[dot + name] = tensor
    return out


if __name__ == "__main__":
    sys.exit(main())
