"""Job requests as canonical parameters, shared by the service and the SDK.

The workload hash binds the model version's package digest, these parameters and the dataset id.
The SDK recomputes it from the request it sent, so both sides must build the same mapping from the
same request: that is this module's only job. Floats become exact decimal text (canonical JSON has
no floats).
"""

from __future__ import annotations

import math
from typing import Any

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.v1 import jobs_pb2
from enclave_sim import decimal_text

OPTIMIZERS = ("sgd", "adam")
# The DP metrics each task offers (the trainer's evaluate() implements exactly these).
SUPPORTED_METRICS = {
    "binary-classification": ("accuracy", "sensitivity", "specificity", "auroc", "calibration"),
    "multiclass-classification": ("accuracy", "macro_recall", "calibration"),
    "regression": ("mae", "rmse"),
}
DEFAULT_ROWS_PER_PATIENT = 1


def _number(value: float, field: str) -> str:
    """Exact decimal text of a finite, non-negative number; anything else is a bad request."""
    if not math.isfinite(value) or value < 0:
        raise bad_request("the job request is invalid; nothing was reserved",
                          FieldViolation(f"spec.{field}", "must be a finite number, 0 or more"))
    return decimal_text(value)


def training_parameters(spec: jobs_pb2.TrainingSpec) -> dict[str, Any]:
    return {
        "kind": "training",
        "feature_columns": list(spec.feature_columns),
        "label_column": spec.label_column,
        "target_epsilon": _number(spec.target_epsilon, "target_epsilon"),
        "target_delta": _number(spec.target_delta, "target_delta"),
        "epochs": spec.epochs,
        "expected_batch_patients": spec.expected_batch_patients,
        "learning_rate": _number(spec.learning_rate, "learning_rate"),
        "optimizer": spec.optimizer,
        "clipping_norm": _number(spec.clipping_norm, "clipping_norm"),
        "validation_fraction": _number(spec.validation_fraction, "validation_fraction"),
        "max_rows_per_patient": spec.max_rows_per_patient or DEFAULT_ROWS_PER_PATIENT,
    }


def evaluation_parameters(spec: jobs_pb2.EvaluationSpec) -> dict[str, Any]:
    return {
        "kind": "evaluation",
        "feature_columns": list(spec.feature_columns),
        "label_column": spec.label_column,
        "target_epsilon": _number(spec.target_epsilon, "target_epsilon"),
        "target_delta": _number(spec.target_delta, "target_delta"),
        "metrics": sorted(spec.metrics),
        "max_rows_per_patient": spec.max_rows_per_patient or DEFAULT_ROWS_PER_PATIENT,
    }
