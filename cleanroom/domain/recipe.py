"""The budget-aware DP-SGD recipe: what a training job gets when its request leaves the recipe out.

A pure rule of three public numbers, fixed in advance and never tuned on a hospital's data:

- n, the number of patients the service already discloses for the dataset (its δ limit is
  1 / (10 n), shown with every cost estimate), less the validation share the request holds out;
- ε, the request's own target;
- P, the model's trainable parameter count, from the intake report.

It follows the published DP-SGD practice of large batches, aggressive clipping and a fixed number
of noisy steps chosen before training (Abadi et al., CCS 2016; De et al., "Unlocking high-accuracy
differentially private image classification through scale", 2022; Ponomareva et al., "How to
DP-fy ML", JAIR 2023, section 5: use the largest batch you can afford, clip so that most
per-example gradients are clipped, then fix the epochs; Sander et al., "TAN without a burn",
ICML 2023: at a fixed number of steps what matters is the noise per step σ/B, which larger
batches lower):

    training patients   m = floor(n x (1 - validation_fraction))
    expected batch      B = the power of two nearest m / 4 at ε >= 1, m / 2 below ε = 1
                            (smaller ε: larger batches), kept within [16, 4096] and at most m / 2
    noisy steps         T = 200 at ε >= 4, 300 at 1 <= ε < 4, 400 below (smaller ε: more steps)
    epochs              E = ceil(T x B / m), within [1, 1000]
    clipping norm       C = 1 (per patient; with B this large almost every gradient is clipped)
    optimizer           SGD, learning rate 1 for P <= 1,000, 0.5 for P <= 100,000, else 0.2
                        (with C = 1 the averaged clipped gradient has norm at most 1); Adam if
                        the request names it, at a twentieth of SGD's learning rate

This is rule v2 (budget-aware-dpsgd/v2). v1 had twice the steps at half the batch (B nearest m / 8,
m / 4 below ε = 1; T = 400 / 600 / 800), the same epochs. v2 was chosen on a seed study fixed in
advance (bench/recipe_seeds.py; BENCHMARKS.md, "Privacy-utility on public clinical tables"): on
validation splits carved from the bench tables' training parts, 20 seeds per cell, doubling the
batch and halving the steps lowered the mean AUROC gap to non-private logistic regression and its
spread on the small tables (ACTG 320 at ε = 1: +0.059 ± 0.050 against +0.091 ± 0.065) and left
the large one unchanged, while learning-rate decay (cosine, linear) and a halved learning rate did
not help consistently. σ rises with the batch, but the noise per averaged gradient σ/B falls (Sander et al.).
`budget_recipe(..., rule=RULE_V1)` still gives v1.

Fields the request does set are kept; only the ones it leaves out (0 or empty) come from the rule,
and the job's parameters record the rule's name so the receipt says which recipe ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

RULE_V1 = "budget-aware-dpsgd/v1"
RULE = "budget-aware-dpsgd/v2"
# rule -> (batch divisor at ε >= 1, below ε = 1; noisy steps at ε >= 4, 1 <= ε < 4, below)
_RULES: dict[str, tuple[tuple[int, int], tuple[int, int, int]]] = {
    RULE_V1: ((8, 4), (400, 600, 800)),
    RULE: ((4, 2), (200, 300, 400)),
}
OPTIMIZERS = ("sgd", "adam")
MIN_BATCH, MAX_BATCH = 16, 4096
MAX_EPOCHS = 1000
CLIPPING_NORM = 1.0
ADAM_FACTOR = 1 / 20


@dataclass(frozen=True)
class Recipe:
    epochs: int
    expected_batch_patients: int
    learning_rate: float
    optimizer: str
    clipping_norm: float
    rule: str = RULE

    def describe(self) -> str:
        return (f"{self.rule}: {self.epochs} epochs, expected batch {self.expected_batch_patients} patients, "
                f"{self.optimizer} learning rate {self.learning_rate:g}, clipping norm {self.clipping_norm:g}")


def training_patients(patients: int, validation_fraction: float) -> int:
    return max(0, math.floor(patients * (1.0 - validation_fraction)))


def _batch_divisor(epsilon: float, rule: str = RULE) -> int:
    above, below = _RULES[rule][0]
    return above if epsilon >= 1 else below


def _steps(epsilon: float, rule: str = RULE) -> int:
    loose, middle, tight = _RULES[rule][1]
    return loose if epsilon >= 4 else middle if epsilon >= 1 else tight


def expected_batch(training: int, epsilon: float, rule: str = RULE) -> int:
    target = training / _batch_divisor(epsilon, rule)
    power = 1 << round(math.log2(max(target, 1.0)))
    return max(1, min(max(power, MIN_BATCH), MAX_BATCH, training // 2))


def learning_rate(model_parameters: int, optimizer: str) -> float:
    sgd = 1.0 if model_parameters <= 1_000 else 0.5 if model_parameters <= 100_000 else 0.2
    return sgd if optimizer == "sgd" else sgd * ADAM_FACTOR


def budget_recipe(*, patients: int, epsilon: float, model_parameters: int, validation_fraction: float = 0.0,
                  optimizer: str = "sgd", rule: str = RULE) -> Recipe:
    """The rule above (or v1, by name). Raises ValueError for inputs no recipe fits (fewer than 2
    training patients, ε not positive, an unknown optimizer or rule)."""
    training = training_patients(patients, validation_fraction)
    if rule not in _RULES:
        raise ValueError(f"unknown recipe rule {rule!r}: one of {', '.join(_RULES)}")
    if training < 2 or not (math.isfinite(epsilon) and epsilon > 0) or model_parameters < 1 or optimizer not in OPTIMIZERS:
        raise ValueError("a recipe needs at least 2 training patients, a positive ε, a model with parameters "
                         f"and an optimizer among {', '.join(OPTIMIZERS)}")
    batch = expected_batch(training, epsilon, rule)
    epochs = min(MAX_EPOCHS, max(1, math.ceil(_steps(epsilon, rule) * batch / training)))
    return Recipe(epochs, batch, learning_rate(model_parameters, optimizer), optimizer, CLIPPING_NORM, rule)


LEFT_OUT = ("epochs", "expected_batch_patients", "learning_rate", "optimizer", "clipping_norm")


def left_out(*, epochs: int, expected_batch_patients: int, learning_rate: float, optimizer: str, clipping_norm: float) -> tuple[str, ...]:
    """The recipe fields a request leaves out (proto3 defaults: 0, 0.0 or the empty string)."""
    given: dict[str, object] = dict(epochs=epochs, expected_batch_patients=expected_batch_patients, learning_rate=learning_rate,
                                    optimizer=optimizer, clipping_norm=clipping_norm)
    return tuple(name for name in LEFT_OUT if not given[name])


class RecipeFields(Protocol):
    """What the rule reads of a training request (TrainingParams has these fields, read-only)."""

    @property
    def target_epsilon(self) -> float: ...
    @property
    def epochs(self) -> int: ...
    @property
    def expected_batch_patients(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def clipping_norm(self) -> float: ...
    @property
    def validation_fraction(self) -> float: ...


def defaults_for(request: RecipeFields, *, patients: int, model_parameters: int) -> dict[str, Any]:
    """The fields to fill in a training request that leaves any of the recipe out, plus `recipe`:
    the rule's name, to be kept with the job's parameters (so the workload hash binds it and the
    receipt names it). Empty when the request sets the whole recipe, or when no recipe fits (the
    request's own validation then names the fields)."""
    missing = left_out(epochs=request.epochs, expected_batch_patients=request.expected_batch_patients,
                       learning_rate=request.learning_rate, optimizer=request.optimizer, clipping_norm=request.clipping_norm)
    if not missing:
        return {}
    try:
        recipe = budget_recipe(patients=patients, epsilon=request.target_epsilon, model_parameters=model_parameters,
                               validation_fraction=request.validation_fraction, optimizer=request.optimizer or "sgd")
    except ValueError:
        return {}
    filled: dict[str, Any] = {name: getattr(recipe, name) for name in missing}
    filled["recipe"] = recipe.rule
    return filled
