"""The counters of a run sampled over time, in bounded memory: what ``Report.plot`` draws.

The run's sampler records one sample per tick. Cumulative counters (items received, busy
worker-seconds) lose nothing when samples are dropped: the throughput between two kept samples is
still exact. The gauges are summarised over the ticks a sample stands for: channel fill by its
peak, busy workers by their mean. When the buffer is full, neighbouring samples are merged
pairwise and from then on only every other tick is recorded, so a run of any length keeps at most
``capacity`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._stats import LayerStats

__all__ = ("Timeline", "TimelineRecorder")

#: The most samples a timeline keeps.
DEFAULT_CAPACITY = 512


@dataclass(frozen=True, slots=True)
class Timeline:
    """Per-layer counters sampled during a run (seconds since the start in :attr:`times`).

    For layer ``i`` and sample ``k``: ``received[i][k]`` items taken in so far,
    ``busy_seconds[i][k]`` worker-seconds spent on items so far (credited when a batch ends),
    ``queued[i][k]`` the most items waiting in its input channel since the previous sample, and
    ``busy[i][k]`` the mean number of its workers holding an item since the previous sample.
    :meth:`throughput`, :meth:`fill` and :meth:`busy_workers` give the series
    :meth:`Report.plot <async_flow.Report.plot>` draws.

    Example::

        >>> import async_flow as af
        >>> timeline = af.run(range(100), af.Layer(str, name="text")).timeline
        >>> timeline.layers, timeline.received[0][-1]
        (('text',), 100)
    """

    layers: tuple[str, ...]
    workers: tuple[int, ...]
    maxsize: tuple[int, ...]
    times: tuple[float, ...]
    received: tuple[tuple[int, ...], ...]
    busy_seconds: tuple[tuple[float, ...], ...]
    queued: tuple[tuple[int, ...], ...]
    busy: tuple[tuple[float, ...], ...]

    def throughput(self, layer: int) -> list[float]:
        """Items per second taken in by ``layer`` between consecutive samples."""
        out: list[float] = []
        previous_t, previous_v = 0.0, 0
        for t, v in zip(self.times, self.received[layer], strict=True):
            dt = t - previous_t
            out.append((v - previous_v) / dt if dt > 0 else 0.0)
            previous_t, previous_v = t, v
        return out

    def busy_workers(self, layer: int) -> list[float]:
        """Mean number of ``layer``'s workers busy over each sample's span."""
        return list(self.busy[layer])

    def fill(self, layer: int) -> list[float]:
        """How full ``layer``'s input channel got over each sample's span (0..1)."""
        size = self.maxsize[layer]
        return [q / size for q in self.queued[layer]]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {
            "layers": list(self.layers),
            "workers": list(self.workers),
            "maxsize": list(self.maxsize),
            "times": list(self.times),
            "received": [list(r) for r in self.received],
            "busy_seconds": [list(b) for b in self.busy_seconds],
            "queued": [list(q) for q in self.queued],
            "busy": [list(b) for b in self.busy],
        }


class _Sample:
    """One kept sample: the counters at its time, and its gauges summarised over its span."""

    __slots__ = ("busy", "layers", "queued", "t")

    def __init__(
        self, t: float, layers: tuple[LayerStats, ...], queued: list[int], busy: list[float]
    ) -> None:
        self.t = t
        self.layers = layers
        self.queued = queued
        self.busy = busy


class TimelineRecorder:
    """Collects samples for a :class:`Timeline`, halving its resolution when it fills up."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self._samples: list[_Sample] = []
        self._stride = 1
        self._ticks = 0
        # The gauges of the ticks since the last kept sample.
        self._peak: list[int] = []
        self._busy_sum: list[float] = []
        self._pending = 0

    @property
    def stride(self) -> int:
        """Record one tick in this many (doubles each time the buffer fills)."""
        return self._stride

    def __len__(self) -> int:
        return len(self._samples)

    def _accumulate(self, layers: tuple[LayerStats, ...]) -> None:
        # A backend may keep several batches in flight per worker: count busy workers.
        if not self._pending:
            self._peak = [s.queued for s in layers]
            self._busy_sum = [float(min(s.busy_workers, s.workers)) for s in layers]
        else:
            for i, s in enumerate(layers):
                self._peak[i] = max(self._peak[i], s.queued)
                self._busy_sum[i] += min(s.busy_workers, s.workers)
        self._pending += 1

    def tick(self, t: float, layers: tuple[LayerStats, ...]) -> None:
        """Offer the counters read at ``t`` seconds; kept if this tick falls on the stride."""
        self._ticks += 1
        self._accumulate(layers)
        if self._ticks % self._stride == 0:
            self._keep(t, layers)

    def final(self, t: float, layers: tuple[LayerStats, ...]) -> None:
        """Record the last sample, whatever the stride."""
        if self._samples and self._samples[-1].t >= t:
            return
        self._accumulate(layers)
        self._keep(t, layers)

    def _keep(self, t: float, layers: tuple[LayerStats, ...]) -> None:
        if len(self._samples) >= self.capacity:
            self._halve()
        n = self._pending
        self._samples.append(_Sample(t, layers, self._peak, [b / n for b in self._busy_sum]))
        self._pending = 0

    def _halve(self) -> None:
        samples = self._samples
        kept = []
        for k in range(0, len(samples) - 1, 2):
            a, b = samples[k], samples[k + 1]
            queued = [max(x, y) for x, y in zip(a.queued, b.queued, strict=True)]
            busy = [(x + y) / 2 for x, y in zip(a.busy, b.busy, strict=True)]
            kept.append(_Sample(b.t, b.layers, queued, busy))
        if len(samples) % 2:
            kept.append(samples[-1])
        self._samples = kept
        self._stride *= 2

    def timeline(
        self,
        names: tuple[str, ...],
        workers: tuple[int, ...],
        maxsize: tuple[int, ...],
        now: tuple[float, tuple[LayerStats, ...]] | None = None,
    ) -> Timeline:
        """The samples so far as a frozen :class:`Timeline`, ending with ``now`` if it is later."""
        samples = list(self._samples)
        if now is not None and (not samples or samples[-1].t < now[0]):
            t, layers = now
            samples.append(
                _Sample(
                    t,
                    layers,
                    [s.queued for s in layers],
                    [float(min(s.busy_workers, s.workers)) for s in layers],
                )
            )
        n = len(names)
        return Timeline(
            layers=names,
            workers=workers,
            maxsize=maxsize,
            times=tuple(s.t for s in samples),
            received=tuple(tuple(s.layers[i].received for s in samples) for i in range(n)),
            busy_seconds=tuple(tuple(s.layers[i].busy_seconds for s in samples) for i in range(n)),
            queued=tuple(tuple(s.queued[i] for s in samples) for i in range(n)),
            busy=tuple(tuple(s.busy[i] for s in samples) for i in range(n)),
        )
