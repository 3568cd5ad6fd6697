"""What a statistics query releases: noisy values, their 95% intervals and the privacy they cost.

Nothing here is exact: every value is the output of a DP mechanism or post-processing of one.
There is deliberately no field for how many groups were suppressed by τ-thresholding: a
suppressed group must look exactly like a group that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom.domain.privacy import Mechanism


@dataclass(frozen=True)
class Cell:
    """One released value. `key` is the group (and histogram bin) it belongs to; () when ungrouped.

    `half_width` is the 95% interval's half-width around `value` for the DP noise alone (clamping
    and row bounding are deterministic choices the caller made and are not in it). For quantiles
    it is in rows of rank (`unit == "rows"`): the released value's rank is within that many rows
    of the requested one, beyond the candidate grid's own resolution.
    """

    key: tuple[str, ...]
    statistic: str
    value: float
    half_width: float
    unit: str = "value"
    level: float | None = None


@dataclass(frozen=True)
class Answer:
    kind: str
    cells: tuple[Cell, ...]
    epsilon: float
    delta: float
    mechanism: Mechanism
    rows_per_patient: int
    bounds: tuple[float, float] | None = None  # the clamping bounds used (public or DP-estimated)
    confidence: float = 0.95
    suppressed_groups_hidden: bool = True  # groups below τ are absent, never counted

    @property
    def value(self) -> float:
        """The single value of an ungrouped, single-statistic answer."""
        if len(self.cells) != 1 or self.cells[0].key != ():
            raise ValueError("this answer has several values; use cells or by_key()")
        return self.cells[0].value

    @property
    def half_width(self) -> float:
        if len(self.cells) != 1:
            raise ValueError("this answer has several values; use cells")
        return self.cells[0].half_width

    def by_key(self, *, level: float | None = None) -> dict[tuple[str, ...], float]:
        """Values per group key (for quantiles, of one level)."""
        return {c.key: c.value for c in self.cells if c.level == level}
