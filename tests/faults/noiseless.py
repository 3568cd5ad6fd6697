"""TEST BUILD ONLY: phase B with the DP-SGD noise turned off, to show the privacy-audit gate fires.

Run inside the job's sandbox as `python3 /in/faults/noiseless.py` by tests/faults/launcher.py, a
launcher wrapper a test hands to the job runner from its own Python. It replaces the trainer's
noise source with one that returns zeros, then runs the real phase B (cleanroom/worker/phase_b.py)
unchanged: the same accounting, so the run claims its ε while releasing noiseless updates.

Nothing in the service can reach this file: it lives under tests/, which the sandbox does not
mount (the wrapper mounts it for this test only), no module under cleanroom/ imports or names it,
and phase B reads no configuration, flag or environment variable that could select it
(tests/jobs/test_audit_gate.py checks all three).
"""

import sys

import torch

from cleanroom.trainer import noise


class Silent:
    """Zeros where the Gaussian noise should be."""

    name = "aes256-ctr-csprng-box-muller"  # lies about itself, as a real bug would

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def normal(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.zeros(shape)

    def normals(self, shapes: list[tuple[int, ...]], std: float) -> list[torch.Tensor]:
        return [torch.zeros(s) for s in shapes]


if __name__ == "__main__":
    noise.SecureGaussian = Silent  # type: ignore[misc, assignment]

    from cleanroom.worker.phase_b import main

    sys.exit(main())
