"""``Report.plot``: the picture of a run, drawn with matplotlib (the ``plot`` extra)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._report import Report

__all__ = ("plot_report",)


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Report.plot() needs matplotlib: pip install 'async_flow[plot]'"
        ) from exc
    return Figure, FigureCanvasAgg


def plot_report(report: Report, path: str | os.PathLike[str], *, title: str | None = None) -> None:
    """Write three stacked panels to ``path`` (PNG): throughput, channel fill, busy workers."""
    timeline = report.timeline
    if timeline is None or not timeline.times:
        raise ValueError("this report has no timeline to plot (it was not made by a run)")
    figure_cls, canvas_cls = _matplotlib()
    # A Figure with its own canvas: no pyplot, so no global state and no GUI backend.
    fig = figure_cls(figsize=(10, 7.5), dpi=100, layout="constrained")
    canvas_cls(fig)
    throughput, fill, busy = fig.subplots(3, 1, sharex=True)
    times = [0.0, *timeline.times]
    for i, name in enumerate(timeline.layers):
        rate = timeline.throughput(i)
        throughput.step(times, [rate[0], *rate], where="pre", label=name)
        fill.plot(timeline.times, [100 * f for f in timeline.fill(i)], label=name)
        workers = timeline.busy_workers(i)
        busy.step(
            times, [workers[0], *workers], where="pre", label=f"{name} (of {timeline.workers[i]})"
        )
    throughput.set_ylabel("items/s taken in")
    fill.set_ylabel("input channel fill (%)")
    fill.set_ylim(0, 105)
    busy.set_ylabel("busy workers (avg)")
    busy.set_xlabel("seconds since start")
    for ax in (throughput, fill, busy):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        if timeline.layers:
            ax.legend(loc="upper right", fontsize="small")
    heading = title or f"async_flow run ({report.status}, {report.elapsed:.1f}s)"
    bottleneck = report.bottleneck
    if bottleneck is not None and bottleneck.stage is not None:
        heading += f"\nbottleneck: {bottleneck.stage}"
    fig.suptitle(heading)
    fig.savefig(os.fspath(path), format="png")
