"""The PNG plots a command writes next to its numbers, for the reader who would rather look than read.

Each figure is a matplotlib `Figure` drawn on its own Agg canvas, without pyplot: it renders without a display
(headless machines too), leaves the user's backend and open figures alone (a notebook's `plt.show()`), and is
never registered anywhere it would have to be closed.
"""

from __future__ import annotations

import math
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


# Each line's own style and marker, so that lines which coincide (memory modes sharing noise, a term at 0 under
# the success rate) still show there are several.
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v")  # cycled apart from the line styles: 20 lines before a pair repeats
_LEGEND_LABEL = 48  # characters: a checkpoint's absolute path pushed the legend off the figure


def _short(label: str) -> str:
    """`label`, its middle cut to `_LEGEND_LABEL` characters (a path keeps its start and its last folders)."""
    if len(label) <= _LEGEND_LABEL:
        return label
    keep = (_LEGEND_LABEL - 1) // 2
    return f"{label[:keep]}…{label[-keep:]}"


def line_plot(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
              ylabel: str, title: str, log_y: bool = False) -> None:
    """One line per label, each given as (x values, y values); `log_y` for values spanning decades (losses): a
    log axis only where they do span one, since within a decade it labels two ticks or none. More than three
    lines get their legend beside the axes, where it covers none of them."""
    figure, axis = _axes((6 if len(series) <= 3 else 8, 3.5))
    for i, (label, (x, y)) in enumerate(series.items()):
        style, marker = _LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)]
        axis.plot(x, y, label=_short(label), linestyle=style, marker=marker if len(x) <= 40 else None,
                  markersize=3)
    values = [float(v) for _, y in series.values() for v in y if math.isfinite(float(v))]  # matplotlib skips the rest
    if log_y and values and min(values) > 0 and max(values) >= 10 * min(values):
        axis.set_yscale("log")
    xs = {float(v) for x, _ in series.values() for v in x}
    if all(v.is_integer() for v in xs):  # steps, chunks, iterations
        from matplotlib.ticker import MaxNLocator

        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(xs) == 1:  # one point: matplotlib's ±0.05 around it holds no integer tick
            axis.set_xticks(sorted(xs))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if len(series) > 3:
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif len(series) > 1:
        axis.legend(fontsize=8)
    _save(figure, axis, path, title)


def bar_plot(path: Path, bars: Mapping[str, tuple[float | None, float | None]], ylabel: str, title: str) -> None:
    """One bar per label, each given as (mean, standard deviation), drawn as an error bar; a label without a mean
    keeps its place, marked "no value". Values that cannot be negative (all means ≥ 0) start the axis at 0, where
    an error bar wider than its mean is cut."""
    figure, axis = _axes((7, 3.5))
    names = list(bars)
    means = [bars[n][0] for n in names]
    axis.bar(range(len(names)), [m if m is not None else 0.0 for m in means],
             yerr=[bars[n][1] if bars[n][0] is not None and bars[n][1] is not None else 0.0 for n in names],
             capsize=4, color="#4c72b0")
    for i, mean in enumerate(means):
        if mean is None:
            axis.text(i, 0, "no value", ha="center", va="bottom", fontsize=8)
    axis.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    if all(m is None or m >= 0 for m in means):
        axis.set_ylim(bottom=0)
    axis.set_ylabel(ylabel)
    _save(figure, axis, path, title)
