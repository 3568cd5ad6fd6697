"""atheris harness: the safetensors header check (cleanroom/models/intake/safetensors_check.py).

Expected: SafetensorsError. See _harness.py for the crash rule.
"""

from __future__ import annotations

from _harness import INSTRUMENTED, atheris, run

with atheris.instrument_imports(include=INSTRUMENTED):
    from cleanroom.models.intake.safetensors_check import SafetensorsError, check_safetensors


def target(data: bytes) -> None:
    check_safetensors(data, max_header_bytes=1 << 16, max_tensors=64)


def seeds() -> list[bytes]:
    import numpy as np
    import safetensors.numpy

    return [
        safetensors.numpy.save({"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float64)}),
        safetensors.numpy.save({"x": np.arange(4, dtype=np.int8)}, metadata={"format": "pt"}),
        safetensors.numpy.save({"empty": np.zeros((0, 2), np.int64), "flag": np.array([True])}),
    ]


if __name__ == "__main__":
    run(target, (SafetensorsError,), seeds)
