"""Sample clinical data for the demo and the tests: scikit-learn's Wisconsin breast-cancer set
(569 real patients) with synthetic identifying columns added, so de-identification has work to do.

The synthetic names, resident registration numbers, ages, postcodes and dates are random: they
only look like identifiers. Nothing here is read from the network.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from cleanroom.v1 import datasets_pb2

FAMILY = ["Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim"]
GIVEN = ["Minjun", "Seoyeon", "Jiwoo", "Hayoon", "Doyun", "Eunji", "Siwoo", "Jiho", "Yuna", "Hyunwoo"]
DISTRICT_PREFIXES = ["031", "047", "061", "080", "137"]


def _rrn(rng: random.Random, birth: date, female: bool) -> str:
    century = 2 if birth.year < 2000 else 4
    gender_digit = century if female else century - 1
    return f"{birth:%y%m%d}-{gender_digit}{rng.randrange(10**5, 10**6)}"


def _identity(rng: random.Random, index: int) -> dict[str, object]:
    age = rng.randint(25, 88)
    birth = date(2024 - age, rng.randint(1, 12), rng.randint(1, 28))
    visit = date(2023, 1, 1) + timedelta(days=rng.randrange(730))
    return {
        "patient_id": f"SNUH-{100000 + index}",
        "name": f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}",
        "rrn": _rrn(rng, birth, female=True),
        "age": age,
        "postcode": rng.choice(DISTRICT_PREFIXES) + f"{rng.randrange(100):02d}",
        "visit_date": visit.isoformat(),
    }


def feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return [n.replace(" ", "_") for n in load_breast_cancer().feature_names]


def write_breast_cancer_csv(path: Path, *, seed: int = 7) -> Path:
    """The 569 patients, one row each; label `malignant` is 1 for malignant tumours."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = feature_names()
    rng = random.Random(seed)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["patient_id", "name", "rrn", "age", "postcode", "visit_date", *names, "malignant"])
        for index, (features, target) in enumerate(zip(data.data, data.target)):
            who = _identity(rng, index)
            writer.writerow([*who.values(), *(f"{v:.6g}" for v in features), int(target == 0)])
    return path


def breast_cancer_schema(k: int = 5) -> list[datasets_pb2.ColumnSpec]:
    C, R = datasets_pb2.ColumnSpec, datasets_pb2
    columns = [
        C(name="patient_id", type=R.STRING, role=R.PATIENT_KEY),
        C(name="name", type=R.STRING, role=R.DIRECT_IDENTIFIER),
        C(name="rrn", type=R.STRING, role=R.DIRECT_IDENTIFIER),
        C(name="age", type=R.INTEGER, role=R.QUASI_IDENTIFIER,
          generalization=R.Generalization(age_band=R.AgeBand(width=10, top_code=80))),
        C(name="postcode", type=R.STRING, role=R.QUASI_IDENTIFIER,
          generalization=R.Generalization(prefix=R.Prefix(keep=3))),
        C(name="visit_date", type=R.DATE, role=R.QUASI_IDENTIFIER, generalization=R.Generalization(date=R.YEAR)),
    ]
    columns += [C(name=n, type=R.FLOAT, role=R.FEATURE) for n in feature_names()]
    columns.append(C(name="malignant", type=R.INTEGER, role=R.LABEL, label_classes=2))
    return columns


# --- a three-hospital study ----------------------------------------------------------------------

@dataclass(frozen=True)
class Hospital:
    """One site of the sample study: its name, its patient-id prefix, and the names its records
    system gives to the study's columns (the study's name -> this hospital's)."""

    name: str
    prefix: str
    renamed: dict[str, str]
    links: bool  # declares the resident registration number as a linkage column


HOSPITALS = (
    Hospital("Seoul National University Hospital", "SNUH", {}, links=True),
    Hospital("Samsung Medical Center", "SMC", {"mean_radius": "radius_mean", "malignant": "dx_malignant"}, links=True),
    Hospital("Asan Medical Center", "AMC", {"mean_radius": "radius_avg", "mean_texture": "texture_avg", "malignant": "is_malignant"},
             links=False),
)
SHARED_PATIENTS = 24  # seen at the first two hospitals: the same person, the same RRN, two patient ids


def write_hospital_csvs(directory: Path, *, seed: int = 11) -> list[Path]:
    """The 569 patients split across HOSPITALS (about a third each), each file with that hospital's
    patient ids and column names. SHARED_PATIENTS of the first hospital's patients were also treated
    at the second: they appear in both files with the same RRN and their own patient id there."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = feature_names()
    rng = random.Random(seed)
    people = [(_identity(rng, i), features, int(target == 0)) for i, (features, target) in enumerate(zip(data.data, data.target))]
    rng.shuffle(people)
    sites: list[list[tuple[dict[str, object], object, int]]] = [people[i::len(HOSPITALS)] for i in range(len(HOSPITALS))]
    sites[1] = sites[1] + sites[0][:SHARED_PATIENTS]
    paths = []
    for number, (hospital, rows) in enumerate(zip(HOSPITALS, sites)):
        path = directory / f"hospital-{number + 1}-{hospital.prefix.lower()}.csv"
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["patient_id", "name", "rrn", "age", "postcode", "visit_date",
                             *(hospital.renamed.get(n, n) for n in [*names, "malignant"])])
            for index, (who, features, label) in enumerate(rows):
                local = {**who, "patient_id": f"{hospital.prefix}-{200000 + index}"}
                writer.writerow([*local.values(), *(f"{v:.6g}" for v in features), label])  # type: ignore[attr-defined]
        paths.append(path)
    return paths


def hospital_schema(hospital: Hospital, k: int = 5) -> list[datasets_pb2.ColumnSpec]:
    """The breast-cancer schema under this hospital's column names, with the RRN declared as the
    linkage column where the hospital links (else dropped as a direct identifier). The postcode is
    dropped too: a third of the patients in age bands x postcode areas x years would leave most
    equivalence classes below k, and suppression would take most of the hospital's rows."""
    columns = []
    for spec in breast_cancer_schema(k):
        copy = datasets_pb2.ColumnSpec()
        copy.CopyFrom(spec)
        copy.name = hospital.renamed.get(spec.name, spec.name)
        if spec.name == "rrn" and hospital.links:
            copy.role = datasets_pb2.LINKAGE_ID
        if spec.name == "postcode":
            copy.role = datasets_pb2.DIRECT_IDENTIFIER
            copy.ClearField("generalization")
        columns.append(copy)
    return columns
