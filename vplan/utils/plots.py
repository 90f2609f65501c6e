"""The PNG plots a command writes next to its numbers, for the reader who would rather look than read.

Each figure is a matplotlib `Figure` drawn on its own Agg canvas, without pyplot: it renders without a display
(headless machines too), leaves the user's backend and open figures alone (a notebook's `plt.show()`), and is
never registered anywhere it would have to be closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vplan.utils.files import file_written_aside


def _axes(size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure: Any, axis: Any, path: Path, title: str) -> None:
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_written_aside(path, path.suffix) as scratch:  # never a half plot; the suffix names the format
        figure.savefig(scratch, dpi=120)


def line_plot(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
              ylabel: str, title: str, log_y: bool = False) -> None:
    """One line per label, each given as (x values, y values); `log_y` for values spanning decades (losses): a
    log axis only where they do span one, since within a decade it labels two ticks or none."""
    figure, axis = _axes((6, 3.5))
    for label, (x, y) in series.items():
        axis.plot(x, y, label=label, marker="o" if len(x) <= 40 else None, markersize=3)
    values = [float(v) for _, y in series.values() for v in y]
    if log_y and values and min(values) > 0 and max(values) >= 10 * min(values):
        axis.set_yscale("log")
    if all(float(v).is_integer() for x, _ in series.values() for v in x):  # steps, chunks, iterations
        from matplotlib.ticker import MaxNLocator

        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend(fontsize=8)
    _save(figure, axis, path, title)


def bar_plot(path: Path, bars: Mapping[str, tuple[float, float]], ylabel: str, title: str) -> None:
    """One bar per label, each given as (mean, standard deviation), drawn as an error bar."""
    figure, axis = _axes((7, 3.5))
    names = list(bars)
    axis.bar(range(len(names)), [bars[n][0] for n in names], yerr=[bars[n][1] for n in names], capsize=4,
             color="#4c72b0")
    axis.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    axis.set_ylabel(ylabel)
    _save(figure, axis, path, title)
