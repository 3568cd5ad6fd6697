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
workload hashes and the receipts of requests without it keep their bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

# The canonical number text of receipts and workload hashes (a stdlib-only module; the vectors pin it).
from enclave_sim.canonical import decimal_text

T = TypeVar("T")

# One JSON value of the parameters' JSON form: text, a whole number or a list of names.
JsonParam = str | int | list[str]
JsonParams = dict[str, JsonParam]

OPTIMIZERS = ("sgd", "adam")
# The DP metrics each task offers (the trainer's evaluate() implements exactly these).
SUPPORTED_METRICS: dict[str, tuple[str, ...]] = {
    "binary-classification": ("accuracy", "sensitivity", "specificity", "auroc", "calibration"),
    "multiclass-classification": ("accuracy", "macro_recall", "calibration"),
    "regression": ("mae", "rmse"),
}
DEFAULT_ROWS_PER_PATIENT = 1


@dataclass(frozen=True, kw_only=True)
class _Shared:
    """What every job request names: the columns, the privacy target and the contribution bound."""

    feature_columns: tuple[str, ...]
    label_column: str
    target_epsilon: float
    target_delta: float
    max_rows_per_patient: int


@dataclass(frozen=True, kw_only=True)
class TrainingParams(_Shared):
    kind: ClassVar[str] = "training"

    epochs: int
    expected_batch_patients: int
    learning_rate: float
    optimizer: str
    clipping_norm: float
    validation_fraction: float

    def to_json(self) -> JsonParams:
        return {
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

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TrainingParams:
        _expect_kind(data, cls.kind)
        return cls(
            feature_columns=_names(data, "feature_columns"),
            label_column=_get(data, "label_column", str),
            target_epsilon=_number(data, "target_epsilon"),
            target_delta=_number(data, "target_delta"),
            max_rows_per_patient=_whole(data, "max_rows_per_patient"),
            epochs=_whole(data, "epochs"),
            expected_batch_patients=_whole(data, "expected_batch_patients"),
            learning_rate=_number(data, "learning_rate"),
            optimizer=_get(data, "optimizer", str),
            clipping_norm=_number(data, "clipping_norm"),
            validation_fraction=_number(data, "validation_fraction"),
        )


@dataclass(frozen=True, kw_only=True)
class EvaluationParams(_Shared):
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
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> EvaluationParams:
        _expect_kind(data, cls.kind)
        return cls(
            feature_columns=_names(data, "feature_columns"),
            label_column=_get(data, "label_column", str),
            target_epsilon=_number(data, "target_epsilon"),
            target_delta=_number(data, "target_delta"),
            max_rows_per_patient=_whole(data, "max_rows_per_patient"),
            metrics=_names(data, "metrics"),
        )


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


def _names(data: Mapping[str, object], key: str) -> tuple[str, ...]:
    values: list[object] = _get(data, key, list)
    names = tuple(v for v in values if isinstance(v, str))
    if len(names) != len(values):
        raise ValueError(f"job parameter {key} must be a list of names")
    return names

