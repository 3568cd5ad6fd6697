"""Three hospitals' tables with planted shared patients, and the job.json phase B reads for them.

Each hospital names the study's columns its own way. Persons P0..P(shared-1) are treated at all
three hospitals under different local patient pseudonyms; hospitals that declared linkage carry the
same linkage pseudonym for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

FEATURES = ("age", "marker", "score", "dose")
LABEL = "outcome"
# Each site's own names for the study's columns (study name -> site column).
MAPPINGS = (
    {"age": "age", "marker": "marker", "score": "score", "dose": "dose", "outcome": "outcome"},
    {"age": "AGE_YRS", "marker": "MK1", "score": "SCR", "dose": "DOSE_MG", "outcome": "EVENT"},
    {"age": "edad", "marker": "marcador", "score": "puntaje", "dose": "dosis", "outcome": "evento"},
)
NAMES = ("Hospital North", "Hospital South", "Hospital East")
WEIGHTS = np.array([1.0, -0.8, 0.6, 0.4])


def site_table(site: int, *, patients: int, shared: int, rows_per_shared: int, seed: int = 0) -> pa.Table:
    """`patients` local patients with one row each, plus `shared` planted persons with
    `rows_per_shared` rows each; every row a patient pseudonym and a linkage pseudonym."""
    rng = np.random.default_rng([seed, site])
    local = [f"h{site}-p{i}" for i in range(patients)]
    pids = local + [f"h{site}-shared{j}" for j in range(shared) for _ in range(rows_per_shared)]
    links = [f"link-local-{site}-{i}" for i in range(patients)] + [f"link-P{j}" for j in range(shared) for _ in range(rows_per_shared)]
    n = len(pids)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ WEIGHTS)))).astype(np.int64)
    columns: dict[str, Any] = {MAPPINGS[site][f]: X[:, k] for k, f in enumerate(FEATURES)}
    columns[MAPPINGS[site][LABEL]] = y
    columns["pid"] = pids
    columns["rrn_link"] = links
    return pa.table(columns)


def job(kind: str, *, roles: tuple[str, ...] = ("train", "train", "train"), linked: tuple[bool, ...] = (True, True, True),
        **overrides: Any) -> dict[str, Any]:
    """job.json in the runner's contract."""
    params: dict[str, Any] = {"kind": kind, "feature_columns": list(FEATURES), "label_column": LABEL,
                              "target_epsilon": "2", "target_delta": "1e-6", "max_rows_per_patient": 2}
    if kind == "training":
        params.update(epochs=1, expected_batch_patients=100, learning_rate="0.1", optimizer="sgd",
                      clipping_norm="1", validation_fraction="0.2")
    else:
        params["metrics"] = ["accuracy", "auroc"]
    params.update(overrides)
    sites = [{"dataset_id": f"ds-{i}", "name": NAMES[i], "blob": f"site{i}.blob", "columns": MAPPINGS[i],
              "patient_column": "pid", "linkage_column": "rrn_link" if linked[i] else None, "role": roles[i]}
             for i in range(len(roles))]
    return {"params": params, "task": "binary-classification", "num_classes": 2, "input_shape": [len(FEATURES)],
            "trainable": ["*"], "metrics": params.get("metrics", ["accuracy", "auroc"]), "dataset_id": sites[0]["dataset_id"],
            "sites": sites}
