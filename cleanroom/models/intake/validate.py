"""Export validation, outside the sandbox, on a program read back by artifact.read_artifact.

Everything is checked and every finding kept (a manufacturer fixes them all in one round):
operators (core ATen allow-list, no custom namespaces, no batch norm), the graph signature (no
mutation of buffers, parameters or inputs; one tensor in, one tensor out), state (dtypes, sizes,
parameter count, finite values), shapes re-derived by torch's own meta kernels rather than trusted
from the file, and the manifest's trainable globs resolved to concrete parameter names.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.manifest import Manifest
from cleanroom.models.intake.ops import BATCH_NORM_ADVICE, check_target, target_name
from cleanroom.models.intake.reasons import Finding, Reason

MUTATIONS = {
    OutputKind.BUFFER_MUTATION: Reason.BUFFER_MUTATION,
    OutputKind.PARAMETER_MUTATION: Reason.PARAMETER_MUTATION,
    OutputKind.USER_INPUT_MUTATION: Reason.USER_INPUT_MUTATION,
}
ALLOWED_INPUTS = {InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR, InputKind.USER_INPUT}
STATE_DTYPES = {torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class ValidationResult:
    findings: list[Finding] = field(default_factory=list)
    parameter_count: int = 0
    parameter_names: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    trainable_parameter_count: int = 0  # what the service's training recipe reads (domain/recipe.py)
    op_histogram: dict[str, int] = field(default_factory=dict)
    output_shape: list[int] | None = None

    @property
    def accepted(self) -> bool:
        return not self.findings

    def add(self, code: Reason, message: str) -> None:
        self.findings.append(Finding(code, message))


def validate_program(ep: torch.export.ExportedProgram, manifest: Manifest, limits: IntakeLimits) -> ValidationResult:
    result = ValidationResult()
    _check_nodes(ep, limits, result)
    _check_signature(ep, result)
    _check_state(ep, limits, result)
    _resolve_trainable(ep, manifest, result)
    if not any(f.code in (Reason.OP_NOT_ALLOWED, Reason.CUSTOM_OP) for f in result.findings):
        _check_shapes(ep, manifest, limits, result)  # meta kernels exist only for allowed ops
    return result


def _check_nodes(ep: torch.export.ExportedProgram, limits: IntakeLimits, result: ValidationResult) -> None:
    histogram: Counter[str] = Counter()
    seen: set[str] = set()
    for node in ep.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            result.add(Reason.OP_NOT_ALLOWED, f"{node.op} nodes are refused; the graph may only call core ATen")
            continue
        name = target_name(node.target)
        histogram[name] += 1
        finding = check_target(node.target)
        if finding is not None and name not in seen:
            seen.add(name)
            result.findings.append(finding)
    if sum(histogram.values()) > limits.max_graph_nodes:
        result.add(Reason.GRAPH_TOO_LARGE, f"{sum(histogram.values())} operator nodes; the limit is {limits.max_graph_nodes}")
    result.op_histogram = dict(sorted(histogram.items()))


def _check_signature(ep: torch.export.ExportedProgram, result: ValidationResult) -> None:
    signature = ep.graph_signature
    for spec in signature.output_specs:
        if spec.kind in MUTATIONS:
            result.add(MUTATIONS[spec.kind], f"forward() writes into {spec.target!r} ({spec.kind.name}); "
                                             "the forward must be a pure function of its input and weights")
        elif spec.kind is not OutputKind.USER_OUTPUT:
            result.add(Reason.SIGNATURE_NOT_ALLOWED, f"output of kind {spec.kind.name} is refused")
    for spec in signature.input_specs:
        if spec.kind not in ALLOWED_INPUTS:
            result.add(Reason.SIGNATURE_NOT_ALLOWED, f"input of kind {spec.kind.name} is refused")
    user_in = [s for s in signature.input_specs if s.kind is InputKind.USER_INPUT]
    user_out = [s for s in signature.output_specs if s.kind is OutputKind.USER_OUTPUT]
    if len(user_in) != 1 or len(user_out) != 1:
        result.add(Reason.SIGNATURE_NOT_ALLOWED, "forward must take exactly one tensor and return exactly one tensor")


def _check_state(ep: torch.export.ExportedProgram, limits: IntakeLimits, result: ValidationResult) -> None:
    names = list(ep.graph_signature.parameters)
    result.parameter_names = names
    result.parameter_count = sum(ep.state_dict[n].numel() for n in names)
    if result.parameter_count > limits.max_parameters:
        result.add(Reason.TOO_MANY_PARAMETERS, f"{result.parameter_count} parameters; the limit is {limits.max_parameters}")
    tensors = {**ep.state_dict, **{k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)}}
    for name, tensor in tensors.items():
        _check_tensor(name, tensor, limits, result)
    for name in names:
        tensor = ep.state_dict[name]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            result.add(Reason.NON_FINITE_WEIGHTS, f"parameter {name} holds NaN or infinity")
    bn = sorted(n for n in ep.state_dict if n.rsplit(".", 1)[-1] in BN_BUFFERS)
    if bn and not any(f.code is Reason.BATCH_NORM for f in result.findings):
        result.add(Reason.BATCH_NORM, f"buffers {', '.join(bn[:3])}: {BATCH_NORM_ADVICE}")


def _check_tensor(name: str, tensor: torch.Tensor, limits: IntakeLimits, result: ValidationResult) -> None:
    if tensor.dtype not in STATE_DTYPES:
        result.add(Reason.DTYPE_NOT_ALLOWED, f"{name}: dtype {tensor.dtype} is not allowed")
    if tensor.numel() > limits.max_tensor_elements:
        result.add(Reason.TENSOR_TOO_LARGE, f"{name}: {tensor.numel()} elements; the limit is {limits.max_tensor_elements}")


def _resolve_trainable(ep: torch.export.ExportedProgram, manifest: Manifest, result: ValidationResult) -> None:
    names = result.parameter_names
    chosen: set[str] = set()
    for pattern in manifest.trainable:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            result.add(Reason.TRAINABLE_NO_MATCH, f"trainable glob {pattern!r} matches no parameter "
                                                  f"(parameters: {', '.join(names[:10]) or 'none'})")
        chosen.update(matched)
    for name in sorted(chosen):
        if not ep.state_dict[name].is_floating_point():
            result.add(Reason.TRAINABLE_NOT_FLOAT, f"trainable parameter {name} is {ep.state_dict[name].dtype}, not a float tensor")
    result.trainable = [n for n in names if n in chosen]
    result.trainable_parameter_count = sum(ep.state_dict[n].numel() for n in result.trainable)


def _check_shapes(ep: torch.export.ExportedProgram, manifest: Manifest, limits: IntakeLimits, result: ValidationResult) -> None:
    """Re-derive every shape with torch's meta kernels: the file's own shape claims are not trusted."""
    try:
        values = _propagate(ep, manifest)
    except Exception as exc:  # a graph whose shapes do not compute is refused, not crashed on
        result.add(Reason.INPUT_MISMATCH, f"the graph does not run on input {[1, *manifest.input_shape]} float32: {str(exc)[:300]}")
        return
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() > limits.max_tensor_elements:
            result.add(Reason.TENSOR_TOO_LARGE, f"intermediate {name}: {value.numel()} elements; the limit is {limits.max_tensor_elements}")
            break
    _check_output(values["__output__"], manifest, result)


def _propagate(ep: torch.export.ExportedProgram, manifest: Manifest) -> dict[str, object]:
    gm = ep.graph_module
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        args = [_placeholder_value(ep, node.name, mode, manifest) for node in gm.graph.nodes if node.op == "placeholder"]
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*args)
    values: dict[str, object] = {n.name: n.meta.get("val") for n in gm.graph.nodes if n.op == "call_function"}
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    user_outputs = [o for o, s in zip(outputs, ep.graph_signature.output_specs) if s.kind is OutputKind.USER_OUTPUT]
    values["__output__"] = user_outputs[0].meta.get("val") if len(user_outputs) == 1 else None
    return values


def _placeholder_value(ep: torch.export.ExportedProgram, name: str, mode: FakeTensorMode, manifest: Manifest) -> torch.Tensor:
    spec = next(s for s in ep.graph_signature.input_specs if s.arg.name == name)
    if spec.kind is InputKind.USER_INPUT:
        return mode.from_tensor(torch.empty(1, *manifest.input_shape, dtype=torch.float32), static_shapes=True)
    source = ep.constants if spec.kind is InputKind.CONSTANT_TENSOR else ep.state_dict
    return mode.from_tensor(source[spec.target], static_shapes=True)


def _check_output(value: object, manifest: Manifest, result: ValidationResult) -> None:
    if not isinstance(value, torch.Tensor):
        result.add(Reason.OUTPUT_SHAPE, "forward must return one tensor")
        return
    result.output_shape = list(value.shape)
    expected = manifest.expected_output_shapes()
    if tuple(value.shape) not in expected:
        wanted = " or ".join(str(list(s)) for s in expected)
        result.add(Reason.OUTPUT_SHAPE, f"{manifest.task.value} expects output {wanted} for a batch of one; got {list(value.shape)}")
    if value.dtype != torch.float32:
        result.add(Reason.OUTPUT_SHAPE, f"output dtype must be float32; got {value.dtype}")
