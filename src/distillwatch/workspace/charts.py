"""Chart geometry for server-rendered SVG (no chart JavaScript, nothing to escape but labels).

Functions return plain numbers and strings; the Jinja macros in ``templates/_charts.html`` draw
them, and autoescaping covers every label.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from distillwatch.workspace.queries import Series


@dataclass
class Bar:
    x: float
    y: float
    w: float
    h: float
    title: str


@dataclass
class Chart:
    width: int
    height: int
    bars: list[list[Bar]]  # one list per series, drawn in order (later ones on top)
    ticks: list[tuple[float, str]]  # x position, label
    markers: list[tuple[float, str]]  # x position, label (model launches)
    peak: float
    empty: bool


def time_bars(
    series: list[Series],
    width: int = 860,
    height: int = 160,
    markers: list[tuple[str, datetime]] | None = None,
    max_bars: int = 400,
) -> Chart:
    """Bars over a shared time axis; buckets are the series' own (day or hour)."""
    stamps = sorted({t for s in series for t, _ in s.points})
    if len(stamps) > max_bars:  # too many buckets for the width: merge neighbours
        step = -(-len(stamps) // max_bars)
        keep = stamps[::step]
        position = {t: i for i, t in enumerate(stamps)}
        merged = []
        for s in series:
            sums: dict[datetime, float] = {}
            for t, v in s.points:
                bucket = keep[min(len(keep) - 1, position[t] // step)]
                sums[bucket] = sums.get(bucket, 0.0) + v
            merged.append(Series(s.label, sorted(sums.items())))
        series, stamps = merged, keep
    if not stamps:
        return Chart(width, height, [], [], [], 0.0, True)
    peak = max((v for s in series for _, v in s.points), default=0.0) or 1.0
    slot = width / len(stamps)
    index = {t: i for i, t in enumerate(stamps)}
    plot = height - 18
    bars = []
    for s in series:
        bars.append(
            [
                Bar(
                    index[t] * slot,
                    plot - plot * v / peak,
                    max(slot - 1, 0.5),
                    plot * v / peak,
                    f"{t:%Y-%m-%d %H:%M} {s.label}: {v:,.0f}",
                )
                for t, v in s.points
            ]
        )
    every = max(1, len(stamps) // 6)
    ticks = [(i * slot, f"{t:%m-%d}") for i, t in enumerate(stamps) if i % every == 0]
    first, last = stamps[0], stamps[-1]
    span = (last - first).total_seconds() or 1.0
    placed = []
    for label, when in markers or []:
        if first <= when <= last:
            placed.append(((when - first).total_seconds() / span * (width - slot), label))
    return Chart(width, height, bars, ticks, placed, peak, False)


def ranked_bars(
    items: list[tuple[str, int]], width: int = 420, row: int = 20
) -> list[tuple[str, int, float]]:
    """(label, value, bar width in px) for a horizontal bar list."""
    peak = max((v for _, v in items), default=0) or 1
    return [(label, value, width * value / peak) for label, value in items]
