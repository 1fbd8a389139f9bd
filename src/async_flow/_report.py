"""The end-of-run report: what ran, what failed, how busy each layer was."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._autoscale import ScalingEvent
from ._diagnosis import Bottleneck, diagnose
from ._stats import LayerStats, SourceStats
from ._timeline import Timeline

__all__ = ("Failure", "Report")


def _legend(layers: tuple[LayerStats, ...]) -> str:
    """What the three shares of the table mean, and why they may add up to more than 100%."""
    legend = (
        "busy/waiting/blocked: share of each layer's worker-time on items, waiting for input,"
        " blocked on output"
    )
    over = [
        s.name
        for s in layers
        # Rounded as the table shows them: a sum the reader sees pass 100%.
        if round(100 * s.busy_fraction)
        + round(100 * s.wait_fraction)
        + round(100 * s.blocked_fraction)
        > 100
    ]
    if over:
        names = ", ".join(repr(n) for n in over)
        legend += (
            f"; they overlap for {names}: a worker with a second batch in flight (processes, Ray"
            " actors) waits for input while the first one is worked on, so the sum passes 100%"
        )
    return legend


@dataclass(frozen=True, slots=True)
class Failure:
    """One item a layer dead-lettered (see :class:`~async_flow.DeadLetter`), as plain data.

    ``item`` is the item's bounded ``repr``; the item itself goes to the dead-letter sink.

    Example::

        >>> import async_flow as af
        >>> af.Failure("parse", "'x'", "ValueError", "not a number").to_dict()["layer"]
        'parse'
    """

    layer: str
    item: str
    error_type: str
    message: str
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {
            "layer": self.layer,
            "item": self.item,
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
        }


@dataclass(frozen=True, slots=True)
class Report:
    """What a pipeline run did: one :class:`LayerStats` per layer, in order.

    ``status`` is ``"completed"``, ``"failed"``, ``"cancelled"`` or ``"interrupted"`` (a signal
    stopped the run: the report comes with :class:`~async_flow.Interrupted`). ``failures`` holds
    the dead letters of every layer (see :class:`~async_flow.DeadLetter`).
    ``scaling`` lists the worker-count decisions of autoscaled layers (see :class:`Auto`), oldest
    first; :meth:`workers_over_time` turns them into one layer's steps.
    :attr:`bottleneck` names the stage that limited throughput and what to change;
    :attr:`timeline` holds the counters sampled during the run, which :meth:`plot` draws.

    Example::

        >>> import async_flow as af
        >>> report = af.run(range(10), af.Layer(lambda x: x * 2, name="double"))
        >>> report.layers[0].name, report.layers[0].received, report.layers[0].emitted
        ('double', 10, 10)
    """

    layers: tuple[LayerStats, ...]
    source: SourceStats
    elapsed: float
    status: str = "completed"
    failures: tuple[Failure, ...] = field(default_factory=tuple)
    scaling: tuple[ScalingEvent, ...] = field(default_factory=tuple)
    timeline: Timeline | None = None

    @property
    def bottleneck(self) -> Bottleneck | None:
        """The stage that limited throughput, with what to change (``None`` without layers)."""
        return diagnose(self.layers, self.source)

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None) -> None:
        """Write a PNG of the run to ``path``: per layer, throughput, channel fill and busy workers.

        Needs matplotlib (``pip install 'async_flow[plot]'``).

        Example::

            >>> import async_flow as af
            >>> af.run(range(100), af.Layer(str)).plot("run.png")  # doctest: +SKIP
        """
        from ._plot import plot_report

        plot_report(self, path, title=title)

    def layer(self, name: str) -> LayerStats:
        """The stats of the layer called ``name`` (``KeyError`` if there is none)."""
        for stats in self.layers:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def workers_over_time(self, name: str) -> list[tuple[float, int]]:
        """``(seconds since the start, worker count)`` at each change of autoscaled layer ``name``.

        The first point is the starting count; the count holds until the next point. Empty for a
        layer with a fixed count.
        """
        points: list[tuple[float, int]] = []
        for event in self.scaling:
            if event.layer == name and (event.change or not points):
                points.append((event.time, event.workers))
        return points

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {
            "status": self.status,
            "elapsed": self.elapsed,
            "source": self.source.to_dict(),
            "layers": [s.to_dict() for s in self.layers],
            "failures": [f.to_dict() for f in self.failures],
            "scaling": [e.to_dict() for e in self.scaling],
            "bottleneck": None if (b := self.bottleneck) is None else b.to_dict(),
            "timeline": None if self.timeline is None else self.timeline.to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        """The report as a JSON document (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        # Retries and dead letters get a column only in a run that had some.
        columns: list[tuple[str, Callable[[LayerStats], int]]] = [
            ("failed", lambda s: s.failed),
            ("skipped", lambda s: s.skipped),
        ]
        if any(s.retried for s in self.layers):
            columns.append(("retried", lambda s: s.retried))
        if any(s.dead_letters for s in self.layers):
            columns.append(("dead-lettered", lambda s: s.dead_letters))
        head: tuple[str, ...] = (
            "layer",
            "backend",
            "in",
            "out",
            *(name for name, _ in columns),
            "busy",
            "waiting",
            "blocked",
        )
        rows: list[tuple[str, ...]] = [
            (
                s.name,
                f"{s.backend} x{s.workers}",
                str(s.received),
                str(s.emitted),
                *(str(count(s)) for _, count in columns),
                f"{s.busy_fraction:.0%}",
                f"{s.wait_fraction:.0%}",
                f"{s.blocked_fraction:.0%}",
            )
            for s in self.layers
        ]
        if any(s.limited for s in self.layers):  # limit hook: time waited on the limit
            head = (*head, "limited")
            rows = [
                (*r, f"{s.limit_fraction:.0%}" if s.limited else "-")
                for r, s in zip(rows, self.layers, strict=True)
            ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def line(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join([first, *rest])

        title = (
            f"async_flow run {self.status} in {self.elapsed:.2f}s:"
            f" {self.source.produced} source items"
        )
        if committed := self.source.already_committed:
            title += f" ({committed} already committed by an earlier run, skipped)"
        if self.layers:
            out = [title, line(head), *(line(r) for r in rows), _legend(self.layers)]
        else:
            out = [title, "no layers: the source was read to its end and its items dropped"]
        for name in dict.fromkeys(e.layer for e in self.scaling):
            steps = self.workers_over_time(name)
            counts = [n for _, n in steps]
            out.append(
                f"autoscaled {name}: {counts[0]} -> {counts[-1]} workers"
                f" (min {min(counts)}, max {max(counts)}, {len(steps) - 1} change(s))"
            )
        if (bottleneck := self.bottleneck) is not None:
            out.append(f"bottleneck: {bottleneck.advice}")
        if self.failures:
            out.append(f"{len(self.failures)} failed item(s):")
            out.extend(
                f"  {f.layer}: {f.item}: {f.error_type}: {f.message}" for f in self.failures[:10]
            )
        return "\n".join(out)
