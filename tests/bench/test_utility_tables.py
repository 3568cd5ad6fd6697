"""bench/utility.py's pure parts: the tables load, outcomes follow their stated definitions, and each
model package's input scaling is fixed constants (reference ranges map to [-1, 1]), not data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.tables import horizon_outcome, split, tables


def _build(package: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(f"pkg_{package.name.replace('-', '_')}", package / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def test_horizon_outcome_counts_events_within_and_drops_early_censoring() -> None:
    time = np.array([100.0, 400.0, 100.0, 400.0, 365.0])
    event = np.array([1, 1, 0, 0, 1])
    known, y = horizon_outcome(time, event, 365.0)
    assert known.tolist() == [True, True, False, True, True]
    assert y[known].tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("table", tables(), ids=lambda t: t.name)
def test_table_loads_with_a_binary_outcome_and_its_package(table) -> None:  # type: ignore[no-untyped-def]
    X, y = table.load()
    assert X.shape == (len(y), len(table.features)) and np.isfinite(X).all()
    assert set(np.unique(y)) == {0, 1}
    toml = (table.package / "cleanroom-model.toml").read_text()
    assert f"input_shape = [{len(table.features)}]" in toml and "num_classes = 2" in toml
    uploaded, kept = split(y)
    assert not set(uploaded) & set(kept) and len(uploaded) + len(kept) == len(y)
    assert abs(len(kept) / len(y) - 0.2) < 0.01


@pytest.mark.parametrize("table", tables(), ids=lambda t: t.name)
def test_scaling_is_fixed_constants_mapping_reference_ranges_to_unit_interval(table) -> None:  # type: ignore[no-untyped-def]
    model = _build(table.package)
    scaling = model[0]
    assert not list(scaling.parameters()), "scaling must not be trainable"
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ranges = _reference_ranges(table.package)
    low = torch.tensor([[lo for lo, _ in ranges]], dtype=torch.float32)
    high = torch.tensor([[hi for _, hi in ranges]], dtype=torch.float32)
    assert torch.allclose(scaling(low), torch.full_like(low, -1.0), atol=1e-4)
    assert torch.allclose(scaling(high), torch.full_like(high, 1.0), atol=1e-4)
    # the same constants whatever the batch: scaling one row never depends on the others
    rows = torch.cat([low, high, low * 3])
    assert torch.allclose(scaling(rows)[:1], scaling(low))


def _reference_ranges(package: Path) -> list[tuple[float, float]]:
    spec = importlib.util.spec_from_file_location(f"ranges_{package.name.replace('-', '_')}", package / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "REFERENCE"):
        return [(lo, hi) for _, lo, hi, _ in module.REFERENCE]
    return list(module.DOCUMENTED_RANGE)


def test_breast_cancer_documented_range_matches_the_dataset_description() -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    ranges = _reference_ranges(tables()[0].package)
    # the published minimum and maximum (3 decimals in the description) bound the data
    assert np.all(data.data.min(axis=0) >= np.array([lo for lo, _ in ranges]) - 1e-3)
    assert np.all(data.data.max(axis=0) <= np.array([hi for _, hi in ranges]) + 1e-3)
