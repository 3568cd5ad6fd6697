"""The statistic kinds: one registry entry each; every other module looks a kind up here.

A kind is a `StatKind` member and its `KindSpec` in `SPECS`: the noisy steps the planner splits the
query's (ε, δ) across, whether it measures a numeric column (and so takes clamping bounds), whether
its values fall into bins, whether it takes quantile levels, how many noisy components make one
released value, its `StatisticKind` value in stats.proto, and the module that computes it and
states its expected error (`KindModule`). This module is stdlib only, so the SDK and the wire layer
import it without numpy, pyarrow or OpenDP; a kind's own module is imported on its first use.

Adding a statistic kind touches exactly these files:
  cleanroom/statistics/engine/kinds/<kind>.py    compute(cells) and error(plan, step, integer=, alpha=)
  cleanroom/statistics/engine/kinds/__init__.py  one StatKind member and its KindSpec in SPECS
  proto/cleanroom/v1/stats.proto                 a STATISTIC_KIND_<KIND> value (stubs: python -m cleanroom.codegen)
  tests/statistics/                              its accuracy (test_stats_accuracy.py) and privacy tests
Validation, planning, the dry run, the worker's codec, the wire conversion, the SDK and the CLI's
`cleanroom stats <kind>` follow from the entry. A new kind that needs a new kind of mechanism (not
additive noise, a τ-threshold or a quantile selection) also extends mechanisms.py and the ledger's
record of it (engine.describe).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from cleanroom.statistics.engine.answer import Cell
    from cleanroom.statistics.engine.compute import Cells
    from cleanroom.statistics.engine.plan import Plan, Step


class StatKind(StrEnum):
    """A statistic's name as queries, answers, receipts and the CLI write it (a `str`)."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    VARIANCE = "variance"
    HISTOGRAM = "histogram"
    QUANTILE = "quantile"


class KindModule(Protocol):
    """What a kind's own module provides (it may import numpy and OpenDP; this registry does not)."""

    def compute(self, cells: Cells) -> list[Cell]:
        """The released cells, each a noisy value with its 95% half-width; records what ran in cells.trace."""
        ...

    def error(self, plan: Plan, step: Step, *, integer: bool, alpha: float) -> dict[str, float]:
        """The expected half-width of one of this kind's own steps (not "bounds" or "select"), at
        1 - alpha, keyed as cleanroom.statistics.engine.dryrun.expected_error documents."""
        ...


@dataclass(frozen=True)
class KindSpec:
    kind: StatKind
    proto: str                     # its StatisticKind value's name in proto/cleanroom/v1/stats.proto
    steps: tuple[str, ...]         # noisy steps, in the order they run; "count" is replaced by the
                                   # τ-threshold ("select") when group keys are not public
    numeric: bool = False          # measures a numeric column, clamped to public or DP-estimated bounds
    binned: bool = False           # each value falls into a bin: a categorical column, or a numeric one with `bins`
    per_level: bool = False        # takes `quantiles`: each step runs once per level, named "<step>@<level>"
    additive: bool = True          # noise is added (Laplace or Gaussian, the query's `noise`); False for selections
    column_required: bool = True
    components: int = 1            # noisy components in one released value: each gets alpha / components
    module: str = ""               # its module under this package; the kind's value when empty

    def implementation(self) -> KindModule:
        return _implementation(self.module or self.kind.value)


SPECS: Mapping[StatKind, KindSpec] = {spec.kind: spec for spec in (
    KindSpec(StatKind.COUNT, "STATISTIC_KIND_COUNT", ("count",), column_required=False),
    KindSpec(StatKind.SUM, "STATISTIC_KIND_SUM", ("sum",), numeric=True),
    KindSpec(StatKind.MEAN, "STATISTIC_KIND_MEAN", ("count", "sum"), numeric=True, components=2),
    KindSpec(StatKind.VARIANCE, "STATISTIC_KIND_VARIANCE", ("count", "sum", "sum_of_squares"), numeric=True, components=3),
    KindSpec(StatKind.HISTOGRAM, "STATISTIC_KIND_HISTOGRAM", ("count",), binned=True, module="count"),
    KindSpec(StatKind.QUANTILE, "STATISTIC_KIND_QUANTILE", ("quantile",), numeric=True, per_level=True, additive=False),
)}

KIND_NAMES: tuple[str, ...] = tuple(kind.value for kind in StatKind)


def find_kind(kind: str) -> KindSpec | None:
    """The spec of a kind named by a caller; None when there is no such kind."""
    try:
        return SPECS.get(StatKind(kind))
    except ValueError:
        return None


def kind_spec(kind: str) -> KindSpec:
    """The spec of a kind already validated (cleanroom.statistics.engine.query.validate_query)."""
    spec = find_kind(kind)
    if spec is None:
        raise ValueError("not a statistic kind")
    return spec


_loaded: dict[str, KindModule] = {}


def _implementation(module: str) -> KindModule:
    if module not in _loaded:
        _loaded[module] = cast("KindModule", importlib.import_module(f"{__name__}.{module}"))
    return _loaded[module]
