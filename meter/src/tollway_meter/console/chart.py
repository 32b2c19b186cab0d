"""Server-rendered SVG bar charts: geometry computed here, drawn by the template (no script).

Bar heights are pixel geometry, so a float ratio is fine; every amount shown as text stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 760
HEIGHT = 180
GAP = 2


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    label: str
    value_nanos: int


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    max_nanos: int


def bar_chart(points: Sequence[tuple[str, int]], width: int = WIDTH, height: int = HEIGHT) -> BarChart:
    """(label, nano-USD) per bucket, in order; an empty series gives an empty chart."""
    if not points:
        return BarChart(width, height, [], 0)
    top = max(value for _, value in points)
    slot = width // len(points)
    bars = []
    for index, (label, value) in enumerate(points):
        tall = round(height * value / top) if top > 0 else 0
        bars.append(Bar(index * slot, height - tall, max(slot - GAP, 1), tall, label, value))
    return BarChart(width, height, bars, top)
