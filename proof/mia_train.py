"""Training inside the proof's own process: the attacker's shadow models and the non-private reference.

DP shadows run the service's own trainer (cleanroom/trainer/dpsgd.py's train()) on the attacker's
public patients with the job's recipe and as many patients as the job had, so σ, q and the number
of steps come out the same as the service's (proof/mia.py checks that they do). The non-private
reference, and its shadows, are the same package trained with a plain optimiser, no clipping and no
noise: the service has no non-private path, by design, so this one can only be trained here.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.utility import build_model  # noqa: E402
from cleanroom.domain.recipe import Recipe  # noqa: E402
from cleanroom.trainer import accounting  # noqa: E402
from cleanroom.trainer.dpsgd import TrainingResult, train  # noqa: E402
from proof.mia_bounds import logit_confidence  # noqa: E402

NON_PRIVATE_STEPS = 500        # full-batch Adam steps: the members' training loss ends near 0
NON_PRIVATE_LEARNING_RATE = 0.01
State = dict[str, torch.Tensor]


@contextmanager
def one_thread() -> Iterator[None]:
    """These tensors are small (a batch of ~100 rows): a second torch thread only adds
    synchronisation, measured at 4x the CPU time on this 2-core machine under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def cached_accounting() -> Iterator[None]:
    """Every shadow of one ε asks the accountant the same question (σ for these ε, δ, q and steps),
    and the PRV calibration takes seconds; the answers are pure functions of those numbers, so
    they are remembered for the duration (the trainer itself runs unchanged)."""
    calibrate, account = accounting.calibrate_noise, accounting.account
    accounting.calibrate_noise = functools.lru_cache(maxsize=None)(calibrate)  # type: ignore[assignment]
    accounting.account = functools.lru_cache(maxsize=None)(account)  # type: ignore[assignment]
    try:
        yield
    finally:
        accounting.calibrate_noise, accounting.account = calibrate, account


def export(package: Path) -> torch.export.ExportedProgram:
    """The package's forward as the service's intake exports it (phase A: eval mode, batch 1)."""
    model = build_model(package).eval()
    example = torch.zeros(1, *model_input_shape(package))
    return torch.export.export(model, (example,), strict=False).run_decompositions()


def model_input_shape(package: Path) -> tuple[int, ...]:
    import tomllib

    return tuple(tomllib.loads((package / "cleanroom-model.toml").read_text())["input_shape"])


def train_dp(program: torch.export.ExportedProgram, X: np.ndarray, y: np.ndarray, *, recipe: Recipe,
             epsilon: float, delta: float) -> TrainingResult:
    """One patient-level DP-SGD run of the service's trainer, one row per patient as in the jobs.
    The trainer's module tripwire guards phase B's sandbox; here it would only trip on this
    script's own plotting and gRPC modules, so it is widened to everything."""
    return train(program, X=X, y=y, patient=np.arange(len(y)), task="binary-classification", num_classes=2,
                 trainable=["*"], target_epsilon=epsilon, target_delta=delta, epochs=recipe.epochs,
                 expected_batch_patients=recipe.expected_batch_patients, max_rows_per_patient=1,
                 learning_rate=recipe.learning_rate, optimizer=recipe.optimizer, clipping_norm=recipe.clipping_norm,
                 allowed_modules=("*",))


def train_non_private(package: Path, X: np.ndarray, y: np.ndarray) -> State:
    """Full-batch Adam from the package's (seeded) initial weights until the members are fitted.
    Deterministic: no sampling, no noise, the same start."""
    model = build_model(package)
    optimiser = torch.optim.Adam(model.parameters(), lr=NON_PRIVATE_LEARNING_RATE)
    features, labels = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    for _ in range(NON_PRIVATE_STEPS):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimiser.step()
    return {name: t.detach().clone() for name, t in model.named_parameters()}


def confidences(package: Path, state: State, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The log-odds of each patient's true label under the package's model with `state` loaded
    (released tensors are the trainable ones; the scaling buffers are the package's constants)."""
    model = build_model(package)
    unknown = set(state) - set(model.state_dict())
    if unknown:
        raise ValueError(f"tensors {sorted(unknown)} are not in the package's model")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        logits = model.eval()(torch.as_tensor(X, dtype=torch.float32)).double().numpy()
    return logit_confidence(logits, np.asarray(y, dtype=np.int64))


def shadow_confidences(trainer: Any, package: Path, pool: np.ndarray, size: int, count: int, rng: np.random.Generator,
                       data: tuple[np.ndarray, np.ndarray], targets: np.ndarray) -> np.ndarray:
    """[count, targets]: each shadow trained by `trainer(X, y) -> state` on `size` patients drawn
    from the public pool, then scored on the target patients (none of whom it saw)."""
    X, y = data
    rows = []
    for _ in range(count):
        chosen = rng.choice(pool, size=size, replace=False)
        rows.append(confidences(package, trainer(X[chosen], y[chosen]), X[targets], y[targets]))
    return np.stack(rows)
