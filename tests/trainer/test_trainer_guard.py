"""The phase B tripwire: a foreign module in the worker stops training before it starts."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from cleanroom.trainer import dpsgd
from cleanroom.trainer.guard import ForeignModuleError, assert_no_foreign_modules, foreign_modules
from tests.trainer.test_trainer_helpers import MLP, allowed_here, export


def test_a_manufacturer_module_in_sys_modules_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = allowed_here()
    assert_no_foreign_modules(allowed)
    monkeypatch.setitem(sys.modules, "model", types.ModuleType("model"))
    monkeypatch.setitem(sys.modules, "torch_lookalike", types.ModuleType("torch_lookalike"))
    assert foreign_modules(allowed) == ["model", "torch_lookalike"]
    with pytest.raises(ForeignModuleError, match="model"):
        assert_no_foreign_modules(allowed)
    with pytest.raises(ForeignModuleError):
        dpsgd.train(export(MLP()), X=np.zeros((4, 30), np.float32), y=np.zeros(4), patient=np.arange(4),
                    task="binary-classification", num_classes=2, trainable=["*"], target_epsilon=1.0,
                    target_delta=1e-3, epochs=1, expected_batch_patients=2, max_rows_per_patient=1,
                    learning_rate=0.1, optimizer="sgd", clipping_norm=1.0, allowed_modules=allowed)


def test_a_clean_worker_process_passes_with_the_default_list() -> None:
    code = ("import cleanroom.trainer.dpsgd, cleanroom.trainer.evaluate, cleanroom.trainer.report\n"
            "from cleanroom.trainer.guard import assert_no_foreign_modules\nassert_no_foreign_modules()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
