"""Geometry for the model card's SVG charts (confusion matrix and training curves).

The functions return plain data (coordinates, labels, shades); the templates
draw it as inline SVG, so no plotting library is needed and charts print sharply.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

# Colour-blind-safe palette (Okabe-Ito) for up to eight curves.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclasses.dataclass(frozen=True)
class MatrixCell:
    """One confusion matrix cell: a count and its share of the true-grade row."""

    count: int
    row_share: float


@dataclasses.dataclass(frozen=True)
class Curve:
    """One metric across epochs, as an SVG polyline."""

    name: str
    colour: str
    points: str
    last_value: float


@dataclasses.dataclass(frozen=True)
class Tick:
    """An axis tick: its label and its position in SVG units."""

    label: str
    position: float


@dataclasses.dataclass(frozen=True)
class LineChart:
    """A chart of one or more curves sharing axes."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    curves: List[Curve]
    x_ticks: List[Tick]
    y_ticks: List[Tick]


def confusion_cells(matrix: Sequence[Sequence[int]]) -> List[List[MatrixCell]]:
    """Rows of cells (true grade by predicted grade) with row-normalised shares."""
    rows = []
    for row in matrix:
        total = sum(int(v) for v in row)
        rows.append([MatrixCell(int(v), (int(v) / total) if total else 0.0) for v in row])
    return rows


def _nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    if high <= low:
        high = low + 1.0
    raw_step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def line_chart(
    series: Dict[str, Sequence[float]],
    width: int = 520,
    height: int = 260,
    names: Optional[Sequence[str]] = None,
) -> Optional[LineChart]:
    """Lays out curves over epochs.

    Args:
        series: Metric name -> value per epoch (non-finite values are skipped).
        width: SVG width.
        height: SVG height.
        names: Which series to draw, in order; all of them when None.

    Returns:
        The chart, or None when there is nothing to draw.
    """
    chosen = [n for n in (names or sorted(series)) if n in series and len(series[n]) > 0]
    finite = [
        float(v) for n in chosen for v in series[n] if v is not None and math.isfinite(float(v))
    ]
    if not finite:
        return None
    left, top, right, bottom = 48, 12, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    epochs = max(len(series[n]) for n in chosen)
    y_ticks = _nice_ticks(min(finite), max(finite))
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def x_at(epoch: int) -> float:
        return left + (plot_w * epoch / (epochs - 1) if epochs > 1 else plot_w / 2)

    def y_at(value: float) -> float:
        return top + plot_h * (1 - (value - y_low) / (y_high - y_low))

    curves = []
    for i, name in enumerate(chosen):
        values = series[name]
        pts = [
            f"{x_at(e):.1f},{y_at(float(v)):.1f}"
            for e, v in enumerate(values)
            if v is not None and math.isfinite(float(v))
        ]
        last = next(
            (float(v) for v in reversed(values) if v is not None and math.isfinite(float(v))),
            float("nan"),
        )
        curves.append(Curve(name, PALETTE[i % len(PALETTE)], " ".join(pts), last))
    x_step = max(1, math.ceil(epochs / 10))
    x_ticks = [Tick(str(e + 1), x_at(e)) for e in range(0, epochs, x_step)]
    return LineChart(
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        curves=curves,
        x_ticks=x_ticks,
        y_ticks=[Tick(f"{t:g}", y_at(t)) for t in y_ticks],
    )
