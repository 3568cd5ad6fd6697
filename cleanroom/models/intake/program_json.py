"""Vet an exported program's serde JSON (torch's schema) before torch's deserializer reads it.

torch's deserializer was written for trusted files: it hands symbolic-shape strings to
sympy.sympify (an eval), compiles `guards_code` into Python, resolves targets by attribute walks,
and unpickles custom objects. So the JSON is checked first against what an honest phase A export
of a static-shape, single-tensor model produces, by allow-list: union members (the `as_*` keys),
operator targets, identifier-shaped names, CPU devices, the root call signature, and empty
symbolic/guard/custom-object sections. Node metadata (stack traces, module paths) is dropped.
"""

from __future__ import annotations

import json
import keyword
import re
from typing import Any, cast

import torch
import torch.utils._pytree as pytree
from torch._export.serde.schema import SCHEMA_VERSION

from cleanroom.models.intake.ops import resolve_serialized
from cleanroom.models.intake.reasons import Finding, IntakeRejected, Reason

TOP_KEYS = {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers", "torch_version", "guards_code"}
GRAPH_MODULE_KEYS = {"graph", "signature", "module_call_graph", "metadata", "treespec_namedtuple_fields"}
ALLOWED_UNION_KEYS = frozenset({
    "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats", "as_bool", "as_bools",
    "as_string", "as_strings", "as_scalar_type", "as_memory_format", "as_layout", "as_device",
    "as_optional_tensor", "as_optional_tensors", "as_int_lists", "as_float_lists",
})
INPUT_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
OUTPUT_KINDS = frozenset({"user_output", "buffer_mutation", "parameter_mutation", "user_input_mutation",
                          "loss_output", "gradient_to_parameter", "gradient_to_user_input"})
IDENT_KEYS = frozenset({"name", "user_input_name"})
FQN_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_FQN = re.compile(r"[A-Za-z0-9_]{1,100}(?:\.[A-Za-z0-9_]{1,100}){0,31}")
MAX_STRING = 256


def bad(message: str) -> IntakeRejected:
    return IntakeRejected(Reason.ARTIFACT_INVALID, message)


def vet_program_json(text: str, *, max_nodes: int) -> dict[str, Any]:
    """The program as a dict, cleaned; IntakeRejected (every refused operator listed) otherwise."""
    try:
        return _vet(json.loads(text), max_nodes)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"program is not valid JSON or is nested too deeply: {str(exc)[:200]}") from None


def _vet(program: Any, max_nodes: int) -> dict[str, Any]:
    _check_top(program)
    gm = program["graph_module"]
    _check_graph_sections(gm["graph"])
    _walk(gm["graph"], "graph")
    _check_spec_kinds(gm["signature"])
    _walk(gm["signature"], "signature")
    gm["module_call_graph"] = [_root_call(gm["module_call_graph"])]
    _check_targets(gm["graph"]["nodes"], max_nodes)
    return cast("dict[str, Any]", program)  # _check_top refused anything but a dict


def _check_top(program: Any) -> None:
    if not isinstance(program, dict) or set(program) != TOP_KEYS:
        raise bad("program does not have torch's top-level ExportedProgram fields")
    version = program["schema_version"]
    if version != {"major": SCHEMA_VERSION[0], "minor": SCHEMA_VERSION[1]}:
        raise bad(f"schema version {str(version)[:60]} is not this service's {SCHEMA_VERSION}")
    if program["range_constraints"] != {} or program["guards_code"] != []:
        raise bad("symbolic shapes and guards are refused: export runs with static shapes")
    if program["verifiers"] not in ([], ["ATEN"]):
        raise bad("unknown verifier dialect")
    opset = program["opset_version"]
    if not isinstance(opset, dict) or not set(opset) <= {"aten"} or not all(type(v) is int for v in opset.values()):
        raise bad("opset_version may only name aten")
    gm = program["graph_module"]
    if not isinstance(gm, dict) or set(gm) != GRAPH_MODULE_KEYS:
        raise bad("graph_module does not have torch's fields")
    if gm["treespec_namedtuple_fields"] != {}:
        raise bad("named-tuple outputs are refused: forward must return one tensor")
    gm["metadata"] = {}


def _check_spec_kinds(signature: Any) -> None:
    """Custom-object and token specs are refused here; mutations are reported by validate.py."""
    if not isinstance(signature, dict) or set(signature) != {"input_specs", "output_specs"}:
        raise bad("malformed graph signature")
    for specs, allowed in ((signature["input_specs"], INPUT_KINDS), (signature["output_specs"], OUTPUT_KINDS)):
        for spec in specs if isinstance(specs, list) else [None]:
            if not isinstance(spec, dict) or len(spec) != 1 or not set(spec) <= allowed:
                raise IntakeRejected(Reason.SIGNATURE_NOT_ALLOWED, f"graph signature entry {str(spec)[:80]} is refused")


def _check_graph_sections(graph: Any) -> None:
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise bad("graph has no node list")
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        if graph.get(key, {}) != {}:
            raise bad(f"graph.{key} must be empty (no symbolic values, no custom objects)")
    for node in graph["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("target"), str):
            raise bad("malformed node")
        node["metadata"] = {}


def _walk(value: Any, where: str) -> None:
    """Allow-list every union member and name found anywhere under `value`."""
    if isinstance(value, list):
        for item in value:
            _walk(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_field(key, item, where)
            _walk(item, where)
    elif isinstance(value, str) and len(value) > MAX_STRING:
        raise bad(f"{where}: string longer than {MAX_STRING} characters")


def _check_field(key: Any, item: Any, where: str) -> None:
    if not isinstance(key, str):
        raise bad(f"{where}: non-string key")
    if key.startswith("as_") and key not in ALLOWED_UNION_KEYS:
        raise bad(f"{where}: {key[:40]} values are refused (symbolic, graph, custom-object or operator arguments)")
    if key in IDENT_KEYS and isinstance(item, str) and not _plain_identifier(item):
        raise bad(f"{where}: {key} {item[:60]!r} is not a plain identifier")
    if key in FQN_KEYS and (not isinstance(item, str) or not _FQN.fullmatch(item)):
        raise bad(f"{where}: {key} is not a dotted parameter name")
    if key in ("device", "as_device") and (not isinstance(item, dict) or item.get("type") != "cpu"):
        raise bad(f"{where}: only CPU tensors are accepted")
    # not a map at all is refused too: iterating `false` raised TypeError (found by fuzzing)
    if key == "tensor_values" and (not isinstance(item, dict) or not all(_plain_identifier(k) for k in item)):
        raise bad(f"{where}: tensor value names must be identifiers")


def _plain_identifier(name: Any) -> bool:
    """Names become variables in code torch.fx generates: no keywords, no dunders, nothing else."""
    return isinstance(name, str) and bool(_IDENT.fullmatch(name)) and not keyword.iskeyword(name) and not name.startswith("__")


def _expected_specs() -> tuple[str, str]:
    """The call specs of forward(x) -> tensor, as torch itself writes them."""
    leaf = torch.empty(0)
    return pytree.treespec_dumps(pytree.tree_structure(((leaf,), {}))), pytree.treespec_dumps(pytree.tree_structure(leaf))


def _root_call(entries: Any) -> dict[str, Any]:
    """Keep only the root entry, and only if it is exactly forward(one tensor) -> one tensor."""
    roots = [e for e in entries if isinstance(e, dict) and e.get("fqn") == ""] if isinstance(entries, list) else []
    if len(roots) != 1 or not isinstance(roots[0].get("signature"), dict):
        raise bad("module_call_graph has no single root entry")
    signature = roots[0]["signature"]
    in_spec, out_spec = _expected_specs()
    names = signature.get("forward_arg_names")
    if (signature.get("in_spec"), signature.get("out_spec")) != (in_spec, out_spec):
        raise IntakeRejected(Reason.SIGNATURE_NOT_ALLOWED, "forward must take exactly one tensor and return exactly one tensor")
    if signature.get("inputs") != [] or signature.get("outputs") != []:
        raise bad("root call signature must not list inputs or outputs")
    if not isinstance(names, list) or len(names) != 1 or not _plain_identifier(names[0]):
        raise bad("forward_arg_names must be one identifier")
    return {"fqn": "", "signature": signature}


def _check_targets(nodes: list[dict[str, Any]], max_nodes: int) -> None:
    if len(nodes) > max_nodes:
        raise IntakeRejected(Reason.GRAPH_TOO_LARGE, f"{len(nodes)} operator nodes; the limit is {max_nodes}")
    findings: dict[str, Finding] = {}
    for node in nodes:
        _, finding = resolve_serialized(node["target"])
        if finding is not None:
            findings.setdefault(node["target"], finding)
    if findings:
        first, *rest = findings.values()
        raise IntakeRejected(first.code, first.message, *rest)
