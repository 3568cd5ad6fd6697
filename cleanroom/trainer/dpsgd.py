"""Patient-level DP-SGD over an exported program: the service's training entry point for phase B.

Each step samples patients with Poisson rate q = expected_batch_patients / n_patients, takes at
most `max_rows_per_patient` rows of each, clips every patient's summed gradient to C and adds
N(0, (σC)²) per coordinate (clipping.py). Because a patient moves the clipped sum by at most C
whatever its row count, the standard sampled-Gaussian analysis at rate q is patient-level DP.
The number of patients is treated as public (it is in the dataset's metadata), as Opacus does.

What is released: the mean of the iterates over the last half of the steps (suffix averaging,
Rakhlin, Shamir & Sridharan, ICML 2012; in DP-SGD, iterate averaging as in De et al. 2022), not
the last iterate. Constant-rate noisy SGD ends wherever the last noise draws pushed it, so the
last iterate varies widely from run to run at small ε (and its logits drift to large norms);
averaging T/2 iterates cancels most of that noise. It costs no privacy: the accountant already
covers releasing every iterate (each step's noisy gradient is the mechanism's output), and any
function of them, the average included, is post-processing. `tail_fraction` = 0 releases the
last iterate as before; the fraction used is recorded in dp_parameters (`released`).

Randomness. Opacus's secure_mode needs torchcsprng, which does not install with torch 2.x. A
torch.Generator seeded from os.urandom would be the obvious substitute, but torch's CPU generator
keeps only 32 bits of its seed, so the noise would be one of 2**32 streams. The noise therefore
comes from a CSPRNG (noise.SecureGaussian: AES-256-CTR under a per-job key from os.urandom;
nothing to enumerate, no state to recover from outputs). Poisson sampling and row choice use numpy PCG64 seeded per
job with 256 bits from `seed_source` (os.urandom): unguessable, though not a CSPRNG stream; the
privacy argument needs them independent of the data, not secret. Not addressed: floating-point
artefacts of continuous Gaussian sampling (see noise.py).

The one-run privacy audit (audit.py), when a job asks for it, rides in this very run: its canaries
join each step's clipped sum before the noise and are scored on the update applied (audited_step).
Without it every step is dp_step, as before.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch

from cleanroom.domain.errors import CleanroomError, ErrorCode, bad_request
from cleanroom.domain.privacy_audit import AuditResult
from cleanroom.trainer import accounting, clipping, noise, sampling
from cleanroom.trainer.audit import Canaries
from cleanroom.trainer.graph import ExportedModel, Task
from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, assert_no_foreign_modules
from cleanroom.trainer.sources import Batch, BatchSource, Examples, InMemorySource

OPTIMIZERS = ("sgd", "adam")
TAIL_FRACTION = 0.5      # the released weights average the iterates of the last half of the steps
CHUNK_ELEMENTS = 1 << 26  # per-example gradient floats held at once (256 MiB of float32)

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainingResult:
    trained_state: Tensors           # trainable tensors only, finite
    epsilon_spent: float
    delta: float
    accountant: str                  # "prv", or "rdp" when PRV failed
    noise_multiplier: float
    sample_rate: float
    steps: int
    dp_parameters: dict[str, Any] = field(default_factory=dict)
    audit: AuditResult | None = None  # the one-run privacy audit of this run, when asked (audit.py)


@dataclass(frozen=True)
class StepPlan:
    """What one training job does, fixed before any data is touched."""

    sample_rate: float
    steps: int
    noise_multiplier: float
    expected_batch: float            # q * n_patients, the divisor of every update
    accounting: accounting.Accounting


def make_optimizer(name: str, params: list[torch.Tensor], *, learning_rate: float, momentum: float) -> torch.optim.Optimizer:
    """Only allow-listed optimizers, acting on the service's master weights."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate)
    raise bad_request(f"optimizer must be one of {', '.join(OPTIMIZERS)}")


def plan_steps(*, n_patients: int, target_epsilon: float, target_delta: float, epochs: int,
               expected_batch_patients: int) -> StepPlan:
    """Calibrate σ for the whole job and account it up front: a job that would miss its budget
    is refused before it sees data."""
    accounting.check_delta(delta=target_delta, n_patients=n_patients)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0) or epochs < 1:
        raise bad_request("target_epsilon must be finite and positive, epochs at least 1")
    if not 0 < expected_batch_patients <= n_patients:
        raise bad_request(f"expected_batch_patients must be in [1, {n_patients}]")
    q = expected_batch_patients / n_patients
    steps = max(1, round(epochs / q))
    sigma, _ = accounting.calibrate_noise(target_epsilon=target_epsilon, target_delta=target_delta,
                                          sample_rate=q, steps=steps)
    spent = accounting.account(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=target_delta)
    if spent.epsilon > target_epsilon * (1 + 1e-9):
        raise accounting.AccountingError(f"calibrated epsilon {spent.epsilon:.4g} exceeds the target {target_epsilon:.4g}")
    return StepPlan(q, steps, sigma, q * n_patients, spent)


def sample_batch(index: sampling.PatientIndex, rng: np.random.Generator, *, sample_rate: float, max_rows: int) -> Batch:
    patients = sampling.poisson_patients(rng, n_patients=index.n_patients, sample_rate=sample_rate)
    rows, segments = sampling.bounded_rows(index, patients, max_rows=max_rows, rng=rng)
    return Batch(rows, segments, len(patients))


def sample_examples(source: BatchSource, rng: np.random.Generator, *, sample_rate: float, max_rows: int) -> Examples:
    """One step's examples: Poisson over the source's patient slots (reads only their public
    count), then at most max_rows examples of each sampled patient, drawn by the source."""
    patients = sampling.poisson_patients(rng, n_patients=source.n_patients, sample_rate=sample_rate)
    return source.batch(patients, max_rows=max_rows, rng=rng)


def clipped_batch_sum(model: ExportedModel, master: Tensors, X: torch.Tensor, y: torch.Tensor,
                      batch: Batch, *, clipping_norm: float, chunk_rows: int) -> Tensors:
    """Σ over the batch's patients of their clipped gradients, in patient-aligned chunks."""
    sums = []
    for part in sampling.patient_chunks(batch.segments, max_rows=chunk_rows):
        rows, local = torch.as_tensor(batch.rows[part]), batch.segments[part] - batch.segments[part][0]
        n_patients = int(local[-1]) + 1
        # Segments are sorted and gap-free, so as many patients as rows means one row each.
        segments = None if n_patients == len(local) else torch.as_tensor(local)
        grads = model.per_example_grads_factored(master, X[rows], y[rows])
        sums.append(clipping.clipped_sum(grads, segments, n_patients, clipping_norm=clipping_norm))
    if not sums:
        return {n: torch.zeros_like(t) for n, t in master.items()}
    return sums[0] if len(sums) == 1 else {n: cast(torch.Tensor, sum(s[n] for s in sums)) for n in master}


def dp_step(model: ExportedModel, master: Tensors, optimizer: torch.optim.Optimizer, X: torch.Tensor,
            y: torch.Tensor, batch: Batch, *, plan: StepPlan, clipping_norm: float,
            noise_source: clipping.GaussianSource, chunk_rows: int) -> None:
    summed = clipped_batch_sum(model, master, X, y, batch, clipping_norm=clipping_norm, chunk_rows=chunk_rows)
    update = clipping.private_gradient(summed, noise_multiplier=plan.noise_multiplier, clipping_norm=clipping_norm,
                                       expected_batch=plan.expected_batch, noise=noise_source)
    for name, tensor in master.items():
        tensor.grad = update[name]
    optimizer.step()  # an empty batch still steps: the noise alone is the mechanism's output


def audited_step(model: ExportedModel, master: Tensors, optimizer: torch.optim.Optimizer, X: torch.Tensor,
                 y: torch.Tensor, batch: Batch, *, plan: StepPlan, clipping_norm: float,
                 noise_source: clipping.GaussianSource, chunk_rows: int, canaries: Canaries) -> None:
    """dp_step with the audit's canaries: their clipped gradients join the sum before the noise, and
    each canary's score reads the update the optimizer is given."""
    summed = clipped_batch_sum(model, master, X, y, batch, clipping_norm=clipping_norm, chunk_rows=chunk_rows)
    canaries.inject(summed)
    update = clipping.private_gradient(summed, noise_multiplier=plan.noise_multiplier, clipping_norm=clipping_norm,
                                       expected_batch=plan.expected_batch, noise=noise_source)
    canaries.observe(update)
    for name, tensor in master.items():
        tensor.grad = update[name]
    optimizer.step()


def _chunk_rows(master: Tensors, max_rows_per_patient: int) -> int:
    size = sum(t.numel() for t in master.values())
    return max(max_rows_per_patient, min(1024, CHUNK_ELEMENTS // max(size, 1)))


def _validate(*, clipping_norm: float, learning_rate: float, max_rows_per_patient: int, momentum: float,
              optimizer: str) -> None:
    if not (clipping_norm > 0 and learning_rate > 0 and max_rows_per_patient >= 1 and 0 <= momentum < 1):
        raise bad_request("clipping_norm and learning_rate must be positive, max_rows_per_patient >= 1, momentum in [0, 1)")
    if optimizer not in OPTIMIZERS:
        raise bad_request(f"optimizer must be one of {', '.join(OPTIMIZERS)}")


def train(program: torch.export.ExportedProgram, *, X: np.ndarray, y: np.ndarray, patient: np.ndarray,
          task: str, num_classes: int, trainable: Sequence[str], target_epsilon: float, target_delta: float,
          epochs: int, expected_batch_patients: int, max_rows_per_patient: int, learning_rate: float,
          optimizer: str, clipping_norm: float, momentum: float = 0.0, tail_fraction: float = TAIL_FRACTION,
          seed_source: sampling.SeedSource = os.urandom,
          noise_source: clipping.GaussianSource | None = None,
          allowed_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES, audit_canaries: int = 0) -> TrainingResult:
    """Patient-level (ε, δ)-DP training of the program's trainable tensors over a table in memory;
    see the module docstring. `noise_source` defaults to the OS CSPRNG; a seeded one is for tests
    only. The released weights average the iterates of the last `tail_fraction` of the steps.
    `audit_canaries` > 0 runs the one-run privacy audit (audit.py) inside this very run."""
    assert_no_foreign_modules(allowed_modules)
    settings = Settings(task, num_classes, tuple(trainable), target_epsilon, target_delta, epochs, expected_batch_patients,
                        max_rows_per_patient, learning_rate, optimizer, clipping_norm, momentum, tail_fraction,
                        audit_canaries)
    settings.check()
    model = ExportedModel(program, task=Task(task, num_classes), trainable=trainable)
    X_t = model.features(X)
    y_t = model.labels(y, len(X_t))
    if len(patient) != len(X_t):
        raise bad_request("patient must hold one id per row")
    source = InMemorySource(X_t, y_t, sampling.PatientIndex.build(np.asarray(patient)))
    return _train_model(model, source, settings, seed_source=seed_source, noise_source=noise_source)


def train_source(program: torch.export.ExportedProgram, source: BatchSource, *, task: str, num_classes: int,
                 trainable: Sequence[str], target_epsilon: float, target_delta: float, epochs: int,
                 expected_batch_patients: int, max_rows_per_patient: int, learning_rate: float, optimizer: str,
                 clipping_norm: float, momentum: float = 0.0, tail_fraction: float = TAIL_FRACTION,
                 seed_source: sampling.SeedSource = os.urandom, noise_source: clipping.GaussianSource | None = None,
                 allowed_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES, audit_canaries: int = 0) -> TrainingResult:
    """As `train`, with each step's examples drawn from `source` (a stream's windows, cut on
    demand). The patient count is the source's (public); the source must return model-ready
    tensors and at most max_rows_per_patient examples per sampled patient (checked every step)."""
    assert_no_foreign_modules(allowed_modules)
    settings = Settings(task, num_classes, tuple(trainable), target_epsilon, target_delta, epochs, expected_batch_patients,
                        max_rows_per_patient, learning_rate, optimizer, clipping_norm, momentum, tail_fraction,
                        audit_canaries)
    settings.check()
    model = ExportedModel(program, task=Task(task, num_classes), trainable=trainable)
    return _train_model(model, source, settings, seed_source=seed_source, noise_source=noise_source)


@dataclass(frozen=True)
class Settings:
    """A training request's public parameters, as train() and train_source() take them."""

    task: str
    num_classes: int
    trainable: tuple[str, ...]
    target_epsilon: float
    target_delta: float
    epochs: int
    expected_batch_patients: int
    max_rows_per_patient: int
    learning_rate: float
    optimizer: str
    clipping_norm: float
    momentum: float
    tail_fraction: float
    audit_canaries: int = 0

    def check(self) -> None:
        _validate(clipping_norm=self.clipping_norm, learning_rate=self.learning_rate,
                  max_rows_per_patient=self.max_rows_per_patient, momentum=self.momentum, optimizer=self.optimizer)
        if not 0 <= self.tail_fraction <= 1:
            raise bad_request("tail_fraction must be in [0, 1]")


def _train_model(model: ExportedModel, source: BatchSource, s: Settings, *, seed_source: sampling.SeedSource,
                 noise_source: clipping.GaussianSource | None) -> TrainingResult:
    plan = plan_steps(n_patients=source.n_patients, target_epsilon=s.target_epsilon, target_delta=s.target_delta,
                      epochs=s.epochs, expected_batch_patients=s.expected_batch_patients)
    master = model.initial_trainable()
    opt = make_optimizer(s.optimizer, list(master.values()), learning_rate=s.learning_rate, momentum=s.momentum)
    gaussian = noise_source or noise.SecureGaussian()
    tail = tail_steps(plan.steps, s.tail_fraction)
    canaries = None
    if s.audit_canaries:
        canaries = Canaries(s.audit_canaries, {n: tuple(t.shape) for n, t in master.items()}, clipping_norm=s.clipping_norm,
                            sample_rate=plan.sample_rate)
    released = _run(model, master, opt, source, plan=plan, rng=sampling.numpy_generator(seed_source),
                    noise_source=gaussian, clipping_norm=s.clipping_norm, max_rows=s.max_rows_per_patient, tail=tail,
                    canaries=canaries)
    settings = dict(clipping_norm=s.clipping_norm, expected_batch_patients=s.expected_batch_patients, epochs=s.epochs,
                    max_rows_per_patient=s.max_rows_per_patient, optimizer=s.optimizer, learning_rate=s.learning_rate,
                    momentum=s.momentum, target_epsilon=s.target_epsilon, n_patients=source.n_patients,
                    noise_rng=gaussian.name, tail_fraction=s.tail_fraction, averaged_steps=tail,
                    released=f"mean of the iterates after each of the last {tail} of {plan.steps} steps "
                             "(suffix averaging; post-processing, no privacy cost)")
    result = _result(released, plan, settings)
    if canaries is None:
        return result
    audited = canaries.result(claimed_epsilon=result.epsilon_spent, delta=result.delta)
    return replace(result, audit=audited, dp_parameters={**result.dp_parameters, "privacy_audit": audited.to_json()})


def _checked(model: ExportedModel, examples: Examples, *, max_rows: int) -> Examples:
    """A source's examples, held to what the step relies on (cheap: shapes and counts, no values)."""
    batch = examples.batch
    if examples.X.dtype != torch.float32 or tuple(examples.X.shape[1:]) != model.input_shape:
        raise bad_request(f"features must be float32 [n, {', '.join(map(str, model.input_shape))}]")
    if examples.y.dtype != (torch.int64 if model.task.classification else torch.float32):
        raise bad_request("labels must be int64 class indices (float32 targets for regression)")
    if len(batch.segments):
        counts = np.bincount(batch.segments)
        if counts.max() > max_rows or counts.min() < 1 or len(batch.rows) != len(batch.segments):
            raise CleanroomError(ErrorCode.INTERNAL, "a batch source broke the per-patient bound")
    return examples


def tail_steps(steps: int, tail_fraction: float) -> int:
    """How many final iterates the released weights average: ceil(fraction x steps), at least 1."""
    return max(1, min(steps, math.ceil(tail_fraction * steps)))


def _run(model: ExportedModel, master: Tensors, opt: torch.optim.Optimizer, source: BatchSource, *, plan: StepPlan,
         rng: np.random.Generator, noise_source: clipping.GaussianSource, clipping_norm: float, max_rows: int,
         tail: int, canaries: Canaries | None = None) -> Tensors:
    """Runs the plan's steps; returns the mean of the iterates after each of the last `tail` steps
    (accumulated in float64, so averaging hundreds of iterates adds no rounding of its own)."""
    chunk_rows = _chunk_rows(master, max_rows)
    total = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in master.items()}
    for step in range(plan.steps):
        examples = _checked(model, sample_examples(source, rng, sample_rate=plan.sample_rate, max_rows=max_rows),
                            max_rows=max_rows)
        if canaries is None:
            dp_step(model, master, opt, examples.X, examples.y, examples.batch, plan=plan, clipping_norm=clipping_norm,
                    noise_source=noise_source, chunk_rows=chunk_rows)
        else:
            audited_step(model, master, opt, examples.X, examples.y, examples.batch, plan=plan, clipping_norm=clipping_norm,
                         noise_source=noise_source, chunk_rows=chunk_rows, canaries=canaries)
        if step >= plan.steps - tail:
            with torch.no_grad():
                for name, tensor in master.items():
                    total[name] += tensor.detach().double()
    return {n: (total[n] / tail).to(master[n].dtype) for n in master}


def _result(master: Tensors, plan: StepPlan, params: dict[str, Any]) -> TrainingResult:
    state = {n: t.detach().clone() for n, t in master.items()}
    if not all(bool(torch.isfinite(t).all()) for t in state.values()):
        raise CleanroomError(ErrorCode.INTERNAL, "training produced non-finite weights; nothing is released")
    acct = plan.accounting
    params.update(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps,
                  epsilon=acct.epsilon, delta=acct.delta, accountant=acct.accountant, rdp_epsilon=acct.rdp_epsilon,
                  privacy_unit="patient", mechanism="subsampled-gaussian", sampling="poisson")
    return TrainingResult(state, acct.epsilon, acct.delta, acct.accountant, plan.noise_multiplier,
                          plan.sample_rate, plan.steps, params)
