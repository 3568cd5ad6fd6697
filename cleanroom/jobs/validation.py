"""Everything about a job request that can be checked before any budget is reserved (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from cleanroom.domain import deid, streams
from cleanroom.domain.cohort import CohortSite, SiteRole
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import FieldViolation
from cleanroom.domain.job_params import (
    MAX_REPORT_VALUES,
    MAX_SCORE_BINS,
    MIN_SCORE_BINS,
    OPTIMIZERS,
    REPORT_SEQUENCES,
    SUPPORTED_METRICS,
    EvaluationParams,
    JobParams,
    ReportOptions,
    TrainingParams,
)
from cleanroom.domain.model_versions import ModelVersion
from cleanroom.domain.recipe import left_out

NUMERIC = {deid.ColumnType.INTEGER, deid.ColumnType.FLOAT, deid.ColumnType.BOOLEAN}
CLASS_LABELS = {deid.ColumnType.INTEGER, deid.ColumnType.BOOLEAN}


def _stored(dataset: Dataset) -> dict[str, deid.ColumnSpec]:
    """The columns as the worker will read them: with their stored types, not their declared ones
    (a generalised quasi-identifier declared INTEGER is stored as band labels)."""
    return {c.name: c for c in deid.stored_schema(dataset.columns)}


def _linkage(spec: deid.ColumnSpec) -> bool:
    """The cross-hospital linkage pseudonym: it links persons, it is never an input or a label."""
    return spec.role.spec.treatment is deid.Treatment.LINK


def _feature_violation(field: str, spec: deid.ColumnSpec | None) -> FieldViolation | None:
    if spec is None:
        return FieldViolation(field, "no such column in the dataset")
    if _linkage(spec):
        return FieldViolation(field, "the linkage column links patients across hospitals; it cannot be a feature")
    generalised = deid.stored_as_labels(spec)
    if generalised:
        return FieldViolation(field, f"{generalised}: it cannot be a numeric feature")
    if spec.role is deid.ColumnRole.PATIENT_KEY or spec.type not in NUMERIC:
        return FieldViolation(field, "features must be numeric columns (integer, float or boolean)")
    return None


def column_violations(params: JobParams, model: ModelVersion, dataset: Dataset) -> list[FieldViolation]:
    if dataset.stream is not None:
        return stream_violations(params, model, dataset.stream, _stored(dataset))
    columns = _stored(dataset)
    out = [] if params.windows is None else [FieldViolation("spec.windows", "this dataset is a table, not a stream: leave windows out")]
    for name in params.feature_columns:
        violation = _feature_violation(f"spec.feature_columns[{name}]", columns.get(name))
        if violation is not None:
            out.append(violation)
    out += _input_count_violations(params, model)
    out += _label_violations("spec.label_column", model, columns.get(params.label_column))
    return out


def _input_count_violations(params: JobParams, model: ModelVersion) -> list[FieldViolation]:
    features, out = params.feature_columns, []
    if len(set(features)) != len(features):
        out.append(FieldViolation("spec.feature_columns", "a column is named twice"))
    expected = math.prod(model.input_shape)
    if len(features) != expected:
        out.append(FieldViolation("spec.feature_columns", f"the model takes {expected} inputs {list(model.input_shape)}, not {len(features)}"))
    return out


def _label_violations(field: str, model: ModelVersion, spec: deid.ColumnSpec | None) -> list[FieldViolation]:
    if spec is None:
        return [FieldViolation(field, "no such column in the dataset")]
    if _linkage(spec):
        return [FieldViolation(field, "the linkage column links patients across hospitals; it cannot be a label")]
    classification = model.task != "regression"
    generalised = deid.stored_as_labels(spec)
    if generalised:
        return [FieldViolation(field, f"{generalised}: it cannot be a label")]
    if classification and spec.type not in CLASS_LABELS:
        return [FieldViolation(field, "a classification label must be an integer or boolean column")]
    if not classification and spec.type not in NUMERIC:
        return [FieldViolation(field, "a regression label must be numeric")]
    # Which labels exist is data: the data owner declares it at upload (intake refuses any value
    # outside it), the manufacturer's num_classes must agree with it.
    if classification and not spec.label_classes:
        return [FieldViolation(field, "the dataset does not declare this label's classes; "
                                      "the data owner must declare label_classes at upload")]
    if classification and spec.label_classes != model.num_classes:
        return [FieldViolation(field, f"the dataset declares {spec.label_classes} classes for this label; "
                                      f"the model has {model.num_classes}")]
    return []


# --- streams: examples are windows over the job's channels ---------------------------------------


def stream_violations(params: JobParams, model: ModelVersion, stream: streams.StreamDescription,
                      columns: dict[str, deid.ColumnSpec]) -> list[FieldViolation]:
    """A request over a stream names its windows; they must fit the stream's public description
    (channels, resolution, longest span), and the model must take one window as its input."""
    windows = params.windows
    if windows is None:
        return [FieldViolation("spec.windows", "this dataset is a stream: name its windows (window, stride and resample seconds)")]
    found = streams.validate_windows(windows, stream=stream, columns=list(columns.values()),
                                     feature_columns=params.feature_columns, label_column=params.label_column)
    out = [FieldViolation(f"spec.{v.field}", v.description) for v in found]
    if _whole_cells(windows):  # the shape can be compared
        out += _window_shape_violations(params.feature_columns, windows, model)
    if windows.label_rule is not None and model.task != "binary-classification":
        out.append(FieldViolation("spec.windows.label_rule", "a threshold rule labels each window 0 or 1: it needs a "
                                                             f"binary-classification model; this model's task is {model.task}"))
    elif windows.label_rule is None and not any(v.field == "label_column" for v in found):
        out += _label_violations("spec.label_column", model, columns.get(params.label_column))
    return out


def _whole_cells(windows: streams.WindowSpec) -> bool:
    window, resample = windows.window_seconds, windows.resample_seconds
    return isinstance(window, int) and isinstance(resample, int) and window > 0 and resample > 0 and window % resample == 0


def _window_shape_violations(features: Sequence[str], windows: streams.WindowSpec, model: ModelVersion) -> list[FieldViolation]:
    expected = windows.input_shape(len(features))
    if tuple(model.input_shape) == expected:
        return []
    return [FieldViolation("spec.windows", f"the model's input_shape is {list(model.input_shape)}, but these windows give "
                                           f"[{expected[0]}, {expected[1]}]: {expected[0]} channels (the feature columns) by "
                                           f"{expected[1]} cells (window_seconds / resample_seconds = "
                                           f"{windows.window_seconds} / {windows.resample_seconds})")]


# --- cohorts: the request's column names are study names, mapped onto each site's own columns ------

Site = tuple[CohortSite, Dataset]
STREAM_COHORT = "a cohort over stream datasets is not supported yet: train or evaluate on one stream dataset"


def cohort_patients(params: JobParams, sites: Sequence[Site]) -> int:
    """The public patient count a cohort job's δ and recipe read: the TRAIN sites' disclosed counts
    for training (VALIDATE sites are held out whole), every evaluated site's for an evaluation."""
    training = isinstance(params, TrainingParams)
    return sum(d.patient_count for site, d in sites if not training or site.role is SiteRole.TRAIN)


def cohort_violations(params: JobParams, model: ModelVersion, sites: Sequence[Site]) -> list[FieldViolation]:
    """Every study name maps, at every site, onto a column that could serve on its own; the types
    and the declared label domain agree across sites; a training job trains on at least one site."""
    streamed = [FieldViolation(f"spec.cohort[{i}]", STREAM_COHORT) for i, (_, d) in enumerate(sites) if d.stream is not None]
    if streamed or params.windows is not None:
        return streamed or [FieldViolation("spec.windows", STREAM_COHORT)]
    out = _input_count_violations(params, model)
    for index, (site, dataset) in enumerate(sites):
        out += _site_violations(index, site, params, model, _stored(dataset))
    out += _agreement_violations(params, sites)
    if isinstance(params, TrainingParams) and not any(site.role is SiteRole.TRAIN for site, _ in sites):
        out.append(FieldViolation("spec.cohort", "a training job needs at least one TRAIN site (VALIDATE sites are held out)"))
    return out


def _site_violations(index: int, site: CohortSite, params: JobParams, model: ModelVersion,
                     columns: dict[str, deid.ColumnSpec]) -> list[FieldViolation]:
    where, study = f"spec.cohort[{index}].columns", (*params.feature_columns, params.label_column)
    out = [FieldViolation(f"{where}[{name}]", "not a feature or label column of this request")
           for name, _ in site.columns if name not in study]
    for name in params.feature_columns:
        violation = _feature_violation(f"{where}[{name}]", columns.get(site.column_for(name)))
        if violation is not None:
            out.append(violation)
    out += _label_violations(f"{where}[{params.label_column}]", model, columns.get(site.column_for(params.label_column)))
    mapped = [site.column_for(name) for name in dict.fromkeys(study)]
    if len(set(mapped)) != len(mapped):
        out.append(FieldViolation(where, "two study columns map onto the same column of this dataset"))
    return out


def _agreement_violations(params: JobParams, sites: Sequence[Site]) -> list[FieldViolation]:
    """Each study column against the first site that has it: the same stored type, and for the
    label the same declared classes and categories (a pooled model needs one label domain)."""
    out: list[FieldViolation] = []
    for name in dict.fromkeys((*params.feature_columns, params.label_column)):
        found = [(i, site, spec) for i, (site, d) in enumerate(sites) if (spec := _stored(d).get(site.column_for(name))) is not None]
        if not found:
            continue
        first, first_site, reference = found[0]
        for index, site, spec in found[1:]:
            field, here, there = f"spec.cohort[{index}].columns[{name}]", site.dataset_id, first_site.dataset_id
            if spec.type is not reference.type:
                out.append(FieldViolation(field, f"{name} is {spec.type.name} at datasets/{here} (cohort[{index}]) "
                                                 f"but {reference.type.name} at datasets/{there} (cohort[{first}])"))
            elif name == params.label_column and (spec.label_classes, spec.categories) != (reference.label_classes, reference.categories):
                out.append(FieldViolation(field, f"the label domains differ: datasets/{here} (cohort[{index}]) declares "
                                                 f"{_domain(spec)}, datasets/{there} (cohort[{first}]) declares {_domain(reference)}"))
    return out


def _domain(spec: deid.ColumnSpec) -> str:
    parts = [f"{spec.label_classes} classes" if spec.label_classes else "no classes"]
    if spec.categories:
        parts.append(f"categories {', '.join(spec.categories)}")
    return " and ".join(parts)


def _range(out: list[FieldViolation], field: str, value: float, low: float, high: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        out.append(FieldViolation(field, what))


# Said of a recipe field still left out after the service's recipe ran: no recipe fits the request.
NO_RECIPE = "; left out, and the service's recipe fits no request with fewer than 2 training patients or ε not above 0"


def training_violations(params: TrainingParams, patients: int) -> list[FieldViolation]:
    """The request as it will run: the recipe has already filled what it could (JobService.submit)."""
    out: list[FieldViolation] = []
    unfilled = set(left_out(epochs=params.epochs, expected_batch_patients=params.expected_batch_patients, learning_rate=params.learning_rate,
                            optimizer=params.optimizer, clipping_norm=params.clipping_norm))

    def said(name: str, what: str) -> str:
        return what + (NO_RECIPE if name in unfilled else "")

    _range(out, "spec.epochs", params.epochs, 1, 1000, said("epochs", "between 1 and 1000"))
    _range(out, "spec.expected_batch_patients", params.expected_batch_patients, 1, max(patients, 1),
           said("expected_batch_patients", "between 1 and the number of patients"))
    _range(out, "spec.learning_rate", params.learning_rate, 1e-6, 10, said("learning_rate", "above 0 and at most 10"))
    _range(out, "spec.clipping_norm", params.clipping_norm, 1e-6, 1e6, said("clipping_norm", "above 0"))
    _range(out, "spec.validation_fraction", params.validation_fraction, 0, 0.5, "between 0 and 0.5")
    _range(out, "spec.max_rows_per_patient", params.max_rows_per_patient, 1, 1000, "between 1 and 1000")
    if params.optimizer not in OPTIMIZERS:
        out.append(FieldViolation("spec.optimizer", said("optimizer", f"one of {', '.join(OPTIMIZERS)}")))
    return out


def evaluation_violations(params: EvaluationParams, model: ModelVersion) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    _range(out, "spec.max_rows_per_patient", params.max_rows_per_patient, 1, 1000, "between 1 and 1000")
    known = set(SUPPORTED_METRICS.get(model.task, ()))
    unknown = sorted(set(params.metrics) - known)
    if unknown:
        out.append(FieldViolation("spec.metrics", f"unknown for this task: {', '.join(unknown)}; choose from {', '.join(sorted(known))}"))
    return out


def report_violations(options: ReportOptions, model: ModelVersion) -> list[FieldViolation]:
    """The report's named operating points, net-benefit thresholds and bin count (public choices;
    binary classification only, where the evaluator computes them), for either kind of job."""
    out: list[FieldViolation] = []
    if model.task != "binary-classification":
        return [FieldViolation(f"spec.{name}", f"applies to binary classification only; this model's task is {model.task}")
                for name in (*REPORT_SEQUENCES, "score_bins") if getattr(options, name)]
    for name in REPORT_SEQUENCES:
        values: tuple[float, ...] = getattr(options, name)
        bad = [v for v in values if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v < 1)]
        if len(values) > MAX_REPORT_VALUES:  # one violation per field, the first rule broken
            out.append(FieldViolation(f"spec.{name}", f"at most {MAX_REPORT_VALUES} values, not {len(values)}"))
        elif bad:
            out.append(FieldViolation(f"spec.{name}", f"each value strictly between 0 and 1 (not {bad[0]!r})"))
        elif len(set(values)) != len(values):
            out.append(FieldViolation(f"spec.{name}", "a value is named twice"))
    if options.score_bins and not MIN_SCORE_BINS <= options.score_bins <= MAX_SCORE_BINS:
        out.append(FieldViolation("spec.score_bins", f"0 (the documented bin rule) or between {MIN_SCORE_BINS} and {MAX_SCORE_BINS}"))
    return out


def metrics_for(model: ModelVersion, params: JobParams) -> list[str]:
    """The metrics a job reports: those its request names, else every one the model's task offers."""
    wanted = list(params.metrics) if isinstance(params, EvaluationParams) else []
    return wanted or list(SUPPORTED_METRICS.get(model.task, ()))
