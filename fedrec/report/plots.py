"""PNG line plots with matplotlib's Agg canvas (no pyplot, no global figure state, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

FIGSIZE = (7.2, 4.0)  # inches; at DPI this is 720 x 400 pixels
DPI = 100
# fixed margins (fractions of the figure) leave room for tick labels such as "2.5 MB": one draw per plot,
# where a layout engine would draw twice
MARGINS = dict(left=0.12, right=0.98, bottom=0.13, top=0.92)


@dataclass(frozen=True)
class Line:
    """One curve: x (rounds) and y values, a legend label and a matplotlib line style."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-"


@dataclass(frozen=True)
class Plot:
    """What one PNG shows; ``y_unit`` (e.g. "B") formats the y axis with engineering prefixes (kB, MB)."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    hlines: list[tuple[str, float]] = field(default_factory=list)  # (label, y): dashed reference lines
    y_unit: str | None = None


def render(plot: Plot, path: Path) -> Path:
    """Draw ``plot`` and write it to ``path`` as PNG."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    figure.subplots_adjust(**MARGINS)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for line in plot.lines:
        axes.plot(line.x, line.y, line.style, label=line.label, marker="o", markersize=3 if len(line.x) > 30 else 4)
    for label, y in plot.hlines:
        axes.axhline(y, linestyle="--", linewidth=1, color="grey", label=label)
    axes.set_title(plot.title)
    axes.set_xlabel(plot.xlabel)
    axes.set_ylabel(plot.ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if plot.y_unit is not None:
        axes.yaxis.set_major_formatter(EngFormatter(unit=plot.y_unit))
    axes.grid(True, alpha=0.3)
    if len(plot.lines) + len(plot.hlines) > 1:
        axes.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path
