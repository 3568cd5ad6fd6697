"""Patient-level DP-SGD: the clipped, noised update against a plain-loop reference and against
Opacus's DPOptimizer, the patient bound, NaN traps, noise scale, and what is released."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cleanroom.trainer import clipping, dpsgd, noise, sampling
from cleanroom.trainer.graph import ExportedModel, Task
from tests.trainer.test_trainer_helpers import MLP, NaNTrap, allowed_here, export, fixed_seed, separable_data

BINARY = Task("binary-classification", 2)
C, SIGMA, EXPECTED = 0.7, 1.3, 5.0


def _fixed_batch(one_row_each: bool = False) -> tuple[torch.Tensor, torch.Tensor, dpsgd.Batch]:
    """Six patients: one row, many rows, a NaN-trap row among normal ones, huge gradients, tiny ones.
    With one_row_each, fifteen one-row patients with the same traps (the factored fast path)."""
    torch.manual_seed(5)
    X, y = torch.randn(60, 30), torch.randint(0, 2, (60,))
    X[3, 4] = 42.0                       # NaN trap inside patient 1
    X[20:30] *= 50                       # patient 3: large gradients, clipped
    X[30:33] *= 1e-3                     # patient 4: small ones, below C
    if one_row_each:
        rows = np.r_[0:6, 20:26, 30:33]
        return X, y, dpsgd.Batch(rows, np.arange(len(rows)), len(rows))
    bounds = [0, 1, 12, 20, 30, 33, 60]  # rows of patient p are bounds[p]:bounds[p + 1]
    segments = np.concatenate([[p] * (b - a) for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])
    return X, y, dpsgd.Batch(np.arange(60), segments, 6)


def _reference_update(program, master, X, y, batch, generator) -> dict[str, torch.Tensor]:
    """Textbook patient-level DP-SGD with loops: no vmap, no index_add, no shared code."""
    module = program.module()  # a fresh GraphModule, independent of the service's
    params = dict(module.named_parameters())
    total = {n: torch.zeros_like(t) for n, t in master.items()}
    for p in range(batch.n_patients):
        patient_grad = {n: torch.zeros_like(t) for n, t in master.items()}
        for row in batch.rows[batch.segments == p]:
            leaves = {n: t.clone().requires_grad_(True) for n, t in master.items()}
            out = torch.func.functional_call(module, {**params, **leaves}, (X[row].unsqueeze(0),))
            loss = torch.nn.functional.cross_entropy(out, y[row].reshape(1))
            grads = torch.autograd.grad(loss, list(leaves.values()))
            if all(bool(torch.isfinite(g).all()) for g in grads):
                for n, g in zip(leaves, grads):
                    patient_grad[n] += g
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in patient_grad.values()))
        factor = min(1.0, C / (norm + 1e-6))
        for n in total:
            total[n] += factor * patient_grad[n]
    for n in total:
        total[n] = (total[n] + torch.normal(0.0, SIGMA * C, size=tuple(total[n].shape), generator=generator)) / EXPECTED
    return total


def _service_update(model, master, X, y, batch, generator, chunk_rows=1024):
    summed = dpsgd.clipped_batch_sum(model, master, X, y, batch, clipping_norm=C, chunk_rows=chunk_rows)
    return clipping.private_gradient(summed, noise_multiplier=SIGMA, clipping_norm=C, expected_batch=EXPECTED,
                                     noise=noise.TorchGaussian(generator))


@pytest.mark.parametrize("chunk_rows,one_row_each", [(1024, False), (12, False), (1024, True), (7, True)])
def test_update_equals_the_loop_reference(chunk_rows: int, one_row_each: bool) -> None:
    torch.manual_seed(6)
    program = export(NaNTrap())
    model = ExportedModel(program, task=BINARY, trainable=["*"])
    master = model.initial_trainable()
    X, y, batch = _fixed_batch(one_row_each)
    ours = _service_update(model, master, X, y, batch, torch.Generator().manual_seed(99), chunk_rows)
    ref = _reference_update(program, master, X, y, batch, torch.Generator().manual_seed(99))
    for name in master:
        assert torch.isfinite(ours[name]).all()
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=1e-6)


def test_update_equals_opacus_dpoptimizer_on_the_same_patient_gradients() -> None:
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(7)
    model = ExportedModel(export(MLP()), task=BINARY, trainable=["*"])
    master = model.initial_trainable()
    X, y, batch = _fixed_batch()
    X[3, 4] = 0.0
    grads = model.per_example_grads(master, X, y)
    per_patient = clipping.patient_sums(grads, torch.as_tensor(batch.segments), batch.n_patients)
    params = [torch.nn.Parameter(t.clone()) for t in master.values()]
    for p, name in zip(params, master):
        p.grad_sample = per_patient[name].clone()
    opt = DPOptimizer(torch.optim.SGD(params, lr=1.0), noise_multiplier=SIGMA, max_grad_norm=C,
                      expected_batch_size=int(EXPECTED), generator=torch.Generator().manual_seed(3))
    opt.pre_step()
    ours = _service_update(model, master, X, y, batch, torch.Generator().manual_seed(3))
    for p, name in zip(params, master):
        torch.testing.assert_close(ours[name], p.grad, rtol=0, atol=1e-6)


def test_a_patient_with_a_thousand_rows_moves_the_clean_update_by_at_most_c_over_qn() -> None:
    torch.manual_seed(8)
    model = ExportedModel(export(MLP()), task=BINARY, trainable=["*"])
    master = model.initial_trainable()
    X, y = torch.randn(1100, 30) * 20, torch.randint(0, 2, (1100,))
    segments = np.concatenate([np.arange(100), np.full(1000, 100)])
    with_big = dpsgd.Batch(np.arange(1100), segments, 101)
    without = dpsgd.Batch(np.arange(100), np.arange(100), 100)
    expected = 50.0  # q * n_patients
    moves = []
    for max_rows in (1000, 7):
        rows = np.concatenate([np.arange(100), 100 + np.arange(max_rows)])
        both = dpsgd.Batch(rows, segments[rows], 101)
        a = dpsgd.clipped_batch_sum(model, master, X, y, both, clipping_norm=C, chunk_rows=2048)
        b = dpsgd.clipped_batch_sum(model, master, X, y, without, clipping_norm=C, chunk_rows=2048)
        moves.append(math.sqrt(sum(float(((a[n] - b[n]) / expected).pow(2).sum()) for n in a)))
    raw = model.per_example_grads(master, X[100:], y[100:])
    raw_norm = math.sqrt(sum(float(g.sum(0).pow(2).sum()) for g in raw.values()))
    assert raw_norm > 10 * C  # unclipped, the patient would move the update far more
    assert with_big.n_patients == 101
    for move in moves:
        assert 0 < move <= C / expected * (1 + 1e-5)


def _train(program, X, y, patient, **overrides):
    args = dict(X=X, y=y, patient=patient, task="binary-classification", num_classes=2, trainable=["*"],
                target_epsilon=2.0, target_delta=1e-5, epochs=2, expected_batch_patients=64,
                max_rows_per_patient=4, learning_rate=0.5, optimizer="sgd", clipping_norm=1.0,
                allowed_modules=allowed_here())
    args.update(overrides)
    return dpsgd.train(program, **args)


def test_a_nan_trap_model_leaves_released_parameters_finite() -> None:
    torch.manual_seed(9)
    program = export(NaNTrap())
    X, y = separable_data(600, seed=1)
    X[::5, 0] = 42.0  # a fifth of the rows trigger NaN
    model = ExportedModel(program, task=BINARY, trainable=["*"])
    raw = model.per_example_grads(model.initial_trainable(), torch.as_tensor(X[:10]), torch.as_tensor(y[:10]))
    assert torch.isnan(raw["l2.weight"][0]).any() and torch.isfinite(raw["l2.weight"][1]).all()
    result = _train(program, X, y, np.arange(600), momentum=0.9, optimizer="sgd")
    assert all(torch.isfinite(t).all() for t in result.trained_state.values())


def test_released_state_holds_exactly_the_trainable_tensors() -> None:
    program = export(MLP())
    X, y = separable_data(300, seed=2)
    result = _train(program, X, y, np.arange(300), trainable=["l2.*"], epochs=1, optimizer="adam", learning_rate=0.01)
    assert list(result.trained_state) == ["l2.weight", "l2.bias"]
    initial = program.state_dict["l2.weight"]
    assert not torch.equal(result.trained_state["l2.weight"], initial)


def test_noise_is_fresh_per_run_and_has_the_calibrated_scale() -> None:
    """q = 1 and one step: both runs see the same clipped sum, so they differ by noise only."""
    torch.manual_seed(10)
    program = export(MLP())
    X, y = separable_data(400, seed=3)
    runs = [_train(program, X, y, np.arange(400), expected_batch_patients=400, epochs=1, learning_rate=1.0,
                   target_epsilon=1.0) for _ in range(2)]
    assert runs[0].steps == 1 and runs[0].sample_rate == 1.0
    diff = torch.cat([(runs[0].trained_state[n] - runs[1].trained_state[n]).flatten() for n in runs[0].trained_state])
    expected = math.sqrt(2) * runs[0].noise_multiplier * 1.0 / 400
    assert diff.std().item() == pytest.approx(expected, rel=0.08)


def test_training_learns_and_reports_its_privacy() -> None:
    torch.manual_seed(11)
    program = export(MLP())
    X, y = separable_data(2000, seed=4, flip=0.0)
    patient = np.repeat(np.arange(500), 4)  # four rows per patient
    result = _train(program, X, y, patient, target_epsilon=4.0, epochs=6, expected_batch_patients=100,
                    seed_source=fixed_seed(1))
    model = ExportedModel(program, task=BINARY, trainable=["*"])
    accuracy = (model.predict(result.trained_state, torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.8
    assert result.accountant == "prv" and result.epsilon_spent <= 4.0
    assert result.sample_rate == pytest.approx(100 / 500) and result.dp_parameters["privacy_unit"] == "patient"
    assert result.dp_parameters["rdp_epsilon"] >= result.epsilon_spent


def test_sampling_takes_at_most_k_rows_per_patient_and_whole_patients() -> None:
    index = sampling.PatientIndex.build(np.array(["b", "a", "b", "c", "b", "b", "a"]))
    rng = np.random.default_rng(0)
    rows, segments = sampling.bounded_rows(index, np.array([0, 1]), max_rows=2, rng=rng)
    patient = np.array(["b", "a", "b", "c", "b", "b", "a"])
    assert list(patient[rows]) == ["a", "a", "b", "b"] and list(segments) == [0, 0, 1, 1]
    assert len(set(rows)) == 4
    chunks = sampling.patient_chunks(np.array([0, 0, 1, 1, 1, 2, 3, 3]), max_rows=3)
    assert [(c.start, c.stop) for c in chunks] == [(0, 2), (2, 5), (5, 8)]


def test_poisson_sampling_has_rate_q() -> None:
    rng = sampling.numpy_generator(fixed_seed(5))
    sizes = [len(sampling.poisson_patients(rng, n_patients=1000, sample_rate=0.1)) for _ in range(300)]
    assert np.mean(sizes) == pytest.approx(100, rel=0.03) and np.std(sizes) == pytest.approx(math.sqrt(90), rel=0.2)


def test_bad_parameters_are_refused_before_training() -> None:
    from cleanroom.domain.errors import CleanroomError

    program = export(MLP())
    X, y = separable_data(100, seed=5)
    with pytest.raises(CleanroomError, match="optimizer"):
        _train(program, X, y, np.arange(100), optimizer="lbfgs")
    with pytest.raises(CleanroomError, match="delta"):
        _train(program, X, y, np.arange(100), target_delta=0.02)
    with pytest.raises(CleanroomError, match="labels"):
        _train(program, X, y + 5, np.arange(100))


def test_secure_gaussian_noise_is_standard_normal_and_never_repeats() -> None:
    source = noise.SecureGaussian()
    draws = source.normal((200_001,), 2.0)
    assert draws.dtype == torch.float32 and draws.shape == (200_001,)
    assert abs(draws.mean().item()) < 0.02 and draws.std().item() == pytest.approx(2.0, rel=0.01)
    assert abs(((draws / 2) ** 4).mean().item() - 3.0) < 0.1  # Gaussian kurtosis, not just the variance
    assert not torch.equal(source.normal((4, 3), 1.0), source.normal((4, 3), 1.0))
    assert source.normal((), 1.0).shape == ()


def test_released_weights_average_the_last_iterates() -> None:
    """Suffix averaging is post-processing of the same trajectory: with the same seeds and noise,
    tail_fraction 0 releases the last iterate, the default the mean of the last half."""
    assert [dpsgd.tail_steps(t, 0.5) for t in (1, 2, 7, 600)] == [1, 1, 4, 300]
    assert dpsgd.tail_steps(10, 0.0) == 1 and dpsgd.tail_steps(10, 1.0) == 10
    torch.manual_seed(12)
    program = export(MLP())
    X, y = separable_data(300, seed=5)

    def run(tail: float) -> dpsgd.TrainingResult:
        noise_source = noise.TorchGaussian(torch.Generator().manual_seed(3))
        return _train(program, X, y, np.arange(300), tail_fraction=tail, seed_source=fixed_seed(2), noise_source=noise_source)

    last, again, averaged = run(0.0), run(0.0), run(0.5)
    assert all(torch.equal(last.trained_state[n], again.trained_state[n]) for n in last.trained_state)
    assert not all(torch.equal(last.trained_state[n], averaged.trained_state[n]) for n in last.trained_state)
    assert averaged.dp_parameters["averaged_steps"] == dpsgd.tail_steps(averaged.steps, 0.5)
    assert last.dp_parameters["averaged_steps"] == 1
    assert averaged.epsilon_spent == last.epsilon_spent  # the same mechanism, the same account
    with pytest.raises(Exception, match="tail_fraction"):
        run(1.5)
