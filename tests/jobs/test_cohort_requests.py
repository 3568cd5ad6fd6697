"""A cohort job request before any reservation (pure): the parameters' JSON form, the column
mapping checked at every site, the public patient count δ and the recipe read, the receipt's
commitment to the sites, and the CLI's --site."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from cleanroom.cli.jobs import _site
from cleanroom.domain.cohort import SiteRole, cohort_key, make_site
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.job_params import EvaluationParams, TrainingParams, from_spec_json, to_spec_json
from cleanroom.domain.model_versions import ModelState, ModelVersion
from cleanroom.domain.recipe import budget_recipe
from cleanroom.jobs import release, validation
from cleanroom.jobs.service import JobService
from cleanroom.sdk.cohort import Site
from cleanroom.sdk.verify import workload_dataset
from cleanroom.storage import clock
from cleanroom.v1 import common_pb2, jobs_pb2
from cleanroom.wire.jobs import job_to_proto, params_from_job, training_params_from_proto

SHARED = dict(feature_columns=("a", "b"), label_column="y", target_epsilon=1.0, target_delta=1e-5, max_rows_per_patient=1)
TRAINING = TrainingParams(**SHARED, epochs=5, expected_batch_patients=64, learning_rate=0.1, optimizer="sgd",  # type: ignore[arg-type]
                          clipping_norm=1.0, validation_fraction=0.2)
EVALUATION = EvaluationParams(**SHARED, metrics=())  # type: ignore[arg-type]


def _columns(a: str = "a", b: str = "b", y: str = "y", *, b_type: ColumnType = ColumnType.FLOAT, classes: int = 2,
             categories: tuple[str, ...] = ()) -> tuple[ColumnSpec, ...]:
    return (ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY), ColumnSpec(a, ColumnType.FLOAT, ColumnRole.FEATURE),
            ColumnSpec(b, b_type, ColumnRole.FEATURE),
            ColumnSpec(y, ColumnType.INTEGER, ColumnRole.LABEL, label_classes=classes, categories=categories),
            ColumnSpec("rrn", ColumnType.STRING, ColumnRole.LINKAGE_ID))


def _dataset(dataset_id: str, columns: tuple[ColumnSpec, ...], patients: int = 200) -> Dataset:
    return Dataset(dataset_id, "o", f"hospital {dataset_id}", "", columns, 5, patients, patients, IntakeReport(), dataset_id[-1] * 64, clock.now())


def _model() -> ModelVersion:
    return ModelVersion("m1", "p1", "lr", "1", ModelState.ACCEPTED, "ab" * 32, "binary-classification", 2, (2,),
                        ("0.weight", "0.bias"), report={"parameter_count": 6, "trainable_parameter_count": 6})


def _fields(params, sites) -> dict[str, str]:
    return {v.field: v.description for v in validation.cohort_violations(params, _model(), sites)}


def test_a_single_dataset_request_keeps_its_json_form_and_a_cohort_adds_its_sites() -> None:
    assert "cohort" not in TRAINING.to_json() and "cohort" not in EVALUATION.to_json()
    cohort = (make_site("d1"), make_site("d2", {"y": "outcome"}, SiteRole.VALIDATE))
    params = replace(TRAINING, cohort=cohort)
    assert params.to_json()["cohort"] == [{"dataset": "d1", "columns": {}, "role": "train"},
                                         {"dataset": "d2", "columns": {"y": "outcome"}, "role": "validate"}]
    assert from_spec_json(to_spec_json(params)) == params
    assert json.loads(to_spec_json(replace(EVALUATION, cohort=cohort)))["cohort"][1]["role"] == "validate"


def test_the_wire_reads_a_cohort_and_echoes_it_without_a_single_dataset() -> None:
    spec = jobs_pb2.TrainingSpec(model="models/m1", feature_columns=["a", "b"], label_column="y", target_epsilon=1, target_delta=1e-5,
                                 cohort=[Site("datasets/d1").to_proto(), Site("datasets/d2", {"y": "outcome"}, "validate").to_proto()])
    params = training_params_from_proto(spec)
    assert params.cohort == (make_site("d1"), make_site("d2", {"y": "outcome"}, SiteRole.VALIDATE))
    from cleanroom.domain.jobs import Job, JobKind, JobState

    job = Job("j1", JobKind.TRAINING, "p1", "m1", "d1", to_spec_json(params), JobState.QUEUED, clock.now())
    echoed = job_to_proto(job, [], "a statement")
    assert echoed.training.dataset == "" and len(echoed.training.cohort) == 2 and echoed.linkage == "a statement"
    assert params_from_job(echoed) == params
    assert workload_dataset(echoed.training) == cohort_key(["d2", "d1"])
    assert workload_dataset(jobs_pb2.TrainingSpec(dataset="datasets/d1")) == "d1"


def test_mapped_columns_that_agree_everywhere_pass() -> None:
    sites = [(make_site("d1"), _dataset("d1", _columns())),
             (make_site("d2", {"a": "x_a", "y": "outcome"}), _dataset("d2", _columns(a="x_a", y="outcome"))),
             (make_site("d3", {}, SiteRole.VALIDATE), _dataset("d3", _columns()))]
    assert _fields(TRAINING, sites) == {}


def test_each_broken_mapping_names_the_site_and_the_study_column() -> None:
    sites = [(make_site("d1", {"z": "a"}), _dataset("d1", _columns())),
             (make_site("d2"), _dataset("d2", _columns(a="x_a"))),
             (make_site("d3"), _dataset("d3", _columns(b_type=ColumnType.INTEGER))),
             (make_site("d4"), _dataset("d4", _columns(classes=3)))]
    fields = _fields(TRAINING, sites)
    assert fields["spec.cohort[0].columns[z]"] == "not a feature or label column of this request"
    assert fields["spec.cohort[1].columns[a]"] == "no such column in the dataset"
    assert fields["spec.cohort[2].columns[b]"] == "b is INTEGER at datasets/d3 (cohort[2]) but FLOAT at datasets/d1 (cohort[0])"
    assert "datasets/d4 (cohort[3])" in fields["spec.cohort[3].columns[y]"] and "datasets/d1 (cohort[0])" in fields["spec.cohort[3].columns[y]"]
    assert "label domains differ" in fields["spec.cohort[3].columns[y]"]


def test_declared_label_categories_must_agree_too() -> None:
    sites = [(make_site("d1"), _dataset("d1", _columns(categories=("0", "1")))), (make_site("d2"), _dataset("d2", _columns()))]
    assert "categories 0, 1" in _fields(EVALUATION, sites)["spec.cohort[1].columns[y]"]


def test_the_linkage_column_is_never_a_feature_or_a_label() -> None:
    site = (make_site("d1", {"a": "rrn", "y": "rrn"}), _dataset("d1", _columns()))
    fields = _fields(TRAINING, [site])
    assert "cannot be a feature" in fields["spec.cohort[0].columns[a]"] and "cannot be a label" in fields["spec.cohort[0].columns[y]"]
    single = {v.field for v in validation.column_violations(replace(TRAINING, label_column="rrn"), _model(), _dataset("d1", _columns()))}
    assert "spec.label_column" in single


def test_two_study_columns_on_one_site_column_and_a_training_without_train_sites_are_refused() -> None:
    fields = _fields(TRAINING, [(make_site("d1", {"b": "a"}, SiteRole.VALIDATE), _dataset("d1", _columns()))])
    assert fields["spec.cohort[0].columns"] == "two study columns map onto the same column of this dataset"
    assert "at least one TRAIN site" in fields["spec.cohort"]


def test_the_public_patient_count_is_the_train_sites_sum_for_training_and_every_site_for_evaluation() -> None:
    sites = [(make_site("d1"), _dataset("d1", _columns(), 100)), (make_site("d2"), _dataset("d2", _columns(), 300)),
             (make_site("d3", role=SiteRole.VALIDATE), _dataset("d3", _columns(), 50))]
    assert validation.cohort_patients(TRAINING, sites) == 400
    assert validation.cohort_patients(EVALUATION, sites) == 450


def test_the_recipe_reads_the_cohort_count_and_whole_held_out_sites_replace_the_fraction() -> None:
    left_out = replace(TRAINING, epochs=0, expected_batch_patients=0, learning_rate=0.0, optimizer="", clipping_norm=0.0,
                       cohort=(make_site("d1"), make_site("d2", role=SiteRole.VALIDATE)))
    filled = JobService._with_recipe_for(left_out, _model(), 400)
    expected = budget_recipe(patients=400, epsilon=1.0, model_parameters=6, validation_fraction=0.0)
    assert isinstance(filled, TrainingParams) and filled.expected_batch_patients == expected.expected_batch_patients
    assert filled.validation_fraction == 0.2  # kept as sent; the worker validates on the held-out site instead
    fraction = JobService._with_recipe_for(replace(left_out, cohort=(make_site("d1"),)), _model(), 400)
    assert isinstance(fraction, TrainingParams)
    assert fraction.expected_batch_patients == budget_recipe(patients=400, epsilon=1.0, model_parameters=6,
                                                             validation_fraction=0.2).expected_batch_patients


def test_the_receipt_commits_to_one_dataset_as_before_and_to_a_cohorts_sites_in_order() -> None:
    assert release.dataset_commitment([("d1", "aa" * 32)], cohort=False) == "aa" * 32
    two = release.dataset_commitment([("d1", "aa" * 32), ("d2", "bb" * 32)], cohort=True)
    import hashlib

    assert two == hashlib.sha256(f"d1:{'aa' * 32}\nd2:{'bb' * 32}\n".encode()).hexdigest()
    assert two != release.dataset_commitment([("d2", "bb" * 32), ("d1", "aa" * 32)], cohort=True)


def test_the_cli_reads_a_site_with_its_role_and_mapping() -> None:
    assert _site("datasets/d1") == Site("datasets/d1", {}, "train")
    assert _site("datasets/d2:validate,malignant=dx,mean_radius=radius_mean") == Site(
        "datasets/d2", {"malignant": "dx", "mean_radius": "radius_mean"}, "validate")
    assert Site("datasets/d2", {"y": "dx"}, "validate").to_proto() == common_pb2.CohortSite(
        dataset="datasets/d2", columns={"y": "dx"}, role=common_pb2.SITE_ROLE_VALIDATE)
    for bad in ("datasets/d1:test", "datasets/d1,malignant", ":train", "datasets/d1,=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _site(bad)
