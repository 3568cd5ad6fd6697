"""Seed study of the budget-aware DP-SGD recipe on bench/utility.py's tables, in-process.

For each table, the bench's own split (bench.tables.split: uploaded 80%, kept 20%, seed 0). Each
seeded run mimics one service job: a random 75% of the uploaded patients trains (the job's
training part), the other 25% is the job's held-out part. Variants, fixed before any run:

  v1        the recipe as it was (budget-aware-dpsgd/v1: constant learning rate)
  cosine    v1 with the learning rate decayed by ½(1 + cos(π t / T)) over the T steps
  linear    v1 with the learning rate decayed linearly to 0 over the T steps
  batch2    twice v1's expected batch (at most m / 2), the same epochs (so half the steps);
            chosen, and now the recipe's rule budget-aware-dpsgd/v2
  lr-half   v1 at half the learning rate

All keep the trainer's suffix averaging. The trainer has no learning-rate schedule; for cosine and
linear this script hands it an SGD optimizer that sets its own rate before each step (a fixed
function of the step count, so the privacy accounting is unchanged). Variants share each seed's split, initial weights, Poisson
sampling and noise stream (common random numbers), so their differences are paired.

Per run: the gap, non-private minus exact AUROC of the released weights, on
  validation  the job's held-out 25% (non-private LR fitted on the same 75%): used to choose
  kept        the bench's kept 20% (non-private LR fitted on the uploaded 80%, as bench/utility.py)

`python bench/recipe_seeds.py --seeds 15 --workers 2` prints mean / sd / min of both gaps per
table, ε and variant, and writes bench/out/recipe_seeds.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
import warnings
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import Table, split, tables  # noqa: E402
from bench.utility import DELTA, VALIDATION, build_model, non_private_auroc  # noqa: E402
from cleanroom.domain.recipe import RULE_V1, budget_recipe, expected_batch, training_patients  # noqa: E402

VARIANTS = ("v1", "cosine", "linear", "batch2", "lr-half")
EPSILONS = (1.0, 3.0)
OUT = ROOT / "bench" / "out"


def _export(package: Path, seed: int) -> Any:
    """The package's program, as intake exports it; its untrained weights are torch's default
    initialisation, drawn here from `seed` (the service's are unseeded)."""
    import torch

    torch.manual_seed(seed)
    model = build_model(package).eval()
    n_in = model[0].centre.numel() if hasattr(model[0], "centre") else 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (torch.zeros(1, n_in),), strict=False).run_decompositions()


def variant_settings(name: str, *, uploaded: int, epsilon: float, parameters: int) -> dict[str, Any]:
    r = budget_recipe(patients=uploaded, epsilon=epsilon, model_parameters=parameters, validation_fraction=VALIDATION,
                      rule=RULE_V1)
    s: dict[str, Any] = dict(epochs=r.epochs, expected_batch_patients=r.expected_batch_patients,
                             learning_rate=r.learning_rate, lr_schedule="constant")
    if name in ("cosine", "linear"):
        s["lr_schedule"] = name
    elif name == "lr-half":
        s["learning_rate"] = r.learning_rate / 2
    elif name == "batch2":
        m = training_patients(uploaded, VALIDATION)
        s["expected_batch_patients"] = min(2 * expected_batch(m, epsilon, RULE_V1), m // 2)
    return s


@functools.cache
def _table(name: str) -> tuple[Table, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, float]:
    table = next(t for t in tables() if t.name == name)
    X, y = table.load()
    uploaded, kept = split(y)
    parameters = sum(p.numel() for p in build_model(table.package).parameters() if p.requires_grad)
    baseline = non_private_auroc(X[uploaded], y[uploaded], X[kept], y[kept])
    return table, X, y, uploaded, kept, parameters, baseline


def _patch_accounting() -> None:
    """σ depends only on (ε, δ, q, steps): calibrate once per cell, not once per seed."""
    from cleanroom.trainer import accounting

    if not hasattr(accounting.calibrate_noise, "cache_info"):
        accounting.calibrate_noise = functools.lru_cache(maxsize=None)(accounting.calibrate_noise)  # type: ignore[assignment]
        accounting.account = functools.lru_cache(maxsize=None)(accounting.account)  # type: ignore[assignment]


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return 1.0 - step / steps if schedule == "linear" else 1.0


def _scheduled_sgd(schedule: str, steps: int) -> Any:
    """A make_optimizer for dpsgd: SGD whose rate is base x factor(t / steps) at its t-th step."""
    import torch

    class Scheduled(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:  # type: ignore[override]
            t = getattr(self, "_t", 0)
            for group in self.param_groups:
                group["lr"] = group.setdefault("base_lr", group["lr"]) * _lr_factor(schedule, t, steps)
            self._t = t + 1
            return super().step(closure)

    def make(name: str, params: list[Any], *, learning_rate: float, momentum: float) -> Any:
        assert name == "sgd"
        return Scheduled(params, lr=learning_rate, momentum=momentum)
    return make


def run_one(args: tuple[str, float, str, int]) -> dict[str, Any]:
    import torch
    from sklearn.metrics import roc_auc_score

    from cleanroom.trainer import dpsgd, noise
    from cleanroom.trainer.graph import ExportedModel, Task
    from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, foreign_modules

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    _patch_accounting()
    name, epsilon, variant, seed = args
    table, X, y, uploaded, kept, parameters, baseline = _table(name)
    program = _export(table.package, seed)
    rng = np.random.default_rng(1000 + seed)
    order = rng.permutation(uploaded)
    n_train = round(len(uploaded) * (1 - VALIDATION))
    train, held = np.sort(order[:n_train]), np.sort(order[n_train:])
    settings = variant_settings(variant, uploaded=len(uploaded), epsilon=epsilon, parameters=parameters)
    schedule = settings.pop("lr_schedule")
    plan = dpsgd.plan_steps(n_patients=len(train), target_epsilon=epsilon, target_delta=DELTA, epochs=settings["epochs"],
                            expected_batch_patients=settings["expected_batch_patients"])
    dpsgd.make_optimizer = _scheduled_sgd(schedule, plan.steps)  # type: ignore[assignment]
    settings["lr_schedule"] = schedule
    counter = iter(range(seed * 10**6, (seed + 1) * 10**6))
    start = time.perf_counter()
    result = dpsgd.train(program, X=X[train].astype(np.float32), y=y[train], patient=np.arange(len(train)),
                         task="binary-classification", num_classes=2, trainable=["*"], target_epsilon=epsilon,
                         target_delta=DELTA, max_rows_per_patient=1, optimizer="sgd", clipping_norm=1.0,
                         seed_source=lambda n: next(counter).to_bytes(n, "little"),
                         noise_source=noise.TorchGaussian(torch.Generator().manual_seed(seed)),
                         allowed_modules=DEFAULT_ALLOWED_MODULES + tuple(foreign_modules()),
                         **{k: v for k, v in settings.items() if k != "lr_schedule"})
    model = ExportedModel(program, task=Task("binary-classification", 2), trainable=["*"])

    def score(rows: np.ndarray) -> float:
        logits = model.predict(result.trained_state, model.features(X[rows].astype(np.float32)))
        return float(roc_auc_score(y[rows], (logits[:, 1] - logits[:, 0]).numpy()))

    val_baseline = non_private_auroc(X[train], y[train], X[held], y[held])
    exact_val, exact_kept = score(held), score(kept)
    return dict(table=name, epsilon=epsilon, variant=variant, seed=seed, steps=result.steps,
                sigma=result.noise_multiplier, **settings, val_gap=val_baseline - exact_val, kept_gap=baseline - exact_kept,
                exact_kept=exact_kept, non_private_kept=baseline, seconds=time.perf_counter() - start)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["table"], r["epsilon"], r["variant"]), []).append(r)
    out = []
    for (name, epsilon, variant), rs in cells.items():
        row: dict[str, Any] = dict(table=name, epsilon=epsilon, variant=variant, n=len(rs), steps=rs[0]["steps"],
                                   batch=rs[0]["expected_batch_patients"], lr=rs[0]["learning_rate"], sigma=rs[0]["sigma"])
        for key in ("val_gap", "kept_gap"):
            v = [r[key] for r in rs]
            row[key] = dict(mean=statistics.fmean(v), sd=statistics.stdev(v) if len(v) > 1 else 0.0, min=min(v), max=max(v))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tables", nargs="*", default=["actg320", "flchain", "whas500", "breast-cancer"])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    jobs = [(t, e, v, s) for t in args.tables for e in EPSILONS for s in range(args.seeds) for v in args.variants]
    with Pool(args.workers) as pool:
        runs = []
        for r in pool.imap_unordered(run_one, jobs, chunksize=1):
            runs.append(r)
            if len(runs) % 50 == 0:
                print(f"{len(runs)}/{len(jobs)} runs", file=sys.stderr, flush=True)
    summary = sorted(summarise(runs), key=lambda r: (r["table"], r["epsilon"], VARIANTS.index(r["variant"])))
    print(f"{'table':<14} {'ε':>3} {'variant':<8} {'B':>5} {'T':>5} {'lr':>5} {'σ':>6}   "
          "gap on validation (mean sd min max)   gap on kept 20% (mean sd min max)   [max = the worst run]")
    for r in summary:
        v, k = r["val_gap"], r["kept_gap"]
        print(f"{r['table']:<14} {r['epsilon']:>3g} {r['variant']:<8} {r['batch']:>5} {r['steps']:>5} {r['lr']:>5g} {r['sigma']:>6.2f}   "
              f"{v['mean']:+.3f} {v['sd']:.3f} {v['min']:+.3f} {v['max']:+.3f}     {k['mean']:+.3f} {k['sd']:.3f} {k['min']:+.3f} {k['max']:+.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "recipe_seeds.json").write_text(json.dumps(dict(summary=summary, runs=runs), indent=1))


if __name__ == "__main__":
    main()
