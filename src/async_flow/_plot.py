"""``Report.plot``: the picture of a run, drawn with matplotlib (the ``plot`` extra)."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._report import Report

__all__ = ("busy_percent", "plot_report", "worker_steps")

#: Throughput is drawn as the average over this many equal spans of the run.
BINS = 60


def _interpolate(xs: list[float], times: list[float], values: list[int]) -> list[float]:
    """The piecewise-linear ``values(times)`` at each of the increasing ``xs``."""
    out: list[float] = []
    j = 0
    for x in xs:
        while j + 1 < len(times) - 1 and times[j + 1] < x:
            j += 1
        t0, t1 = times[j], times[min(j + 1, len(times) - 1)]
        v0, v1 = values[j], values[min(j + 1, len(values) - 1)]
        out.append(v0 if t1 <= t0 else v0 + (v1 - v0) * min(1.0, max(0.0, (x - t0) / (t1 - t0))))
    return out


def worker_steps(report: Report, name: str, end: float) -> tuple[list[float], list[int]]:
    """An autoscaled layer's worker count as a step series up to ``end`` (empty if fixed)."""
    steps = report.workers_over_time(name)
    if not steps:
        return [], []
    times = [t for t, _ in steps] + [max(end, steps[-1][0])]
    counts = [n for _, n in steps] + [steps[-1][1]]
    return times, counts


def busy_percent(report: Report, index: int) -> tuple[list[float], list[float]]:
    """Layer ``index``'s busy workers as a share (%) of its workers, at each sample of the run.

    A share, not a count, so that a 2-worker layer that is always busy stands at 100% next to a
    32-worker layer that is half idle. An autoscaled layer is measured against the workers it
    had at each moment. The first point (at 0 s) repeats the first sample.
    """
    timeline = report.timeline
    if timeline is None or not timeline.times:
        return [], []
    busy = timeline.busy_workers(index)
    steps = report.workers_over_time(timeline.layers[index])
    percents = []
    for t, workers in zip(timeline.times, busy, strict=True):
        count = timeline.workers[index]
        for when, n in steps:  # the count in effect at t
            if when > t:
                break
            count = n
        percents.append(100.0 * workers / count if count > 0 else 0.0)
    return [0.0, *timeline.times], [percents[0], *percents]


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
    """Write three stacked panels to ``path`` (PNG): throughput, channel fill, busy workers.

    Busy workers are a share of each layer's workers (see :func:`busy_percent`); an autoscaled
    layer's worker count is drawn as a dashed step line against a second axis, in workers.
    """
    timeline = report.timeline
    if timeline is None or not timeline.times:
        raise ValueError("this report has no timeline to plot (it was not made by a run)")
    figure_cls, canvas_cls = _matplotlib()
    # A Figure with its own canvas: no pyplot, so no global state and no GUI backend.
    fig = figure_cls(figsize=(10, 7.5), dpi=100, layout="constrained")
    canvas_cls(fig)
    throughput, fill, busy = fig.subplots(3, 1, sharex=True)
    counts_axis: Any = None  # the autoscaled worker counts' axis, made when one is drawn
    times = [0.0, *timeline.times]
    # Throughput over about BINS equal spans: items move in batches, so the rate between two
    # neighbouring samples is spiky; the cumulative count makes each span's average exact.
    end = timeline.times[-1]
    bins = max(1, min(BINS, len(timeline.times)))
    edges = [end * k / bins for k in range(bins + 1)]
    for i, name in enumerate(timeline.layers):
        counts = _interpolate(edges, times, [0, *timeline.received[i]])
        span = end / bins if end > 0 else 1.0
        rate = [(b - a) / span for a, b in itertools.pairwise(counts)]
        throughput.stairs(rate, edges, label=name, baseline=None)
        fill.plot(timeline.times, [100 * f for f in timeline.fill(i)], label=name)
        busy_times, percents = busy_percent(report, i)
        (line,) = busy.step(
            busy_times, percents, where="pre", label=f"{name} (of {timeline.workers[i]})"
        )
        step_times, worker_counts = worker_steps(report, name, end)
        if step_times:
            if counts_axis is None:
                counts_axis = busy.twinx()
                counts_axis.set_ylabel("workers (autoscaled)")
            counts_axis.step(
                step_times,
                worker_counts,
                where="post",
                linestyle="--",
                color=line.get_color(),
                label=f"{name} workers (autoscaled)",
            )
    throughput.set_ylabel("items/s taken in")
    fill.set_ylabel("input channel fill (%)")
    fill.set_ylim(0, 105)
    busy.set_ylabel("busy workers (% of the layer's)")
    busy.set_ylim(0, 105)
    if counts_axis is not None:
        counts_axis.set_ylim(bottom=0)
        counts_axis.legend(loc="upper left", fontsize="small")
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
