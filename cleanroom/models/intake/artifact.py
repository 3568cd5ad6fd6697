"""The exported-program artifact: one safetensors file, the service's own format.

    tensors      "state/<fqn>" for parameters and buffers, "const/<fqn>" for tensor constants
    __metadata__ {"format": FORMAT, "program": <torch serde JSON of the ExportedProgram>}

Why not torch.export.save/load: torch 2.13's loader unpickles weights flagged `use_pickle` with
torch.load(weights_only=False) and constants with pickle.loads, and its deserializer falls back to
weights_only=False — all attacker-controlled when the file comes out of phase A. Here the tensors
go through a validated safetensors header and Rust loader (no pickle anywhere), and the graph JSON
is vetted by program_json before torch's deserializer is handed plain tensor dicts.

`write_artifact` runs inside phase A; `read_artifact` runs outside and trusts nothing it reads.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch._export.serde import schema as serde_schema
from torch._export.serde.serialize import (
    ExportedProgramDeserializer,
    ExportedProgramSerializer,
    _dict_to_dataclass,
    _to_json_bytes,
)

from cleanroom.models.intake.ops import strip_assertions
from cleanroom.models.intake.program_json import vet_program_json
from cleanroom.models.intake.reasons import IntakeRejected, Reason
from cleanroom.models.intake.safetensors_check import check_safetensors

FORMAT = "cleanroom-exported-program-v1"
STATE, CONST = "state/", "const/"
# torch's serde keeps process-wide state: the serializer registers a FakeTensor reducer in
# copyreg.dispatch_table for the duration of each call (and refuses to run when one is already
# there: "Refusing to stomp on existing FakeTensor reducer"), the deserializer sets the module
# global _CURRENT_DESERIALIZER. Concurrent intakes serialise and deserialise from several threads
# of one process, so every use of either goes through this one lock.
_SERDE_LOCK = threading.Lock()


def artifact_bytes(ep: torch.export.ExportedProgram) -> bytes:
    """Serialise an exported program (tensors to safetensors, graph to serde JSON, no pickle read back)."""
    with _SERDE_LOCK, warnings.catch_warnings():  # torch's own pytree deprecation noise, not the manufacturer's
        warnings.simplefilter("ignore", FutureWarning)
        serialized = ExportedProgramSerializer().serialize(ep).exported_program
    program = json.loads(_to_json_bytes(serialized))
    for node in program["graph_module"]["graph"]["nodes"]:
        node["metadata"] = {}  # stack traces name the manufacturer's files; the graph does not need them
    tensors = {STATE + k: _plain(v) for k, v in ep.state_dict.items()}
    for name, value in ep.constants.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"constant {name} is a {type(value).__name__}; only tensors can be exported")
        tensors[CONST + name] = _plain(value)
    return safetensors.torch.save(tensors, metadata={"format": FORMAT, "program": json.dumps(program, sort_keys=True)})


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    # A fresh contiguous copy: safetensors refuses views and shared storage.
    return tensor.detach().to("cpu").contiguous().clone()


def write_artifact(ep: torch.export.ExportedProgram, path: Path) -> int:
    data = artifact_bytes(ep)
    path.write_bytes(data)
    return len(data)


def read_untrusted_file(path: Path, max_bytes: int, *, truncate: bool = False) -> bytes:
    """Bytes of a regular file that an untrusted process wrote; never follows a link or blocks on a FIFO.

    Past max_bytes: ValueError, or with `truncate` the first max_bytes (for text shown in reports).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise FileNotFoundError(f"{path.name}: cannot be opened as a plain file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(f"{path.name}: not a regular file")
        if info.st_size > max_bytes and not truncate:
            raise ValueError(f"{path.name}: {info.st_size} bytes; the limit is {max_bytes}")
        return handle.read(max_bytes + 1)[:max_bytes]


def read_artifact(path: Path, *, max_bytes: int, max_header_bytes: int, max_tensors: int, max_nodes: int
                  ) -> torch.export.ExportedProgram:
    """Load an artifact written by an untrusted process; IntakeRejected when anything is off.
    Pure assertion nodes are stripped here, so validation and phase B see the same graph."""
    try:
        data = read_untrusted_file(path, max_bytes)
        info = check_safetensors(data, max_header_bytes=max_header_bytes, max_tensors=max_tensors)
    except (OSError, ValueError) as exc:
        raise IntakeRejected(Reason.ARTIFACT_INVALID, f"exported program: {exc}") from None
    if info.metadata.get("format") != FORMAT or set(info.metadata) != {"format", "program"}:
        raise IntakeRejected(Reason.ARTIFACT_INVALID, f"exported program is not in the {FORMAT} format")
    program = vet_program_json(info.metadata["program"], max_nodes=max_nodes)
    state, constants = _split_tensors(safetensors.torch.load(data), program)
    loaded = _deserialize(program, state, constants)
    strip_assertions(loaded)
    return loaded


def _split_tensors(tensors: dict[str, torch.Tensor], program: dict[str, Any]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Tensors by role; the names must be exactly those the graph signature lifts."""
    wanted = _signature_names(program["graph_module"]["signature"]["input_specs"])
    state = {k[len(STATE):]: v for k, v in tensors.items() if k.startswith(STATE)}
    constants = {k[len(CONST):]: v for k, v in tensors.items() if k.startswith(CONST)}
    if len(state) + len(constants) != len(tensors):
        raise IntakeRejected(Reason.ARTIFACT_INVALID, "exported program has tensors outside state/ and const/")
    if set(state) != wanted["parameter"] | wanted["buffer"] or set(constants) != wanted["tensor_constant"]:
        raise IntakeRejected(Reason.ARTIFACT_INVALID, "exported tensors do not match the graph signature")
    for name in wanted["parameter"]:
        value = state[name]
        state[name] = torch.nn.Parameter(value, requires_grad=value.is_floating_point())
    return state, constants


def _signature_names(input_specs: list[dict[str, Any]]) -> dict[str, set[str]]:
    keys = {"parameter": "parameter_name", "buffer": "buffer_name", "tensor_constant": "tensor_constant_name"}
    names: dict[str, set[str]] = {kind: set() for kind in keys}
    for spec in input_specs:
        (kind, body), = spec.items()
        if kind in keys:
            name = body.get(keys[kind]) if isinstance(body, dict) else None
            if not isinstance(name, str):  # vet_program_json checks the name only where present (found by fuzzing)
                raise IntakeRejected(Reason.ARTIFACT_INVALID, f"graph signature: a {kind} input names no {keys[kind]}")
            names[kind].add(name)
    return names


def _deserialize(program: dict[str, Any], state: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]
                 ) -> torch.export.ExportedProgram:
    try:
        serialized = _dict_to_dataclass(serde_schema.ExportedProgram, program)  # type: ignore[no-untyped-call]  # torch's serde helper is unannotated
        with _SERDE_LOCK:
            return ExportedProgramDeserializer().deserialize(serialized, state, constants, None)
    except IntakeRejected:
        raise
    except Exception as exc:  # torch's deserializer raises many types; any of them means a bad artifact
        raise IntakeRejected(Reason.ARTIFACT_INVALID, f"exported program does not deserialize: {str(exc)[:300]}") from None
