"""Public clinical tables for bench/utility.py, each with its binary outcome and its model package.

Every table ships inside a pip package: scikit-learn's Wisconsin breast-cancer data, and three
tables of scikit-survival (read from the ARFF files in its wheel with scipy; the `sksurv` package
itself is never imported, so its pandas dependency is not needed). Install the data with
`.venv/bin/pip install --no-deps -c constraints.txt scikit-survival` (pandas, which its full
install brings, is imported by pyarrow inside the service once present).

Survival tables become binary outcomes at a fixed horizon: the event within the horizon is 1; a
patient followed past the horizon without the event is 0; a patient censored before the horizon
has no known outcome and is left out. Column definitions (codes turned into 0/1 indicators) are
fixed here, never derived from the data; any input scaling is the model package's, from published
reference ranges (bench/packages/<table>/model.py, examples/breast-cancer-mlp/model.py).
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "bench" / "packages"
EXAMPLE = ROOT / "examples" / "breast-cancer-mlp"


@dataclass(frozen=True)
class Table:
    name: str
    source: str                 # the pip package and file it ships in
    outcome: str                # the binary outcome, in words
    features: tuple[str, ...]   # in the model's input order
    package: Path               # the model package for it
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # (X float64 [patients, features], y int64 0/1)


def _arff(name: str) -> np.ndarray:
    from scipy.io import arff  # type: ignore[import-untyped]

    spec = importlib.util.find_spec("sksurv")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-survival is not installed: .venv/bin/pip install --no-deps -c constraints.txt scikit-survival")
    data: np.ndarray
    data, _ = arff.loadarff(Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / f"{name}.arff")
    return data


def _flag(column: np.ndarray, *yes: bytes) -> np.ndarray:
    return np.isin(column, yes).astype(np.float64)


def horizon_outcome(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """(known, y): y = 1 for the event at or before the horizon, 0 for follow-up past it without the
    event; patients censored before the horizon are unknown (known = False)."""
    event = event.astype(bool)
    positive = event & (time <= horizon)
    negative = time > horizon
    return positive | negative, positive.astype(np.int64)


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer as sklearn_load

    data = sklearn_load()
    return data.data.astype(np.float64), (data.target == 0).astype(np.int64)  # 1 = malignant


FLCHAIN_FEATURES = ("age", "male", "kappa", "lambda", "creatinine", "mgus")


def load_flchain() -> tuple[np.ndarray, np.ndarray]:
    d = _arff("flchain")
    known, y = horizon_outcome(d["futime"], d["death"] == b"dead", 5 * 365.25)
    X = np.column_stack([d["age"], _flag(d["sex"], b"M"), d["kappa"], d["lambda"], d["creatinine"], _flag(d["mgus"], b"yes")])
    keep = known & np.isfinite(X).all(axis=1)  # creatinine was not measured for 1,350 participants
    return X[keep], y[keep]


ACTG_FEATURES = ("indinavir_arm", "female", "iv_drug_use", "hemophilia", "karnofsky", "cd4", "prior_zdv_months", "age")


def load_actg320() -> tuple[np.ndarray, np.ndarray]:
    d = _arff("actg320")
    y = (d["censor"] == b"1").astype(np.int64)  # every patient's follow-up is the trial's (at most 364 days)
    X = np.column_stack([_flag(d["tx"], b"1"), _flag(d["sex"], b"2"), _flag(d["ivdrug"], b"2", b"3"), _flag(d["hemophil"], b"1"),
                         d["karnof"].astype(np.float64), d["cd4"], d["priorzdv"], d["age"]])
    return X, y


WHAS_FEATURES = ("age", "male", "heart_rate", "systolic_bp", "diastolic_bp", "bmi", "cvd_history", "atrial_fibrillation",
                 "cardiogenic_shock", "heart_failure", "av_block_3", "mi_order_recurrent", "mi_type_q_wave")


def load_whas500() -> tuple[np.ndarray, np.ndarray]:
    d = _arff("whas500")
    known, y = horizon_outcome(d["lenfol"], d["fstat"] == b"1", 365.0)
    flags = [_flag(d[c], b"1") for c in ("cvd", "afb", "sho", "chf", "av3", "miord", "mitype")]
    X = np.column_stack([d["age"], 1.0 - _flag(d["gender"], b"1"), d["hr"], d["sysbp"], d["diasbp"], d["bmi"], *flags])
    return X[known], y[known]


def _breast_cancer_features() -> tuple[str, ...]:
    from sklearn.datasets import load_breast_cancer as sklearn_load

    return tuple(n.replace(" ", "_") for n in sklearn_load().feature_names)


def tables() -> list[Table]:
    return [
        Table("breast-cancer", "scikit-learn: load_breast_cancer (Wisconsin diagnostic)", "malignant tumour (biopsy diagnosis)",
              _breast_cancer_features(), EXAMPLE, load_breast_cancer),
        Table("flchain", "scikit-survival: datasets/data/flchain.arff (Olmsted County serum free light chain study)",
              "death within 5 years of the blood sample (censored before 5 years: left out; creatinine missing: left out)",
              FLCHAIN_FEATURES, PACKAGES / "flchain-logreg", load_flchain),
        Table("actg320", "scikit-survival: datasets/data/actg320.arff (AIDS Clinical Trials Group 320)",
              "AIDS-defining event or death during the trial's follow-up (at most 364 days)",
              ACTG_FEATURES, PACKAGES / "actg320-logreg", load_actg320),
        Table("whas500", "scikit-survival: datasets/data/whas500.arff (Worcester Heart Attack Study)",
              "death within 1 year of admission (censored before 1 year: left out)",
              WHAS_FEATURES, PACKAGES / "whas500-logreg", load_whas500),
    ]


def split(y: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (uploaded, kept): a fixed stratified split; the kept part never leaves the bench."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    uploaded, kept = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=y)
    return np.sort(uploaded), np.sort(kept)


def write_csv(path: Path, features: tuple[str, ...], X: np.ndarray, y: np.ndarray, *, prefix: str) -> Path:
    """One row per patient with a synthetic patient key, the features and the 0/1 label `outcome`."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["patient_id", *features, "outcome"])
        for index in range(len(y)):
            writer.writerow([f"{prefix}-{index:06d}", *(repr(float(v)) for v in X[index]), int(y[index])])
    return path
