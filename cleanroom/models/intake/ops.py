"""The operator allow-list: core ATen, functional, plus the few structural nodes export emits.

Used twice: on the serialized target strings before torch's deserializer sees them, and on the
deserialized graph's real targets. Batch norm gets its own reason so the manufacturer learns to
use GroupNorm (its running statistics are a buffer mutation and mix examples in a batch).

Pure assertion ops are neither allowed nor refused: `strip_assertions` removes them from every
program the service reads (intake and phase B), so ordinary code such as `x.to(torch.float32)`,
for which torch 2.13's export keeps an `aten._assert_tensor_metadata` node, is accepted.
"""

from __future__ import annotations

import operator
import re

import torch

from cleanroom.models.intake.reasons import Finding, Reason

# Harmless non-ATen call_function targets torch.export emits: tuple indexing of multi-output ops.
ALLOWED_PYTHON_TARGETS = {operator.getitem: "_operator.getitem"}
BATCH_NORM_OPS = frozenset({
    "batch_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "_batch_norm_impl_index", "_batch_norm_with_update",
    "_batch_norm_with_update_functional", "_batch_norm_no_update", "cudnn_batch_norm", "miopen_batch_norm",
})
BATCH_NORM_ADVICE = ("BatchNorm mixes the examples of a batch and mutates running statistics, which breaks "
                     "per-example differential privacy; replace it with GroupNorm (e.g. nn.GroupNorm(num_groups, "
                     "num_channels)) and resubmit. Intake never rewrites a model for you.")
# Ops that return nothing and only check what the graph already computes. Dropping one cannot
# change an output; keeping one in phase B would let a data-dependent check fail a job on a value.
ASSERTION_OPS = frozenset({
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range", "sym_constrain_range_for_size",
})
_SERIALIZED = re.compile(r"torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")


def target_name(target: object) -> str:
    """A stable display name for a call_function target (the op histogram's keys)."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    if target in ALLOWED_PYTHON_TARGETS:
        return ALLOWED_PYTHON_TARGETS[target]
    return getattr(target, "__qualname__", None) or type(target).__name__


def check_target(target: object) -> Finding | None:
    """None when `target` is allowed, else the finding that refuses it."""
    if not isinstance(target, torch._ops.OpOverload):
        if target in ALLOWED_PYTHON_TARGETS:
            return None
        return Finding(Reason.OP_NOT_ALLOWED, f"{target_name(target)}: only core ATen operators are allowed")
    name = target_name(target)
    if target.namespace != "aten":
        return Finding(Reason.CUSTOM_OP, f"{name}: operator namespace {target.namespace!r} is not core ATen; "
                                         "custom operators are refused")
    return _check_aten(target, name)


def _check_aten(op: torch._ops.OpOverload, name: str) -> Finding | None:
    if name.split(".")[1] in BATCH_NORM_OPS:
        return Finding(Reason.BATCH_NORM, f"{name}: {BATCH_NORM_ADVICE}")
    if torch.Tag.core not in op.tags:
        return Finding(Reason.OP_NOT_ALLOWED, f"{name}: not a core ATen operator")
    if op._schema.is_mutable:
        return Finding(Reason.OP_NOT_ALLOWED, f"{name}: mutates its arguments")
    return None


def is_assertion(target: object) -> bool:
    """An ATen assertion that returns nothing (see ASSERTION_OPS)."""
    return (isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
            and target._schema.name.split("::")[-1] in ASSERTION_OPS and not target._schema.returns)


def strip_assertions(program: torch.export.ExportedProgram) -> int:
    """Removes the assertion nodes nothing uses from `program`'s graph, in place; returns how many."""
    graph = program.graph_module.graph
    doomed = [n for n in graph.nodes if n.op == "call_function" and is_assertion(n.target) and not n.users]
    for node in doomed:
        graph.erase_node(node)
    if doomed:
        program.graph_module.recompile()
    return len(doomed)


def resolve_serialized(text: str) -> tuple[object | None, Finding | None]:
    """A serialized target string -> (target, None), or (None, finding) without resolving anything else.

    Only `_operator.getitem` and existing `torch.ops.aten.<op>.<overload>` pass: that much makes the
    program safe to deserialize. A non-aten namespace is refused by name, before any lookup could
    load or register anything. Whether the ATen op is allowed (core, functional, not batch norm)
    is `check_target`'s call, made by validate.py with every other finding.
    """
    if text == "_operator.getitem":
        return operator.getitem, None
    match = _SERIALIZED.fullmatch(text)
    if match is None:
        return None, Finding(Reason.OP_NOT_ALLOWED, f"{text[:120]}: only core ATen operators are allowed")
    namespace, op_name, overload = match.groups()
    if namespace == "higher_order":
        return None, Finding(Reason.OP_NOT_ALLOWED, f"{text}: control flow / higher-order operators are refused")
    if namespace != "aten":
        return None, Finding(Reason.CUSTOM_OP, f"{namespace}.{op_name}.{overload}: operator namespace {namespace!r} "
                                               "is not core ATen; custom operators are refused")
    return _resolve_aten(op_name, overload, text)


def _resolve_aten(op_name: str, overload: str, text: str) -> tuple[object | None, Finding | None]:
    try:
        packet = getattr(torch.ops.aten, op_name)
        op = getattr(packet, overload) if overload in packet.overloads() else None
    except (AttributeError, RuntimeError):
        op = None
    if not isinstance(op, torch._ops.OpOverload):
        return None, Finding(Reason.OP_NOT_ALLOWED, f"{text[:120]}: not an ATen operator")
    return op, None
