"""DP training cost on CPU: the service's patient-level DP-SGD against plain and Opacus training.

(a) One step at batch 256 on an exported MLP (30 -> 64 -> 2): the service's DP step (per-example
    gradients of the exported graph, clipping, noise, optimizer) over a plain non-private PyTorch
    step on the same model as an nn.Module. Target: at most 3x.
(b) A whole job: `cleanroom.trainer.dpsgd.train` against a bare Opacus script (PrivacyEngine with
    Poisson sampling and the PRV accountant, make_private_with_epsilon, so both calibrate σ with the
    same Opacus call) on the same data, epochs, expected batch and budget. Target: at most 1.15x.
    One row per patient, so Opacus's row-level sampling is the same mechanism as ours.

Both parts run in one process and interleave their measurements; timings are medians. Part (b)
times the trainer alone; bench/job.py times the whole service job over gRPC (sandbox, attestation,
release gate included) against the same kind of Opacus script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cleanroom.trainer import dpsgd, noise  # noqa: E402
from cleanroom.trainer.graph import ExportedModel, Task  # noqa: E402

BATCH, D_IN = 256, 30


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(D_IN, 64), nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


def _export(module: nn.Module) -> torch.export.ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, (torch.zeros(1, D_IN),)).run_decompositions()


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, D_IN)).astype(np.float32)
    return X, (X @ rng.normal(size=D_IN) > 0).astype(np.int64)


def _plain_step(model: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return step


def _dp_step(program: torch.export.ExportedProgram, X: torch.Tensor, y: torch.Tensor):
    model = ExportedModel(program, task=Task("binary-classification", 2), trainable=["*"])
    master = model.initial_trainable()
    opt = torch.optim.SGD(list(master.values()), lr=0.1)
    plan = dpsgd.StepPlan(BATCH / len(X), 1, 1.0, float(BATCH), None)  # type: ignore[arg-type]
    batch = dpsgd.Batch(np.arange(BATCH), np.arange(BATCH), BATCH)
    source = noise.SecureGaussian()  # the service's own noise: every draw from the OS CSPRNG

    def step() -> None:
        dpsgd.dp_step(model, master, opt, X, y, batch, plan=plan, clipping_norm=1.0, noise_source=source,
                      chunk_rows=1024)
    return step


def _times_ms(fn, *, inner: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per call; CPU time is what contention on a shared machine spares."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - wall) / inner * 1e3, (time.process_time() - cpu) / inner * 1e3


def step_ratio(rounds: int = 40, inner: int = 20) -> None:
    torch.manual_seed(0)
    X_np, y_np = _data(BATCH)
    X, y = torch.as_tensor(X_np), torch.as_tensor(y_np)
    net = MLP()
    plain = _plain_step(net, torch.optim.SGD(net.parameters(), lr=0.1), X, y)
    private = _dp_step(_export(MLP()), X, y)
    for fn in (plain, private):  # warm-up, traces included
        _times_ms(fn, inner=2 * inner)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "dp": []}
    for _ in range(rounds):  # interleaved, so load on the machine hits both alike
        times["plain"].append(_times_ms(plain, inner=inner))
        times["dp"].append(_times_ms(private, inner=inner))
    (p, pc), (d, dc) = ([statistics.median(t[i] for t in times[k]) for i in (0, 1)] for k in ("plain", "dp"))
    print(f"(a) step at batch {BATCH}: plain {p:.3f} ms, DP {d:.3f} ms, ratio {d / p:.2f}x (target <= 3x); "
          f"CPU time {pc:.3f} vs {dc:.3f} ms, {dc / pc:.2f}x")


def _opacus_job(net: nn.Module, X: np.ndarray, y: np.ndarray, *, epochs: int, epsilon: float, delta: float,
                lr: float, clip: float) -> tuple[float, float]:
    """The bare Opacus script a user would write for the same job; returns (σ, ε spent)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=BATCH)
    engine = PrivacyEngine(accountant="prv")
    net, opt, loader = engine.make_private_with_epsilon(
        module=net, optimizer=torch.optim.SGD(net.parameters(), lr=lr), data_loader=loader, target_epsilon=epsilon,
        target_delta=delta, epochs=epochs, max_grad_norm=clip, poisson_sampling=True)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    return opt.noise_multiplier, engine.get_epsilon(delta)


def _service_job(program: torch.export.ExportedProgram, X: np.ndarray, y: np.ndarray, *, epochs: int,
                 epsilon: float, delta: float, lr: float, clip: float) -> tuple[float, float]:
    result = dpsgd.train(program, X=X, y=y, patient=np.arange(len(X)), task="binary-classification", num_classes=2,
                         trainable=["*"], target_epsilon=epsilon, target_delta=delta, epochs=epochs,
                         expected_batch_patients=BATCH, max_rows_per_patient=1, learning_rate=lr, optimizer="sgd",
                         clipping_norm=clip, allowed_modules=_allowed())
    return result.noise_multiplier, result.epsilon_spent


def _allowed() -> tuple[str, ...]:
    from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, foreign_modules

    # The baseline's own imports share this process (a worker would hold only the default list).
    return DEFAULT_ALLOWED_MODULES + tuple(foreign_modules())


def job_ratio(*, n: int, epochs: int, repeat: int) -> None:
    X, y = _data(n)
    args = dict(epochs=epochs, epsilon=3.0, delta=1e-6, lr=0.5, clip=1.0)
    torch.manual_seed(0)
    template = MLP()
    program = _export(template)
    times: dict[str, list[float]] = {"opacus": [], "service": []}
    for _ in range(repeat):  # alternate, so drifting load on the machine hits both alike
        net = MLP()
        net.load_state_dict(template.state_dict())
        start = time.perf_counter()
        sigma_o, eps_o = _opacus_job(net, X, y, **args)
        times["opacus"].append(time.perf_counter() - start)
        start = time.perf_counter()
        sigma_s, eps_s = _service_job(program, X, y, **args)
        times["service"].append(time.perf_counter() - start)
    o, s = statistics.median(times["opacus"]), statistics.median(times["service"])
    steps = epochs * n // BATCH
    print(f"(b) job, {n} patients, {epochs} epochs, {steps} steps of expected batch {BATCH}: "
          f"Opacus {o:.1f} s (σ {sigma_o:.4f}, ε {eps_o:.3f}), service {s:.1f} s (σ {sigma_s:.4f}, ε {eps_s:.3f}), "
          f"ratio {s / o:.2f}x (target <= 1.15x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=25600)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-job", action="store_true", help="only part (a)")
    args = parser.parse_args()
    # Small ops gain nothing from intra-op threads, and on a shared machine threads only contend.
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    step_ratio()
    if not args.skip_job:
        job_ratio(n=args.patients, epochs=args.epochs, repeat=args.repeat)


if __name__ == "__main__":
    main()
