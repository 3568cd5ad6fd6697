"""DP statistics engine vs. exact pyarrow group-bys, on one synthetic table, measured in one run.

Prints, per query kind, the engine's median time and its ratio to an exact (non-private) pyarrow
computation of the same shape: for the count, one group-by over patients (the least work any
per-patient bounding needs); for the grouped mean and median, the plain group-by statistic. The
engine adds row bounding (a shuffle and a stable sort of all rows), clamping, fixed point and
OpenDP's samplers. Target: within ~30x of the exact computation on 1M rows and 100k patients.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cleanroom.statistics.engine import Query, run_query  # noqa: E402

BANDS = ["20-29", "30-39", "40-49", "50-59", "60-69"]


def _table(rows: int, patients: int) -> pa.Table:
    rng = np.random.default_rng(0)
    pid = rng.integers(0, patients, rows)
    return pa.table(
        {
            "patient": pa.array(pid),
            "band": pa.array(np.asarray(BANDS)[pid % len(BANDS)]),
            "x": pa.array(rng.normal(70.0, 10.0, rows)),
        }
    )


def _median_seconds(action, repeats: int) -> float:  # type: ignore[no-untyped-def]
    action()  # warm caches (calibration, imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    table = _table(args.rows, args.patients)
    public = {"band": BANDS}
    cases = {
        "count": (Query(kind="count", column="x", epsilon=1.0, max_rows_per_patient=5), lambda: table.group_by("patient").aggregate([("x", "count")])),
        "mean by band": (
            Query(kind="mean", column="x", group_by="band", epsilon=1.0, bounds=(0, 200), max_rows_per_patient=5),
            lambda: table.group_by("band").aggregate([("x", "mean")]),
        ),
        "median by band": (
            Query(kind="quantile", column="x", group_by="band", epsilon=1.0, bounds=(0, 200), max_rows_per_patient=5),
            lambda: table.group_by("band").aggregate([("x", "approximate_median")]),
        ),
    }
    print(f"{args.rows} rows, {args.patients} patients, median of {args.repeats}")
    for name, (query, exact) in cases.items():
        private = _median_seconds(lambda query=query: run_query(table, query, patient_column="patient", public_group_keys=public), args.repeats)
        baseline = _median_seconds(exact, args.repeats)
        print(f"{name:>15}: engine {private * 1000:8.1f} ms  exact {baseline * 1000:8.1f} ms  ratio {private / max(baseline, 1e-6):7.1f}x")


if __name__ == "__main__":
    main()
