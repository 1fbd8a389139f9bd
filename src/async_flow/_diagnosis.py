"""Which stage held a run back, and what to change: the report's diagnosis.

Every layer's worker-time splits into busy (working on items), waiting for input (an empty input
channel) and blocked on output (a full output channel). In a pipeline whose throughput is limited
by one stage, that stage is busy nearly all the time, the stages above it are blocked on their
output and the stages below it wait for input. The source counts as a stage too: it is "busy"
while it produces items and is neither blocked on the first channel nor finished. So does the
code reading an :func:`~async_flow.open_stream`: the last layer is blocked on its output only when
that reader takes items more slowly than they come (a collector layer has no output channel).
Start-up is a stage of its own: the time before the source is first read (worker processes or
Ray actors starting, a checkpoint's ledger opening), in which no stage can work. A run that spent
most of its time there was too short to say what limits its throughput; it is not the source's
doing.
A layer with an :class:`~async_flow.Limit` holds the run back while it waits on the limit as
surely as while it works: that wait counts toward the stage, and when it is most of it the
diagnosis names the limit, not the workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._stats import LayerStats, SourceStats

__all__ = ("Bottleneck", "diagnose")

#: Below this share of busy time no stage is called the bottleneck.
SATURATED = 0.5
#: A neighbour blocked or waiting at least this share of the run is mentioned as evidence.
EVIDENCE = 0.2


@dataclass(frozen=True, slots=True)
class Bottleneck:
    """The stage that limited a run's throughput, with the evidence and what to change.

    ``stage`` is a layer's name, ``"source"``, ``"reader"`` (the code reading the stream of an
    :func:`~async_flow.open_stream`) or ``"startup"`` (starting the workers and opening the
    checkpoint, before the source was first read); ``index`` is the layer's position (``-1``
    for the source, the number of layers for the reader, ``-2`` for the start-up). Both are
    ``None`` when no stage was busy most of the run (the limit was then per-item overhead, or
    the run was too short to tell) or when there was nothing to do (every source item was
    already committed by an earlier run).
    ``busy_fraction`` is the share of the stage's capacity that was in use (for the start-up:
    its share of the run). ``advice`` is one
    sentence meant for a person, e.g. ``"'score' was busy 97% of the run while 'read' was blocked
    on its output 88%: give 'score' more workers"``.

    Example::

        >>> import time, async_flow as af
        >>> report = af.run(range(20), af.Layer(lambda x: time.sleep(0.005), name="slow"))
        >>> report.bottleneck.stage
        'slow'
    """

    stage: str | None
    index: int | None
    busy_fraction: float
    advice: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {
            "stage": self.stage,
            "index": self.index,
            "busy_fraction": self.busy_fraction,
            "advice": self.advice,
        }

    def __str__(self) -> str:
        return self.advice


def source_busy_fraction(source: SourceStats) -> float:
    """Share of the run the source spent producing (not blocked, not finished)."""
    if source.elapsed <= 0:
        return 0.0
    running = source.elapsed if source.running_seconds is None else source.running_seconds
    # The source is not read during the start-up.
    producing = max(0.0, running - source.startup_seconds - source.blocked_seconds)
    return min(1.0, producing / source.elapsed)


def _more_workers(stats: LayerStats, last: bool, above: LayerStats | None) -> str:
    name = f"{stats.name!r}"
    cpus = os.cpu_count() or 1
    if stats.backend == "process" and stats.workers >= cpus:
        return (
            f"{name} already has a worker per CPU ({stats.workers} on {cpus}): make it cheaper"
            " per item, or spread it over machines with backend='ray'"
        )
    advice = f"give {name} more workers"
    if stats.backend == "thread":
        advice += " (or backend='process' if it is CPU-bound)"
    if last and above is not None and 2 * above.emitted <= above.received:
        # The layer above already groups items (af.batch, or a function that does).
        advice += ", or give it larger batches so it does more per call"
    elif last:
        advice += ", or batch its input with af.batch() so it does more per call"
    return advice


def startup_fraction(source: SourceStats) -> float:
    """Share of the run spent before the source was first read."""
    if source.elapsed <= 0:
        return 0.0
    return min(1.0, source.startup_seconds / source.elapsed)


def _startup_advice(layers: tuple[LayerStats, ...], share: float) -> str:
    slow = sorted({s.backend for s in layers if s.backend in ("process", "ray")})
    what = {"process": "worker processes", "ray": "Ray actors"}
    starting = " and ".join(what[b] for b in slow) or "the workers, the checkpoint"
    advice = (
        f"starting the run ({starting}, a checkpoint) took {share:.0%} of it, before the source"
        " was first read: the run was too short to tell what limits its throughput; give it more"
        " items per run"
    )
    if slow:
        advice += ", or a backend that starts faster ('thread' or 'async') if the work is light"
    return advice


def _held(stats: LayerStats) -> float:
    """Share of a layer's worker-time spent holding the run back: working, or waiting on its
    limit."""
    return min(1.0, stats.busy_fraction + stats.limit_fraction)


def _limit_advice(stats: LayerStats) -> str:
    """A layer that its limit, not its workers, held back."""
    rate = stats.rate_wait_seconds >= stats.concurrency_wait_seconds
    which = "rate limit" if rate else "concurrency limit"
    knob = "rate" if rate else "concurrency"
    return (
        f"{stats.name!r} waited on its {which} {stats.limit_fraction:.0%} of the run: the limit,"
        f" not its workers, held the run back (more workers would only wait too); raise the"
        f" limit's {knob} if the service allows it"
    )


def diagnose(layers: tuple[LayerStats, ...], source: SourceStats) -> Bottleneck | None:
    """Name the stage that limited throughput, or ``None`` when there is nothing to judge."""
    if not layers:
        return None
    if source.already_committed and source.already_committed >= source.produced:
        return Bottleneck(
            stage=None,
            index=None,
            busy_fraction=0.0,
            advice=(
                f"nothing to do: all {source.already_committed} source items were already"
                " committed by an earlier run (the checkpoint skipped them)"
            ),
        )
    stages: list[tuple[int, float]] = [(-2, startup_fraction(source))]
    stages.append((-1, source_busy_fraction(source)))
    stages.extend((i, _held(s)) for i, s in enumerate(layers))
    # The stream's reader: it held the last layer up for as long as that layer was blocked.
    stages.append((len(layers), layers[-1].blocked_fraction))
    # The busiest stage is the limit; on a tie the one further down the pipeline, whose
    # slowness is what made the ones above it wait.
    index, busy = max(stages, key=lambda s: (s[1], s[0]))
    if busy < SATURATED:
        return Bottleneck(
            stage=None,
            index=None,
            busy_fraction=busy,
            advice=(
                f"no stage was busy more than {SATURATED:.0%} of the run: throughput was limited"
                " by per-item overhead, or the run was too short to tell"
            ),
        )
    if index == -2:
        return Bottleneck("startup", -2, busy, _startup_advice(layers, busy))
    if index == -1:
        first = layers[0]
        advice = f"the source was producing {busy:.0%} of the run"
        if first.wait_fraction >= EVIDENCE:
            advice += f" while {first.name!r} waited for input {first.wait_fraction:.0%}"
        advice += (
            ": make the source faster (read ahead, or split it and read the parts at once with"
            " af.merge())"
        )
        return Bottleneck("source", -1, busy, advice)
    if index == len(layers):
        last = layers[-1]
        advice = (
            f"the code reading the stream was the limit: {last.name!r} was blocked on its output"
            f" {busy:.0%} of the run: do less per item in the loop that reads the stream, or move"
            " that work into a layer of its own"
        )
        return Bottleneck("reader", index, busy, advice)
    stats = layers[index]
    above = layers[index - 1] if index > 0 else None
    if stats.limit_fraction >= stats.busy_fraction:  # limit hook
        return Bottleneck(stats.name, index, busy, _limit_advice(stats))
    advice = f"{stats.name!r} was busy {busy:.0%} of the run"
    if above is None:
        if source.blocked_fraction >= EVIDENCE:
            advice += f" while the source was blocked on its output {source.blocked_fraction:.0%}"
    elif above.blocked_fraction >= EVIDENCE:
        advice += f" while {above.name!r} was blocked on its output {above.blocked_fraction:.0%}"
    advice += ": " + _more_workers(stats, index == len(layers) - 1, above)
    return Bottleneck(stats.name, index, busy, advice)
