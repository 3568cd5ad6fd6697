"""The budget-aware DP-SGD recipe (cleanroom/domain/recipe.py): a pure rule of (patients, ε, model size)."""

from __future__ import annotations

import pytest

from cleanroom.domain.recipe import RULE, RULE_V1, budget_recipe, defaults_for, left_out


def test_the_documented_values_for_a_few_cases() -> None:
    small = budget_recipe(patients=455, epsilon=1.0, model_parameters=62, validation_fraction=0.25)
    assert (small.expected_batch_patients, small.epochs, small.optimizer, small.learning_rate, small.clipping_norm) == \
        (64, 57, "sgd", 1.0, 1.0)  # m = 341, 341 / 4 -> 64; ceil(300 x 64 / 341) = 57
    large = budget_recipe(patients=5098, epsilon=3.0, model_parameters=14, validation_fraction=0.25)
    assert (large.expected_batch_patients, large.epochs) == (1024, 81)  # m = 3823 -> 956 -> 1024; ceil(300 x 1024 / 3823)
    assert large.rule == RULE == "budget-aware-dpsgd/v2" and RULE in large.describe()
    tight = budget_recipe(patients=10_000, epsilon=0.5, model_parameters=100)
    assert (tight.expected_batch_patients, tight.epochs) == (4096, 164)  # 10,000 / 2 -> 4096; ceil(400 x 4096 / 10,000)


def test_v1_is_still_reproducible_by_name() -> None:
    """v1: half v2's batch, twice its steps, the same epochs."""
    small = budget_recipe(patients=455, epsilon=1.0, model_parameters=62, validation_fraction=0.25, rule=RULE_V1)
    assert (small.expected_batch_patients, small.epochs, small.rule) == (32, 57, RULE_V1)  # ceil(600 x 32 / 341)
    large = budget_recipe(patients=5098, epsilon=3.0, model_parameters=14, validation_fraction=0.25, rule=RULE_V1)
    assert (large.expected_batch_patients, large.epochs) == (512, 81) and RULE_V1 in large.describe()
    with pytest.raises(ValueError, match="rule"):
        budget_recipe(patients=455, epsilon=1.0, model_parameters=62, rule="budget-aware-dpsgd/v0")


def test_smaller_epsilon_gets_larger_batches_and_more_steps() -> None:
    tight = budget_recipe(patients=10_000, epsilon=0.5, model_parameters=100)
    loose = budget_recipe(patients=10_000, epsilon=8.0, model_parameters=100)
    assert tight.expected_batch_patients > loose.expected_batch_patients
    steps = lambda r: r.epochs * 10_000 / r.expected_batch_patients  # noqa: E731
    assert steps(tight) > steps(loose)


def test_larger_models_get_smaller_learning_rates_and_adam_a_twentieth() -> None:
    rates = [budget_recipe(patients=1000, epsilon=1, model_parameters=p).learning_rate for p in (100, 50_000, 10**6)]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == 3
    adam = budget_recipe(patients=1000, epsilon=1, model_parameters=100, optimizer="adam")
    assert adam.optimizer == "adam" and adam.learning_rate == pytest.approx(rates[0] / 20)


@pytest.mark.parametrize("patients", [2, 3, 17, 100, 569, 7874, 10**6])
@pytest.mark.parametrize("epsilon", [0.1, 1.0, 3.0, 8.0, 50.0])
def test_always_a_valid_request(patients: int, epsilon: float) -> None:
    training = int(patients * 0.75)
    if training < 2:
        with pytest.raises(ValueError):
            budget_recipe(patients=patients, epsilon=epsilon, model_parameters=1000, validation_fraction=0.25)
        return
    r = budget_recipe(patients=patients, epsilon=epsilon, model_parameters=1000, validation_fraction=0.25)
    assert 1 <= r.expected_batch_patients <= max(1, training // 2) and r.expected_batch_patients <= 4096
    assert 1 <= r.epochs <= 1000 and 0 < r.learning_rate <= 10 and r.clipping_norm == 1.0


def test_no_recipe_without_training_patients_or_with_a_bad_epsilon() -> None:
    for kwargs in (dict(patients=2, epsilon=1.0, validation_fraction=0.5), dict(patients=100, epsilon=0.0),
                   dict(patients=100, epsilon=float("inf")), dict(patients=100, epsilon=1.0, optimizer="lbfgs")):
        with pytest.raises(ValueError):
            budget_recipe(model_parameters=10, **kwargs)  # type: ignore[arg-type]


def test_left_out_names_the_proto3_defaults() -> None:
    assert left_out(epochs=0, expected_batch_patients=0, learning_rate=0.0, optimizer="", clipping_norm=0.0) == \
        ("epochs", "expected_batch_patients", "learning_rate", "optimizer", "clipping_norm")
    assert left_out(epochs=5, expected_batch_patients=0, learning_rate=0.5, optimizer="sgd", clipping_norm=1.0) == \
        ("expected_batch_patients",)


def test_defaults_for_fills_only_what_the_request_leaves_out_and_names_the_rule() -> None:
    from dataclasses import dataclass

    @dataclass
    class Request:
        target_epsilon: float = 1.0
        epochs: int = 0
        expected_batch_patients: int = 0
        learning_rate: float = 0.0
        optimizer: str = ""
        clipping_norm: float = 0.0
        validation_fraction: float = 0.25

    filled = defaults_for(Request(), patients=455, model_parameters=62)
    assert filled == {"epochs": 57, "expected_batch_patients": 64, "learning_rate": 1.0, "optimizer": "sgd",
                      "clipping_norm": 1.0, "recipe": RULE}
    partial = defaults_for(Request(epochs=5, optimizer="adam", clipping_norm=2.0), patients=455, model_parameters=62)
    assert partial == {"expected_batch_patients": 64, "learning_rate": 0.05, "recipe": RULE}
    assert defaults_for(Request(epochs=5, expected_batch_patients=8, learning_rate=0.5, optimizer="sgd", clipping_norm=1.0),
                        patients=455, model_parameters=62) == {}
    assert defaults_for(Request(), patients=1, model_parameters=62) == {}  # no recipe fits: validation refuses
