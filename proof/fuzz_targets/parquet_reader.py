"""atheris harness: the Parquet reader (cleanroom/datasets/readers.py): open, schema check, batches.

Expected: CleanroomError. See _harness.py for the crash rule.
"""

from __future__ import annotations

import io

from _harness import INSTRUMENTED, atheris, run

with atheris.instrument_imports(include=INSTRUMENTED):
    from _policy import POLICY

    from cleanroom.datasets.readers import read_parquet_batches
    from cleanroom.domain.errors import CleanroomError


def target(data: bytes) -> None:
    for _ in read_parquet_batches(io.BytesIO(data), POLICY, batch_size=3):
        pass


def seeds() -> list[bytes]:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "patient": pa.array(["p1", "p2", None, "p4"]), "age": pa.array([34, None, 90, -1], pa.int64()),
        "weight": pa.array([71.5, None, 1e3, -0.0]), "seen": pa.array([dt.date(2024, 3, 1)] * 4),
        "smoker": pa.array([True, False, None, True]),
        "at": pa.array([dt.datetime(2024, 3, 1, 10)] * 4, pa.timestamp("s", tz="UTC")), "label": pa.array([1, 0, 1, 0]),
    }
    variants = [pa.table(columns), pa.table({**columns, "age": pa.array([34.0, None, 90.0, 1.0]),
                                             "at": pa.array(["2024-03-01T10:00:00Z"] * 4)}),
                pa.table({**columns, "patient": pa.array(["a", "b", "a", "b"]).dictionary_encode()})]
    out = []
    for table in variants:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="none", row_group_size=2)
        out.append(buffer.getvalue())
    return out


if __name__ == "__main__":
    run(target, (CleanroomError,), seeds)
