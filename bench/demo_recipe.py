"""How `make demo` fixes its fine-tuning recipe: the example package, raw features, a validation split.

The demo fine-tunes examples/breast-cancer-mlp (Log1p -> LayerNorm(30) -> 30 -> 32 -> 2, Tanh) on
the hospital's raw features: nothing standardises them for it (the service does no DP feature
scaling; the package's own fixed log1p and per-example LayerNorm do). bench/utility.py measures a
different set-up (standardised features, MLP 30 -> 64 -> 2), so its recipe is not the demo's.

`--select` searches epochs, expected batch, optimizer and learning rate at ε = 1 on a validation
split carved out of bench/utility's training split (its 20% test split is never looked at) and
prints mean validation accuracy over seeds. Without `--select` it compares the demo's old and new
recipes at ε = 1 and 3 on the test split, trained on the whole training split. Accuracy here is
exact (not DP) so that recipes can be told apart; the demo itself prints the DP-noised metrics.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cleanroom.trainer.dpsgd import train  # noqa: E402
from cleanroom.trainer.graph import ExportedModel, Task  # noqa: E402
from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, foreign_modules  # noqa: E402

DELTA = 1e-5
OLD = dict(epochs=10, expected_batch_patients=128, learning_rate=0.5, optimizer="sgd", clipping_norm=1.0)
GRID = [dict(epochs=e, expected_batch_patients=b, optimizer=o, learning_rate=lr, clipping_norm=1.0)
        for e in (10, 30, 60) for b in (32, 64, 128) for o, lr in (("sgd", 0.5), ("sgd", 2.0), ("adam", 0.02), ("adam", 0.1))]


def _build() -> torch.nn.Module:
    path = ROOT / "examples" / "breast-cancer-mlp" / "model.py"
    spec = importlib.util.spec_from_file_location("example_model", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_model()


def _program(seed: int) -> torch.export.ExportedProgram:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(_build().eval(), (torch.zeros(1, 30),), strict=False).run_decompositions()


def load(validation: bool) -> tuple[np.ndarray, ...]:
    """Raw features (as the hospital uploads them); the same splits as bench/utility.py."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    y = (y == 0).astype(np.int64)  # the demo's label: malignant
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    if validation:
        X_train, X_test, y_train, y_test = train_test_split(X_train, y_train, test_size=0.25, random_state=1, stratify=y_train)
    return X_train.astype(np.float32), y_train, X_test.astype(np.float32), y_test


def accuracy(data: tuple, *, epsilon: float, seed: int, recipe: dict) -> float:
    X_tr, y_tr, X_te, y_te = data
    program = _program(seed)
    result = train(program, X=X_tr, y=y_tr, patient=np.arange(len(y_tr)), task="binary-classification", num_classes=2,
                   trainable=["*"], target_epsilon=epsilon, target_delta=DELTA, max_rows_per_patient=1,
                   allowed_modules=DEFAULT_ALLOWED_MODULES + tuple(foreign_modules()), **recipe)
    model = ExportedModel(program, task=Task("binary-classification", 2), trainable=list(result.trained_state))
    return float((model.predict(result.trained_state, torch.as_tensor(X_te)).argmax(1).numpy() == y_te).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="", help="the chosen recipe as key=value,... (for the comparison)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.select:
        data = load(validation=True)
        for recipe in GRID:
            accs = [accuracy(data, epsilon=1.0, seed=s, recipe=recipe) for s in range(args.repeats)]
            print(f"{recipe}: validation accuracy at ε=1 {np.mean(accs):.3f} (min {min(accs):.3f})", flush=True)
        return
    from cleanroom.cli.demo import TRAINING

    new = {k: v for k, v in TRAINING.items() if k != "validation_fraction"}
    data = load(validation=False)
    for name, recipe in (("old", OLD), ("new", new)):
        for eps in (1.0, 3.0):
            accs = [accuracy(data, epsilon=eps, seed=s, recipe=recipe) for s in range(args.repeats)]
            print(f"{name} {recipe} ε={eps:g}: test accuracy {np.mean(accs):.3f} (min {min(accs):.3f}, max {max(accs):.3f})",
                  flush=True)


if __name__ == "__main__":
    main()
