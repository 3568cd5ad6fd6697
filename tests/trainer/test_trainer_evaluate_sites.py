"""Cohort evaluation through evaluate(): every task kind, per-site rows by first site, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.trainer.evaluate import evaluate, first_sites
from cleanroom.trainer.report import Cohort, render_html, render_json, report_data
from tests.trainer.test_trainer_helpers import MLP, allowed_here, export, separable_data

NAMES = ["North", "South", "East"]


def _run(*, task: str, classes: int, metrics: list[str], site: np.ndarray, patient: np.ndarray, n: int,
         epsilon: float = 50.0, names: list[str] = NAMES, **kw):
    X, y = separable_data(n, seed=3)
    y = y if task != "multiclass-classification" else (np.arange(n) % classes)
    y = y.astype(np.float64) if task == "regression" else y
    program = export(MLP(out=1 if task == "regression" else classes))
    return evaluate(program, X=X, y=y, patient=patient, task=task, num_classes=classes, target_epsilon=epsilon,
                    target_delta=1e-6, metrics=metrics, max_rows_per_patient=1, allowed_modules=allowed_here(),
                    site=site, site_names=names, **kw)


def test_first_sites_gives_each_unit_to_its_earliest_site() -> None:
    unit = np.asarray(["a", "b", "a", "c", "b", "a"], dtype=object)
    site = np.asarray([2, 1, 0, 2, 2, 1])
    assert first_sites(unit, site).tolist() == [-1, 1, 0, 2, -1, -1]


@pytest.mark.parametrize("task, classes, metrics, extra", [
    ("binary-classification", 2, ["accuracy", "auroc", "calibration"], {}),
    ("multiclass-classification", 3, ["accuracy", "macro_recall", "calibration"], {}),
    ("regression", 1, ["mae", "rmse"], {"error_bound": 5.0}),
])
def test_every_task_kind_reports_per_site_and_pooled(task, classes, metrics, extra) -> None:
    """The third site has no rows of its own (its persons all count at the first): it still gets
    its noisy release, and the result's shape does not depend on the data."""
    n = 1200
    site = np.repeat([0, 1, 2], [500, 400, 300])
    patient = np.asarray([f"p{i}" for i in range(900)] + [f"p{i}" for i in range(300)], dtype=object)
    result = _run(task=task, classes=classes, metrics=metrics, site=site, patient=patient, n=n, **extra)
    assert [s.name for s in result.sites] == NAMES and [s.index for s in result.sites] == [0, 1, 2]
    for part in [result, *(s.result for s in result.sites)]:
        assert set(metrics) - {"calibration"} <= set(part.metrics)
        for value, lo, hi in part.metrics.values():
            assert lo <= value <= hi
    assert result.mechanism_parameters["per_site"]["East"]["rho"] == pytest.approx(result.mechanism_parameters["rho"] / 2)


def test_two_or_more_site_names_and_one_site_index_per_row_are_required() -> None:
    site, patient = np.zeros(100, dtype=np.int64), np.arange(100)
    with pytest.raises(CleanroomError) as caught:
        _run(task="binary-classification", classes=2, metrics=["auroc"], site=site[:50], patient=patient, n=100)
    assert caught.value.code is ErrorCode.BAD_REQUEST and "site" in str(caught.value)
    with pytest.raises(CleanroomError):
        _run(task="binary-classification", classes=2, metrics=["auroc"], site=site + 3, patient=patient, n=100)
    single = _run(task="binary-classification", classes=2, metrics=["auroc"], site=site, patient=patient, n=100, names=["North"])
    assert single.sites == [] and "per_site" not in single.mechanism_parameters


def test_the_report_escapes_site_names_and_says_who_never_saw_what() -> None:
    site = np.repeat([0, 1], 300)
    result = _run(task="binary-classification", classes=2, metrics=["auroc", "accuracy"], site=site,
                  patient=np.arange(600), n=600, names=["<b>North</b>", "South"])
    cohort = Cohort((("<b>North</b>", "train"), ("South", "validate")), "every site declared a linkage column: x")
    data = report_data(title="t", evaluation=result, cohort=cohort)
    page = render_html(data)
    assert "<b>North</b>" not in page and "&lt;b&gt;North&lt;/b&gt;" in page
    forest = page[page.index('aria-label="forest plot of auroc by site"'):]
    forest = forest[:forest.index("</svg>")]
    assert forest.count("<circle") == 3 and forest.index("pooled (all sites)") < forest.index("&lt;b&gt;North") < forest.index("South")
    assert "The model never saw the data of South: it was held out whole as an external validation site." in page
    assert render_json(data).count('"name": "South"') >= 2
    none_held = Cohort((("A", "train"), ("B", "train")), "s").never_seen_statement()
    assert none_held.startswith("No site was held out whole")
    declared = Cohort((("A", "train"), ("B", "validate"), ("C", "validate")), "s", declared=True).never_seen_statement()
    assert declared == ("The requester declares that the model never saw the data of B and C: they are its "
                        "external validation sites.")
