"""atheris harness: the CSV reader (cleanroom/datasets/readers.py), header check and typed blocks.

Small blocks (97 bytes) so that block cutting and rows spanning reads are exercised too.
Expected: CleanroomError (a value-free rejection). See _harness.py for the crash rule.
"""

from __future__ import annotations

import io

from _harness import INSTRUMENTED, atheris, run

with atheris.instrument_imports(include=INSTRUMENTED):
    from _policy import HEADER, POLICY, ROWS

    from cleanroom.datasets.readers import read_csv_batches
    from cleanroom.domain.errors import CleanroomError


def target(data: bytes) -> None:
    for _ in read_csv_batches(io.BytesIO(data), POLICY, block_size=97):
        pass


def seeds() -> list[bytes]:
    lines = [HEADER, *ROWS]
    return [("\n".join(lines) + "\n").encode(), ("\r\n".join(lines)).encode(), (HEADER + "\n").encode(),
            ("\n\n" + "\n".join([HEADER, ROWS[0]] * 1)).encode()]


if __name__ == "__main__":
    run(target, (CleanroomError,), seeds)
