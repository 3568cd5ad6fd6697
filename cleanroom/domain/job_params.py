"""The parameters of a DP job request, typed (pure), and their one JSON form.

A job's parameters travel as `TrainingParams` or `EvaluationParams` from the wire to the job service,
the validation and the runner. They become JSON at three edges only, always through `to_json` /
`from_json`: the database stores them (`Job.spec_json`), the worker in the sandbox reads them
(job.json), and the workload hash binds them (the SDK recomputes it, the signed receipt carries it).
That JSON is the contract, so it never changes for a request that does not use a new field: numbers
that carry privacy or optimisation meaning are exact decimal text (canonical JSON has no floats),
keys appear in the order written below, and the stored text has its keys sorted.

Adding a parameter: give it a default, write it in `to_json` only when it differs from the default
and read it in `from_json` with the same default when the key is absent, so the stored specs, the
workload hashes and the receipts of requests without it keep their bytes. So it went for `recipe`
(the name of the rule that filled a training request's left-out optimisation fields, set by the
service, never by the request: cleanroom/domain/recipe.py) and for the report options
(`ReportOptions`: named operating points, net-benefit thresholds, the score-bin count; empty or 0
means the evaluator's defaults), and for `cohort` (a request over several hospitals' datasets: its
sites, each with its column mapping and role, so the workload and the receipt bind them too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypedDict, TypeVar

from cleanroom.domain.cohort import CohortSite
from cleanroom.domain.streams import WindowSpec

# The canonical number text of receipts and workload hashes (a stdlib-only module; the vectors pin it).
from enclave_sim.canonical import decimal_text

T = TypeVar("T")

# One JSON value of the parameters' JSON form: text, a whole number, a list of names, or a cohort's sites.
JsonParam = str | int | list[str] | list[dict[str, object]] | dict[str, object]
JsonParams = dict[str, JsonParam]

OPTIMIZERS = ("sgd", "adam")
# The DP metrics each task offers (the trainer's evaluate() implements exactly these).
SUPPORTED_METRICS: dict[str, tuple[str, ...]] = {
    "binary-classification": ("accuracy", "sensitivity", "specificity", "auroc", "calibration"),
    "multiclass-classification": ("accuracy", "macro_recall", "calibration"),
    "regression": ("mae", "rmse"),
}
DEFAULT_ROWS_PER_PATIENT = 1
# Bounds of the report options (the evaluator checks the same: cleanroom/trainer/evaluate.Options).
MAX_REPORT_VALUES = 16
MIN_SCORE_BINS, MAX_SCORE_BINS = 4, 640
REPORT_SEQUENCES = ("sensitivity_at_specificity", "specificity_at_sensitivity", "net_benefit_thresholds")


@dataclass(frozen=True, kw_only=True)
class _Shared:
    """What every job request names: the columns, the privacy target and the contribution bound."""

    feature_columns: tuple[str, ...]
    label_column: str
    target_epsilon: float
    target_delta: float
    max_rows_per_patient: int
    # A cohort request's sites in order (the columns above are then study names, mapped per site);
    # empty for a request over one dataset, whose JSON form then has no "cohort" key at all.
    cohort: tuple[CohortSite, ...] = ()
    # A request over a stream dataset: how its windows are cut (cleanroom/domain/streams.py); None
    # for a table, whose JSON form then has no "windows" key at all.
    windows: WindowSpec | None = None

    def _cohort_json(self) -> JsonParams:
        out: JsonParams = {"cohort": [site.to_json() for site in self.cohort]} if self.cohort else {}
        if self.windows is not None:
            out["windows"] = self.windows.to_json()
        return out


class SharedFields(TypedDict):
    """The fields both request kinds carry, as keyword arguments (the JSON and the wire readers build one)."""

    feature_columns: tuple[str, ...]
    label_column: str
    target_epsilon: float
    target_delta: float
    max_rows_per_patient: int
    sensitivity_at_specificity: tuple[float, ...]
    specificity_at_sensitivity: tuple[float, ...]
    net_benefit_thresholds: tuple[float, ...]
    score_bins: int
    cohort: tuple[CohortSite, ...]
    windows: WindowSpec | None


def _common_from(data: Mapping[str, object]) -> SharedFields:
    """The fields every job's JSON form carries: the shared request and the report options."""
    report = ReportOptions._report_from(data)
    return SharedFields(
        feature_columns=_names(data, "feature_columns"),
        label_column=_get(data, "label_column", str),
        target_epsilon=_number(data, "target_epsilon"),
        target_delta=_number(data, "target_delta"),
        max_rows_per_patient=_whole(data, "max_rows_per_patient"),
        sensitivity_at_specificity=report.sensitivity_at_specificity,
        specificity_at_sensitivity=report.specificity_at_sensitivity,
        net_benefit_thresholds=report.net_benefit_thresholds,
        score_bins=report.score_bins,
        cohort=_cohort(data),
        windows=_windows(data),
    )


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """A binary report's public choices, for an evaluation job and a training job's validation.

    Empty (or 0 bins) means the evaluator's defaults: sensitivity at 95% specificity, specificity
    at 95% sensitivity, net benefit at 0.05, 0.1, 0.2 and 0.3, and the documented bin rule."""

    sensitivity_at_specificity: tuple[float, ...] = ()
    specificity_at_sensitivity: tuple[float, ...] = ()
    net_benefit_thresholds: tuple[float, ...] = ()
    score_bins: int = 0

    def _report_json(self) -> JsonParams:
        """Only the options a request sets (none: the JSON form is what it was before they existed)."""
        out: JsonParams = {name: [decimal_text(v) for v in getattr(self, name)] for name in REPORT_SEQUENCES if getattr(self, name)}
        if self.score_bins:
            out["score_bins"] = self.score_bins
        return out

    @staticmethod
    def _report_from(data: Mapping[str, object]) -> ReportOptions:
        def numbers(key: str) -> tuple[float, ...]:
            return _numbers(data, key) if key in data else ()

        return ReportOptions(sensitivity_at_specificity=numbers("sensitivity_at_specificity"),
                             specificity_at_sensitivity=numbers("specificity_at_sensitivity"),
                             net_benefit_thresholds=numbers("net_benefit_thresholds"),
                             score_bins=_whole(data, "score_bins") if "score_bins" in data else 0)


@dataclass(frozen=True, kw_only=True)
class TrainingParams(_Shared, ReportOptions):
    kind: ClassVar[str] = "training"

    epochs: int
    expected_batch_patients: int
    learning_rate: float
    optimizer: str
    clipping_norm: float
    validation_fraction: float
    recipe: str = ""  # set by the service when it filled what the request left out (domain/recipe.py)

    def to_json(self) -> JsonParams:
        out: JsonParams = {
            "kind": self.kind,
            "feature_columns": list(self.feature_columns),
            "label_column": self.label_column,
            "target_epsilon": decimal_text(self.target_epsilon),
            "target_delta": decimal_text(self.target_delta),
            "epochs": self.epochs,
            "expected_batch_patients": self.expected_batch_patients,
            "learning_rate": decimal_text(self.learning_rate),
            "optimizer": self.optimizer,
            "clipping_norm": decimal_text(self.clipping_norm),
            "validation_fraction": decimal_text(self.validation_fraction),
            "max_rows_per_patient": self.max_rows_per_patient,
        }
        if self.recipe:
            out["recipe"] = self.recipe
        return {**out, **self._report_json(), **self._cohort_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TrainingParams:
        _expect_kind(data, cls.kind)
        return cls(
            **_common_from(data),
            epochs=_whole(data, "epochs"),
            expected_batch_patients=_whole(data, "expected_batch_patients"),
            learning_rate=_number(data, "learning_rate"),
            optimizer=_get(data, "optimizer", str),
            clipping_norm=_number(data, "clipping_norm"),
            validation_fraction=_number(data, "validation_fraction"),
            recipe=_get(data, "recipe", str) if "recipe" in data else "",
        )


@dataclass(frozen=True, kw_only=True)
class EvaluationParams(_Shared, ReportOptions):
    kind: ClassVar[str] = "evaluation"

    metrics: tuple[str, ...]  # sorted; empty: every metric the model's task offers

    def to_json(self) -> JsonParams:
        return {
            "kind": self.kind,
            "feature_columns": list(self.feature_columns),
            "label_column": self.label_column,
            "target_epsilon": decimal_text(self.target_epsilon),
            "target_delta": decimal_text(self.target_delta),
            "metrics": list(self.metrics),
            "max_rows_per_patient": self.max_rows_per_patient,
            **self._report_json(),
            **self._cohort_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> EvaluationParams:
        _expect_kind(data, cls.kind)
        return cls(**_common_from(data), metrics=_names(data, "metrics"))


JobParams = TrainingParams | EvaluationParams
_KINDS: dict[str, Callable[[Mapping[str, object]], JobParams]] = {
    TrainingParams.kind: TrainingParams.from_json,
    EvaluationParams.kind: EvaluationParams.from_json,
}


def params_from_json(data: Mapping[str, object]) -> JobParams:
    """Either kind of parameters from their JSON form (its "kind" says which)."""
    kind = data.get("kind")
    parse = _KINDS.get(kind) if isinstance(kind, str) else None
    if parse is None:
        raise ValueError(f"job parameters of an unknown kind: {kind!r}")
    return parse(data)


def to_spec_json(params: JobParams) -> str:
    """The text a job's parameters are stored as (Job.spec_json): their JSON form, keys sorted."""
    return json.dumps(params.to_json(), sort_keys=True)


def from_spec_json(text: str) -> JobParams:
    return params_from_json(json.loads(text))


# --- reading the JSON form (the database's and the SDK's own text: malformed is a bug, not a request)


def _expect_kind(data: Mapping[str, object], kind: str) -> None:
    if data.get("kind") != kind:
        raise ValueError(f"not {kind} parameters: kind is {data.get('kind')!r}")


def _get(data: Mapping[str, object], key: str, kind: type[T]) -> T:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"job parameter {key} is missing or not {kind.__name__}")
    return value


def _whole(data: Mapping[str, object], key: str) -> int:
    return _get(data, key, int)


def _number(data: Mapping[str, object], key: str) -> float:
    """Exact decimal text back to the float it was written from (the text is that float's repr)."""
    return float(_get(data, key, str))


def _numbers(data: Mapping[str, object], key: str) -> tuple[float, ...]:
    values: list[object] = _get(data, key, list)
    texts = [v for v in values if isinstance(v, str)]
    if len(texts) != len(values):
        raise ValueError(f"job parameter {key} must be a list of decimal texts")
    return tuple(float(v) for v in texts)


def _windows(data: Mapping[str, object]) -> WindowSpec | None:
    value = data.get("windows")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("job parameter windows must be an object")
    return WindowSpec.from_json(value)


def _cohort(data: Mapping[str, object]) -> tuple[CohortSite, ...]:
    if "cohort" not in data:
        return ()
    sites: list[object] = _get(data, "cohort", list)
    if not sites or not all(isinstance(site, Mapping) for site in sites):
        raise ValueError("job parameter cohort must be a non-empty list of sites")
    return tuple(CohortSite.from_json(site) for site in sites if isinstance(site, Mapping))


def _names(data: Mapping[str, object], key: str) -> tuple[str, ...]:
    values: list[object] = _get(data, key, list)
    names = tuple(v for v in values if isinstance(v, str))
    if len(names) != len(values):
        raise ValueError(f"job parameter {key} must be a list of names")
    return names

