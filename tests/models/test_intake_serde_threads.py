"""torch's export serde keeps process-wide state; concurrent intakes must not trip over it.

Regression: tests/test_intake_adversarial.py intakes packages on three threads, and two of them
serialising an accepted program at once made torch raise "Refusing to stomp on existing FakeTensor
reducer" (its serializer registers a copyreg reducer for the duration of each call), which failed
the whole module fixture (16 errors) when the timing lined up.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from cleanroom.models.intake.artifact import artifact_bytes


def test_artifact_bytes_is_safe_from_several_threads() -> None:
    ep = torch.export.export(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), (torch.zeros(1, 8),))
    errors: list[str] = []
    results: list[bytes] = []

    def work() -> None:
        for _ in range(15):
            try:
                results.append(artifact_bytes(ep))
            except Exception as exc:  # noqa: BLE001 — any exception is the failure
                errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 60
