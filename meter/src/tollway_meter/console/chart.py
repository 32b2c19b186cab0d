"""Server-rendered SVG bar charts: geometry computed here, drawn by the template (no script).

Bar heights are pixel geometry, so a float ratio is fine; every amount shown as text stays exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

WIDTH = 760
HEIGHT = 180
GAP = 2
MAX_BUCKETS = 400


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


def _label(moment: datetime, grain: str) -> str:
    """The bucket text `tollway_meter.queries.usage` gives for this granularity."""
    if grain == "hour":
        return moment.strftime("%Y-%m-%dT%H:00Z")
    return moment.strftime("%Y-%m-%d" if grain == "day" else "%Y-%m")


def time_series(
    since: datetime, until: datetime, grain: str, spend: Mapping[str, int]
) -> list[tuple[str, int]]:
    """Every bucket of [since, until) in order, zero where nothing was spent, so the x axis is time."""
    moment = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if grain != "hour":
        moment = moment.replace(hour=0)
    if grain == "month":
        moment = moment.replace(day=1)
    labels: list[str] = []
    while moment < until and len(labels) < MAX_BUCKETS:
        label = _label(moment, grain)
        if not labels or labels[-1] != label:
            labels.append(label)
        moment += timedelta(hours=1) if grain == "hour" else timedelta(days=1)
    extra = sorted(set(spend) - set(labels))  # e.g. beyond the cap: never drop spend silently
    return [(label, spend.get(label, 0)) for label in [*labels, *extra]]
