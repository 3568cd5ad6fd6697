"""Export validation and the artifact format, in-process on models defined by the tests (trusted).

The sandboxed end-to-end runs are in test_intake_adversarial.py; here every check of validate.py
and every refusal of the artifact reader is exercised quickly, through the same path the service
uses: artifact bytes -> read_artifact (vetted JSON, safetensors, no pickle) -> validate_program.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import pickle
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from cleanroom.models.intake import IntakeLimits, IntakeRejected, Reason, parse_manifest
from cleanroom.models.intake.artifact import FORMAT, artifact_bytes, read_artifact, read_untrusted_file
from cleanroom.models.intake.ops import check_target, is_assertion, strip_assertions
from cleanroom.models.intake.validate import validate_program

LIMITS = IntakeLimits()
# torch 2.13's own run_decompositions deprecation noise
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def manifest(shape=(4,), task="binary-classification", classes: int | None = 2, trainable=("*",)):
    lines = ['name = "t"', 'version = "1.0.0"', 'entrypoint = "model:build_model"', f'task = "{task}"',
             f"input_shape = {list(shape)}", f"trainable = {json.dumps(list(trainable))}"]
    if classes is not None:
        lines.append(f"num_classes = {classes}")
    return parse_manifest("\n".join(lines))


def export(module: nn.Module, shape=(4,)) -> torch.export.ExportedProgram:
    return torch.export.export(module.eval(), (torch.zeros(1, *shape),)).run_decompositions()


def roundtrip(ep: torch.export.ExportedProgram, tmp_path: Path, limits: IntakeLimits = LIMITS) -> torch.export.ExportedProgram:
    path = tmp_path / "exported.safetensors"
    path.write_bytes(artifact_bytes(ep))
    return read_artifact(path, max_bytes=1 << 30, max_header_bytes=limits.max_header_bytes,
                         max_tensors=limits.max_tensors, max_nodes=limits.max_graph_nodes)


def check(module: nn.Module, tmp_path: Path, shape=(4,), limits: IntakeLimits = LIMITS, **manifest_args):
    return validate_program(roundtrip(export(module, shape), tmp_path, limits), manifest(shape, **manifest_args), limits)


def codes(result) -> set[Reason]:
    return {f.code for f in result.findings}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


# --- the artifact ------------------------------------------------------------------------------

def test_artifact_roundtrip_is_faithful_and_pickle_free(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv1d(12, 8, 5), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    ep = export(model, (12, 250))
    loaded = roundtrip(ep, tmp_path)
    x = torch.randn(1, 12, 250)
    torch.testing.assert_close(loaded.module()(x), model(x))
    assert {k: v.shape for k, v in loaded.state_dict.items()} == {k: v.shape for k, v in model.state_dict().items()}
    header_len = struct.unpack("<Q", (tmp_path / "exported.safetensors").read_bytes()[:8])[0]
    header = json.loads((tmp_path / "exported.safetensors").read_bytes()[8:8 + header_len])
    assert header["__metadata__"]["format"] == FORMAT
    assert all(node["metadata"] == {} for node in json.loads(header["__metadata__"]["program"])["graph_module"]["graph"]["nodes"])


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pt2_with_pickle_payload(tmp_path: Path, marker: Path) -> Path:
    """torch.export.save's own format, with one weight swapped for a pickle flagged use_pickle."""
    clean, evil = tmp_path / "clean.pt2", tmp_path / "evil.pt2"
    torch.export.save(torch.export.export(nn.Linear(4, 2), (torch.zeros(1, 4),)), clean)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("weights/weight_0"):
                data = pickle.dumps(Payload(marker), protocol=2)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)
    return evil


def test_torch_export_load_would_run_a_pickle_payload_and_read_artifact_does_not(tmp_path: Path) -> None:
    """Why the service has its own artifact format: torch 2.13's loader executes the payload."""
    evil = pt2_with_pickle_payload(tmp_path, tmp_path / "ran-in-torch-load")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, the payload has already run
        torch.export.load(evil)
    assert (tmp_path / "ran-in-torch-load").exists()  # torch.export.load unpickled it
    marker = tmp_path / "ran-in-read-artifact"
    evil = pt2_with_pickle_payload(tmp_path, marker)
    with pytest.raises(IntakeRejected) as info:
        read_artifact(evil, max_bytes=1 << 30, max_header_bytes=1 << 24, max_tensors=64, max_nodes=64)
    assert info.value.findings[0].code is Reason.ARTIFACT_INVALID and not marker.exists()


@functools.cache
def mlp_artifact() -> tuple[bytes, dict[str, torch.Tensor]]:
    ep = export(mlp())
    return artifact_bytes(ep), {"state/" + k: v.detach().contiguous() for k, v in ep.state_dict.items()}


def tampered(tmp_path: Path, edit, tensors=None) -> Path:
    """Our own format with the program JSON edited; tensors may be replaced too."""
    from safetensors.torch import save

    blob, state = mlp_artifact()
    n = struct.unpack("<Q", blob[:8])[0]
    program = json.loads(json.loads(blob[8:8 + n])["__metadata__"]["program"])
    edit(program)
    state = tensors if tensors is not None else state
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(save(state, metadata={"format": FORMAT, "program": json.dumps(program)}))
    return path


def first_size(program: dict) -> dict:
    return next(iter(program["graph_module"]["graph"]["tensor_values"].values()))["sizes"][0]


def set_target(target: str):
    def edit(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
    return edit


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda p: first_size(p).update({"as_expr": {"expr_str": "__import__('os').system('touch {marker}')"}}), Reason.ARTIFACT_INVALID),
    (lambda p: p.update(guards_code=["__import__('os').system('touch {marker}')"]), Reason.ARTIFACT_INVALID),
    (lambda p: p.update(range_constraints={"s0": {"min_val": 1, "max_val": 9}}), Reason.ARTIFACT_INVALID),
    (lambda p: p["graph_module"]["graph"].update(custom_obj_values={"x": {"name": "x", "class_fqn": "os.system"}}), Reason.ARTIFACT_INVALID),
    (lambda p: p["graph_module"]["graph"]["nodes"][0].update(name="x; import os"), Reason.ARTIFACT_INVALID),
    (lambda p: p["graph_module"]["graph"]["nodes"][0].update(name="lambda"), Reason.ARTIFACT_INVALID),
    (lambda p: p["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"].update(
        {"as_custom_obj": {"name": "o", "class_fqn": "__torch__.evil"}}), Reason.ARTIFACT_INVALID),
    (lambda p: p["graph_module"]["graph"]["tensor_values"][next(iter(p["graph_module"]["graph"]["tensor_values"]))].update(
        device={"type": "cuda", "index": 0}), Reason.ARTIFACT_INVALID),
    (lambda p: p["graph_module"]["signature"]["input_specs"].append({"custom_obj": {}}), Reason.SIGNATURE_NOT_ALLOWED),
    (lambda p: p.update(schema_version={"major": 0, "minor": 0}), Reason.ARTIFACT_INVALID),
    (set_target("builtins.eval"), Reason.OP_NOT_ALLOWED),
    (set_target("torch.ops.evil.leak.default"), Reason.CUSTOM_OP),
    (set_target("torch.ops.higher_order.cond"), Reason.OP_NOT_ALLOWED),
    (set_target("torch.ops.aten.no_such_op.default"), Reason.OP_NOT_ALLOWED),
])
def test_tampered_programs_are_refused_before_torch_deserializes_them(tmp_path: Path, edit, reason: Reason) -> None:
    marker = tmp_path / "payload-ran"

    def apply(program: dict) -> None:
        edit(program)
        text = json.dumps(program).replace("{marker}", str(marker))
        program.clear()
        program.update(json.loads(text))

    with pytest.raises(IntakeRejected) as info:
        read_artifact(tampered(tmp_path, apply), max_bytes=1 << 30, max_header_bytes=1 << 24, max_tensors=64, max_nodes=64)
    assert info.value.findings[0].code is reason
    assert not marker.exists()


def test_aten_ops_outside_the_allow_list_are_refused_by_validation(tmp_path: Path) -> None:
    """Real ATen ops are safe to deserialize, so their verdict comes with every other finding."""
    undecomposed = torch.export.export(mlp().eval(), (torch.zeros(1, 4),)).run_decompositions({})
    result = validate_program(roundtrip(undecomposed, tmp_path), manifest(), LIMITS)
    assert codes(result) == {Reason.OP_NOT_ALLOWED} and "aten.linear.default" in result.findings[0].message
    assert check_target(torch.ops.aten.relu_.default).code is Reason.OP_NOT_ALLOWED
    assert check_target(torch.ops.aten.native_batch_norm.default).code is Reason.BATCH_NORM
    assert check_target(torch.ops.aten.addmm.default) is None and check_target(operator.getitem) is None
    assert check_target(print).code is Reason.OP_NOT_ALLOWED


def test_tensors_must_match_the_signature(tmp_path: Path) -> None:
    extra = {**mlp_artifact()[1], "state/stolen": torch.zeros(3)}
    for tensors in (extra, {}):
        with pytest.raises(IntakeRejected, match="signature"):
            read_artifact(tampered(tmp_path, lambda p: None, tensors), max_bytes=1 << 30, max_header_bytes=1 << 24,
                          max_tensors=64, max_nodes=64)


def test_reader_never_follows_links(tmp_path: Path) -> None:
    secret = tmp_path / "kek.json"
    secret.write_bytes(mlp_artifact()[0])  # even a valid artifact behind a link is refused
    (tmp_path / "exported.safetensors").symlink_to(secret)
    with pytest.raises(IntakeRejected, match="plain file"):
        read_artifact(tmp_path / "exported.safetensors", max_bytes=1 << 30, max_header_bytes=1 << 24, max_tensors=64, max_nodes=64)


def test_untrusted_outputs_are_read_without_following_links_or_blocking(tmp_path: Path) -> None:
    secret = tmp_path / "kek.json"
    secret.write_text("secret")
    (tmp_path / "error.txt").symlink_to(secret)
    os.mkfifo(tmp_path / "summary.json")
    for name in ("error.txt", "summary.json"):
        with pytest.raises(FileNotFoundError):
            read_untrusted_file(tmp_path / name, 1024)
    (tmp_path / "big.txt").write_text("x" * 2048)
    with pytest.raises(ValueError, match="limit"):
        read_untrusted_file(tmp_path / "big.txt", 1024)


# --- validation --------------------------------------------------------------------------------

def test_good_models_pass_with_trainable_names_resolved(tmp_path: Path) -> None:
    result = check(mlp(), tmp_path, trainable=("2.*",))
    assert result.accepted, result.findings
    assert result.trainable == ["2.weight", "2.bias"] and result.parameter_count == 4 * 8 + 8 + 8 * 2 + 2
    assert result.trainable_parameter_count == 8 * 2 + 2  # what the training recipe reads: the head only
    assert result.output_shape == [1, 2] and result.op_histogram == {
        "aten.addmm.default": 2, "aten.permute.default": 2, "aten.relu.default": 1}
    for out_shape in ([1], [1, 1]):
        head = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)) if out_shape == [1] else nn.Linear(4, 1)
        assert check(head, tmp_path, task="regression", classes=None).accepted


class Casting(nn.Module):
    """Ordinary casts: torch 2.13's export keeps an aten._assert_tensor_metadata node for each."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc((x.to(torch.float64) * 2).float()).to(dtype=torch.float32)


def test_a_model_that_casts_is_accepted_and_its_assertions_are_stripped(tmp_path: Path) -> None:
    exported = export(Casting())
    asserted = [n for n in exported.graph.nodes if n.target is torch.ops.aten._assert_tensor_metadata.default]
    assert len(asserted) >= 2  # the premise: export keeps them, so the reader must deal with them
    loaded = roundtrip(exported, tmp_path)
    result = validate_program(loaded, manifest(), LIMITS)
    assert result.accepted, result.findings
    assert not any("_assert" in name for name in result.op_histogram)
    assert result.op_histogram["aten._to_copy.default"] == 2  # the casts themselves stay
    x = torch.randn(1, 4)
    torch.testing.assert_close(loaded.module()(x), exported.module()(x))


def test_only_unused_pure_assertions_are_stripped() -> None:
    ep = export(mlp())
    graph = ep.graph_module.graph
    x = next(n for n in graph.nodes if n.op == "placeholder" and n.name == ep.graph_signature.user_inputs[0])
    with graph.inserting_after(x):
        graph.call_function(torch.ops.aten._assert_async.msg, (x, "checked"))
    assert strip_assertions(ep) == 1
    assert [n.target for n in graph.nodes if n.op == "call_function"] == [
        torch.ops.aten.permute.default, torch.ops.aten.addmm.default, torch.ops.aten.relu.default,
        torch.ops.aten.permute.default, torch.ops.aten.addmm.default]
    assert is_assertion(torch.ops.aten._assert_tensor_metadata.default) and is_assertion(torch.ops.aten._assert_scalar.default)
    assert not is_assertion(torch.ops.aten._to_copy.default) and not is_assertion(torch.ops.aten.relu_.default)


class Stash(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("memory", torch.zeros(1, 4))

    def forward(self, x):
        self.memory.add_(x)
        return self.fc(x)


class WriteWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        with torch.no_grad():
            self.fc.bias.mul_(0.5)
        return self.fc(x)


class WriteInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x.mul_(2)
        return self.fc(x)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize(("module", "reason"), [
    (Stash(), Reason.BUFFER_MUTATION),
    (WriteWeight(), Reason.PARAMETER_MUTATION),
    (WriteInput(), Reason.USER_INPUT_MUTATION),
    (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)), Reason.BATCH_NORM),
    (nn.Sequential(nn.Linear(4, 3)), Reason.OUTPUT_SHAPE),
])
def test_models_that_must_be_refused(tmp_path: Path, module: nn.Module, reason: Reason) -> None:
    result = check(module, tmp_path)
    assert reason in codes(result), result.findings
    if reason is Reason.BATCH_NORM:
        assert "GroupNorm" in next(f.message for f in result.findings if f.code is reason)


def test_batch_norm_in_training_mode_is_refused_too(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    ep = torch.export.export(model, (torch.zeros(2, 4),)).run_decompositions()
    result = validate_program(roundtrip(ep, tmp_path), manifest(), LIMITS)
    assert {Reason.BATCH_NORM, Reason.BUFFER_MUTATION} <= codes(result)


def test_multiple_outputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IntakeRejected) as info:
        roundtrip(export(TwoOutputs()), tmp_path)
    assert info.value.findings[0].code is Reason.SIGNATURE_NOT_ALLOWED


def test_custom_ops_are_refused_by_namespace(tmp_path: Path) -> None:
    @torch.library.custom_op("cleanroom_test::echo", mutates_args=())
    def echo(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    echo.register_fake(lambda x: torch.empty_like(x))

    class UsesEcho(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(echo(x))

    with pytest.raises(IntakeRejected) as info:
        roundtrip(export(UsesEcho()), tmp_path)
    assert info.value.findings[0].code is Reason.CUSTOM_OP and "cleanroom_test" in info.value.findings[0].message


def test_limits_and_trainable_rules(tmp_path: Path) -> None:
    assert Reason.TRAINABLE_NO_MATCH in codes(check(mlp(), tmp_path, trainable=("encoder.*",)))
    assert Reason.TOO_MANY_PARAMETERS in codes(check(mlp(), tmp_path, limits=replace(LIMITS, max_parameters=10)))
    assert Reason.TENSOR_TOO_LARGE in codes(check(mlp(), tmp_path, limits=replace(LIMITS, max_tensor_elements=16)))
    with pytest.raises(IntakeRejected) as info:
        check(mlp(), tmp_path, limits=replace(LIMITS, max_graph_nodes=3))
    assert info.value.findings[0].code is Reason.GRAPH_TOO_LARGE
    poisoned = mlp()
    with torch.no_grad():
        poisoned[0].weight[0, 0] = float("nan")
    assert Reason.NON_FINITE_WEIGHTS in codes(check(poisoned, tmp_path))


def test_integer_parameters_cannot_be_trainable(tmp_path: Path) -> None:
    class IntParam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.steps = nn.Parameter(torch.zeros(1, dtype=torch.int64), requires_grad=False)

        def forward(self, x):
            return self.fc(x) + self.steps

    result = check(IntParam(), tmp_path)
    assert Reason.TRAINABLE_NOT_FLOAT in codes(result)
    assert check(IntParam(), tmp_path, trainable=("fc.*",)).accepted
