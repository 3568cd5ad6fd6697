"""Cumulative ε spent on a dataset over time, from its ledger, as server-rendered inline SVG.

No chart library and no script: the points are computed here and the template draws a polyline, a
cap line and the axes, with a <title>/<desc> and the same numbers in a table beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cleanroom.v1 import privacy_pb2

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 36  # room for the axis labels


@dataclass(frozen=True)
class SpendPoint:
    seq: int
    time: str
    epsilon: float      # this commit's ε
    cumulative: float   # ε spent on the dataset up to and including it
    mechanism: str
    who: str            # the budgets it touched besides the dataset-wide one


@dataclass(frozen=True)
class Chart:
    points: list[SpendPoint]
    cap: float
    top: float          # the y axis's maximum (the cap or the spend, whichever is larger)
    polyline: str       # SVG points of the step line
    cap_y: float
    ticks: list[tuple[float, str]]  # (y, label) on the ε axis

    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    bottom_edge: int = HEIGHT - BOTTOM


def spend_points(dataset: str, events: Iterable[privacy_pb2.LedgerEvent], names: Mapping[str, str]) -> list[SpendPoint]:
    """Every commit on the dataset-wide budget (each spend charges it once), oldest first; `names`
    gives each share budget's manufacturer by budget name."""
    total, points = 0.0, []
    for event in sorted(events, key=lambda e: e.seq):
        if event.kind != "commit" or dataset not in event.budgets or event.amount.epsilon <= 0:
            continue
        total += event.amount.epsilon
        shares = [names.get(b, b.removeprefix(f"{dataset}/")) for b in event.budgets if b != dataset]
        points.append(SpendPoint(event.seq, event.time.ToJsonString(), event.amount.epsilon, total, event.mechanism,
                                 ", ".join(shares)))
    return points


def chart(points: list[SpendPoint], cap: float) -> Chart:
    top = max([cap, *(p.cumulative for p in points), 1e-9])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return round(TOP + plot_h * (1 - value / top), 2)

    def x(position: float) -> float:
        return round(LEFT + plot_w * position / max(1, len(points)), 2)

    coordinates = [(x(0), y(0.0))]
    for index, point in enumerate(points):  # a step up at each commit, the commits evenly spaced in their order
        coordinates += [(x(index + 0.5), coordinates[-1][1]), (x(index + 0.5), y(point.cumulative))]
    coordinates.append((float(WIDTH - RIGHT), coordinates[-1][1]))
    polyline = " ".join(f"{cx},{cy}" for cx, cy in coordinates)
    ticks = [(y(top * share), f"{top * share:.3g}") for share in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return Chart(points, cap, top, polyline, y(cap), ticks)
