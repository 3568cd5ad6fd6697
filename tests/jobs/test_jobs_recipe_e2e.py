"""The budget-aware recipe and the report options through a real server: a training request that
leaves the recipe out runs with the rule's values, its job and receipt name the rule and it verifies
against the caller's own spec; an evaluation reports the operating points and net-benefit
thresholds it asked for; bad options are refused before any reservation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import enclave_sim
from cleanroom.cli import main as cli
from cleanroom.domain.recipe import RULE, budget_recipe
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.verify import verify_job
from cleanroom.storage import privacy_repo
from cleanroom.v1 import jobs_pb2
from tests.jobs.study import EXAMPLE, FEATURES, breast_cancer_study
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

VALIDATION = 0.5
World = dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with breast_cancer_study(tmp_path_factory.mktemp("recipe")) as study:
        yield study


def _verify(world: World, job: jobs_pb2.Job, files: dict[str, bytes], spec: Any) -> enclave_sim.VerifiedReport:
    app = world["running"].app
    return verify_job(job, files, package_directory=EXAMPLE, pinned_root_pem=app.enclave.root.public_key_pem(),
                      allowed_measurements=[app.enclave.measurement], spec=spec)


def _reservations(world: World) -> int:
    with world["running"].app.db.read() as session:
        return sum(1 for e in privacy_repo.events(session) if e.kind.value == "reserve")


def test_a_training_request_without_a_recipe_runs_the_rule_names_it_and_verifies(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    maker = world["maker"]
    # Only the columns, the privacy target and the hold-out: epochs, batch, learning rate, optimizer
    # and clipping norm are left out (0 / "").
    spec = jobs_pb2.TrainingSpec(model=world["model"], dataset=world["dataset"], feature_columns=FEATURES, label_column="malignant",
                                 target_epsilon=1.0, target_delta=1e-5, validation_fraction=VALIDATION,
                                 sensitivity_at_specificity=[0.9], net_benefit_thresholds=[0.2])
    job = maker.train(spec)
    rule = budget_recipe(patients=world["patients"], epsilon=1.0, model_parameters=world["parameters"], validation_fraction=VALIDATION)
    echoed = job.training
    assert echoed.recipe == RULE
    assert (echoed.epochs, echoed.expected_batch_patients, echoed.learning_rate, echoed.optimizer, echoed.clipping_norm) == (
        rule.epochs, rule.expected_batch_patients, rule.learning_rate, rule.optimizer, rule.clipping_norm)
    done = maker.wait_job(job.name, timeout=600)
    assert done.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(done.failure)
    files = maker.download_all(done)
    verified = _verify(world, done, files, spec)  # the caller's own spec, with its fields left out
    assert verified.report.dp_parameters["recipe"] == RULE
    assert verified.report.dp_parameters["steps"] >= 1 and verified.epsilon_recomputed is not None
    assert verified.epsilon_recomputed <= 1.0 + 1e-6
    assert verified.report.workload == done.workload
    report = json.loads(files["metrics.json"])["evaluation"]  # the validation report on the held-out half
    assert [p["target"] for p in report["operating_points"]] == [0.9, 0.95]  # named, then the default reverse point
    assert [e["threshold"] for e in report["net_benefit"]] == [0.2]
    # What the caller set is the caller's: a spec claiming other values does not verify.
    with pytest.raises(enclave_sim.VerificationError):
        _verify(world, done, files, jobs_pb2.TrainingSpec(**{**_fields(spec), "epochs": rule.epochs + 1}))
    connection = ["--server", world["running"].address, "--token", world["maker_token"]]
    assert cli.main([*connection, "job", "show", done.name]) == 0
    shown = capsys.readouterr().out
    assert f"recipe            {RULE}: {rule.epochs} epochs" in shown and "net benefit thresholds      0.2" in shown


def _fields(spec: jobs_pb2.TrainingSpec) -> dict[str, Any]:
    return {field.name: value for field, value in spec.ListFields()}


def test_an_evaluation_reports_the_operating_points_and_thresholds_it_names(world: World, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    connection = ["--server", world["running"].address, "--token", world["maker_token"]]
    assert cli.main([*connection, "job", "evaluate", "--model", world["model"], "--dataset", world["dataset"],
                     "--features", ",".join(FEATURES), "--label", "malignant", "--epsilon", "0.5",
                     "--sensitivity-at-specificity", "0.9,0.8", "--specificity-at-sensitivity", "0.85",
                     "--net-benefit-thresholds", "0.15,0.25", "--score-bins", "24", "--wait"]) == 0
    name = capsys.readouterr().out.split(":", 1)[0]
    maker = world["maker"]
    done = maker.get_job(name)
    assert done.state == jobs_pb2.JOB_STATE_RELEASED
    assert (list(done.evaluation.sensitivity_at_specificity), list(done.evaluation.net_benefit_thresholds),
            done.evaluation.score_bins) == ([0.9, 0.8], [0.15, 0.25], 24)
    files = maker.download_all(done)
    report = json.loads(files["metrics.json"])["evaluation"]
    points = [(p["metric"], p["fixed"], p["target"]) for p in report["operating_points"]]
    assert points == [("sensitivity", "specificity", 0.9), ("sensitivity", "specificity", 0.8), ("specificity", "sensitivity", 0.85)]
    assert all(p["ci95"][0] <= p["ci95"][1] for p in report["operating_points"])
    assert [e["threshold"] for e in report["net_benefit"]] == [0.15, 0.25] and report["score_bins"]["requested"] == 24
    page = files["report.html"].decode()
    assert "Operating points" in page and "Net benefit" in page and "sensitivity at specificity ≥ 0.9" in page
    spec = jobs_pb2.EvaluationSpec(model=world["model"], dataset=world["dataset"], feature_columns=FEATURES, label_column="malignant",
                                   target_epsilon=0.5, target_delta=1e-5, max_rows_per_patient=1, sensitivity_at_specificity=[0.9, 0.8],
                                   specificity_at_sensitivity=[0.85], net_benefit_thresholds=[0.15, 0.25], score_bins=24)
    verified = _verify(world, done, files, spec)
    assert verified.report.dp_parameters["net_benefit_thresholds"] == ["0.15", "0.25"] and "recipe" not in verified.report.dp_parameters
    with pytest.raises(enclave_sim.VerificationError):  # other thresholds: another request
        _verify(world, done, files, jobs_pb2.EvaluationSpec(**{**_fields(spec), "net_benefit_thresholds": [0.15]}))  # type: ignore[arg-type]


@pytest.mark.parametrize("options, fields", [
    ({"sensitivity_at_specificity": [1.5]}, ["spec.sensitivity_at_specificity"]),
    ({"net_benefit_thresholds": [0.1] * 17, "score_bins": 2}, ["spec.net_benefit_thresholds", "spec.score_bins"]),
])
def test_bad_report_options_are_refused_before_any_reservation(world: World, options: dict[str, Any], fields: list[str]) -> None:
    before = _reservations(world)
    base = dict(model=world["model"], dataset=world["dataset"], feature_columns=FEATURES, label_column="malignant", target_epsilon=0.5,
                target_delta=1e-5)
    for submit, spec in ((world["maker"].evaluate, jobs_pb2.EvaluationSpec(**base, **options)),
                         (world["maker"].train, jobs_pb2.TrainingSpec(**base, validation_fraction=0.2, **options))):
        with pytest.raises(CleanroomClientError) as err:
            submit(spec)
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.value.violations] == fields
    assert _reservations(world) == before
