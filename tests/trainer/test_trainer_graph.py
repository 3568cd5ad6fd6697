"""The exported forward as a function: per-example gradients, isolation between examples, shapes."""

from __future__ import annotations

import pytest
import torch

from cleanroom.domain.errors import CleanroomError
from cleanroom.trainer.graph import ExportedModel, Task, resolve_trainable
from tests.paths import MODEL_PACKAGES
from tests.trainer.test_trainer_helpers import MLP, BatchMixer, CNN1d, export

BINARY = Task("binary-classification", 2)


def _loop_grads(program, trainable: dict[str, torch.Tensor], X, y) -> dict[str, torch.Tensor]:
    """Plain autograd, one example at a time, on a copy of the program's module."""
    module = program.module()
    params = dict(module.named_parameters())
    rows = []
    for x, label in zip(X, y):
        leaves = {n: t.clone().requires_grad_(True) for n, t in trainable.items()}
        out = torch.func.functional_call(module, {**params, **leaves}, (x.unsqueeze(0),))
        loss = torch.nn.functional.cross_entropy(out, label.reshape(1))
        rows.append(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())))))
    return {n: torch.stack([r[n] for r in rows]) for n in trainable}


@pytest.mark.parametrize("module,classes", [(MLP(), 2), (CNN1d(3), 3)])
def test_per_example_grads_match_autograd_one_by_one(module, classes) -> None:
    torch.manual_seed(1)
    program = export(module)
    model = ExportedModel(program, task=Task("multiclass-classification", classes), trainable=["*"])
    X, y = torch.randn(37, 30), torch.randint(0, classes, (37,))
    params = model.initial_trainable()
    fast = model.per_example_grads(params, X, y)
    slow = _loop_grads(program, params, X, y)
    assert set(fast) == set(slow)
    for name in fast:
        assert fast[name].shape == (37, *params[name].shape)
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-6)


def test_per_example_gradient_ignores_the_rest_of_a_batch_mixing_model() -> None:
    torch.manual_seed(2)
    mixer = BatchMixer()
    X, y = torch.randn(16, 30), torch.randint(0, 2, (16,))
    changed = X.clone()
    changed[7] = 100 * torch.randn(30)
    # Run as a real batch the model does mix: example 0's loss depends on example 7.
    on_batch = [torch.nn.functional.cross_entropy(mixer(b)[:1], y[:1]).item() for b in (X, changed)]
    assert abs(on_batch[0] - on_batch[1]) > 1e-3
    model = ExportedModel(export(mixer), task=BINARY, trainable=["*"])
    params = model.initial_trainable()
    before, after = model.per_example_grads(params, X, y), model.per_example_grads(params, changed, y)
    others = [i for i in range(16) if i != 7]
    for name in before:
        torch.testing.assert_close(before[name][others], after[name][others], rtol=0, atol=0)
        assert not torch.equal(before[name][7], after[name][7])


def test_padding_to_a_bucket_does_not_change_gradients() -> None:
    torch.manual_seed(3)
    model = ExportedModel(export(MLP()), task=BINARY, trainable=["*"])
    X, y = torch.randn(40, 30), torch.randint(0, 2, (40,))
    params = model.initial_trainable()
    whole = model.per_example_grads(params, X, y)
    head = model.per_example_grads(params, X[:5], y[:5])
    for name in whole:
        torch.testing.assert_close(whole[name][:5], head[name], rtol=1e-6, atol=1e-7)


def test_only_trainable_parameters_get_gradients() -> None:
    model = ExportedModel(export(MLP()), task=BINARY, trainable=["l2.*"])
    assert model.trainable_names == ("l2.weight", "l2.bias")
    grads = model.per_example_grads(model.initial_trainable(), torch.randn(3, 30), torch.tensor([0, 1, 0]))
    assert set(grads) == {"l2.weight", "l2.bias"}


def test_trainable_resolution_is_exact_and_refuses_unknown_patterns() -> None:
    names = ["l1.weight", "l1.bias", "l2.weight", "l2.bias"]
    assert resolve_trainable(names, ["l2.bias", "l1.*"]) == ("l1.weight", "l1.bias", "l2.bias")
    with pytest.raises(CleanroomError):
        resolve_trainable(names, ["head.*"])


def test_output_shape_must_match_the_task() -> None:
    with pytest.raises(CleanroomError, match="logits"):
        ExportedModel(export(MLP(out=2)), task=Task("multiclass-classification", 5), trainable=["*"])


def test_regression_uses_squared_error() -> None:
    torch.manual_seed(4)
    model = ExportedModel(export(MLP(out=1)), task=Task("regression", 0), trainable=["*"])
    params = model.initial_trainable()
    x, target = torch.randn(30), torch.tensor(0.5)
    prediction = model.forward_one(params, x).reshape(())
    assert model.loss_one(params, x, target).item() == pytest.approx((prediction - 0.5).item() ** 2, rel=1e-6)


def test_linear_weight_gradients_stay_factored_and_rebuild_exactly() -> None:
    from cleanroom.trainer.tracing import Outer, TracedGrads

    torch.manual_seed(5)
    for module, factored in ((MLP(), {"l1.weight", "l2.weight"}), (CNN1d(3), {"head.weight"})):
        classes = 2 if isinstance(module, MLP) else 3
        model = ExportedModel(export(module), task=Task("multiclass-classification", classes), trainable=["*"])
        params = model.initial_trainable()
        X, y = torch.randn(64, 30), torch.randint(0, classes, (64,))
        grads = model.per_example_grads_factored(params, X, y)
        assert isinstance(model._traced[64], TracedGrads)  # traced, not the eager fallback
        assert {n for n, g in grads.items() if isinstance(g, Outer)} == factored
        eager = torch.func.vmap(torch.func.grad(model.loss_one), in_dims=(None, 0, 0))(params, X, y)
        for name, g in grads.items():
            dense = g.dense() if isinstance(g, Outer) else g
            torch.testing.assert_close(dense, eager[name], rtol=1e-5, atol=1e-7)


def test_a_nan_row_in_the_traced_batch_keeps_the_fast_graph() -> None:
    from cleanroom.trainer.tracing import Outer
    from tests.trainer.test_trainer_helpers import NaNTrap

    torch.manual_seed(6)
    model = ExportedModel(export(NaNTrap()), task=BINARY, trainable=["*"])
    X, y = torch.randn(32, 30), torch.randint(0, 2, (32,))
    X[0, 0] = 42.0
    grads = model.per_example_grads_factored(model.initial_trainable(), X, y)
    assert isinstance(grads["l1.weight"], Outer) and isinstance(grads["l2.weight"], Outer)
    assert torch.isnan(grads["l2.weight"].dense()[0]).any() and torch.isfinite(grads["l2.weight"].dense()[1:]).all()


def test_a_casting_model_read_back_like_intake_trains_like_autograd(tmp_path) -> None:
    """Phase B's path for a model whose forward casts: the artifact intake stores (read back,
    assertion nodes stripped, validated) gives the same per-example gradients as plain autograd."""
    import importlib.util

    from cleanroom.models.intake import IntakeLimits, parse_manifest
    from cleanroom.models.intake.artifact import artifact_bytes, read_artifact
    from cleanroom.models.intake.validate import validate_program

    package = MODEL_PACKAGES / "casting"
    spec = importlib.util.spec_from_file_location("casting_model", package / "model.py")
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    raw = export(source.build_model())
    (tmp_path / "a.safetensors").write_bytes(artifact_bytes(raw))
    program = read_artifact(tmp_path / "a.safetensors", max_bytes=1 << 26, max_header_bytes=1 << 20, max_tensors=64, max_nodes=500)
    manifest = parse_manifest((package / "cleanroom-model.toml").read_text())
    assert validate_program(program, manifest, IntakeLimits()).accepted
    torch.manual_seed(7)
    model = ExportedModel(program, task=BINARY, trainable=["*"])
    X, y = torch.randn(37, 30), torch.randint(0, 2, (37,))
    params = model.initial_trainable()
    fast, slow = model.per_example_grads(params, X, y), _loop_grads(program, params, X, y)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-6)
    # Defence in depth: a program that still held the assertions would run them as no-ops.
    assert any(n.target is torch.ops.aten._assert_tensor_metadata.default for n in raw.graph.nodes)
    unstripped = ExportedModel(raw, task=BINARY, trainable=["*"]).per_example_grads(params, X, y)
    for name in slow:
        torch.testing.assert_close(unstripped[name], slow[name], rtol=1e-5, atol=1e-6)
