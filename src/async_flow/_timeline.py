"""The counters of a run sampled over time, in bounded memory: what ``Report.plot`` draws.

The run's sampler records one sample per tick. Cumulative counters (items received, busy
worker-seconds) lose nothing when samples are dropped: the throughput and the average number of
busy workers between two kept samples are still exact. When the buffer is full, neighbouring
samples are merged pairwise (the gauge, channel fill, keeps the larger value) and from then on
only every other tick is recorded, so a run of any length keeps at most ``capacity`` samples.
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
    ``busy_seconds[i][k]`` worker-seconds spent on items so far, ``queued[i][k]`` items waiting in
    its input channel. :meth:`throughput`, :meth:`fill` and :meth:`busy_workers` turn these into
    the series :meth:`Report.plot <async_flow.Report.plot>` draws.

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

    def _rates(self, series: tuple[float, ...] | tuple[int, ...]) -> list[float]:
        out: list[float] = []
        previous_t, previous_v = 0.0, 0.0
        for t, v in zip(self.times, series, strict=True):
            dt = t - previous_t
            out.append((v - previous_v) / dt if dt > 0 else 0.0)
            previous_t, previous_v = t, v
        return out

    def throughput(self, layer: int) -> list[float]:
        """Items per second taken in by ``layer`` between consecutive samples."""
        return self._rates(self.received[layer])

    def busy_workers(self, layer: int) -> list[float]:
        """Average number of ``layer``'s workers busy between consecutive samples."""
        return self._rates(self.busy_seconds[layer])

    def fill(self, layer: int) -> list[float]:
        """How full ``layer``'s input channel was at each sample (0..1)."""
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
        }


class TimelineRecorder:
    """Collects samples for a :class:`Timeline`, halving its resolution when it fills up."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self._samples: list[tuple[float, tuple[LayerStats, ...]]] = []
        self._queued: list[list[int]] = []
        self._stride = 1
        self._ticks = 0

    @property
    def stride(self) -> int:
        """Record one tick in this many (doubles each time the buffer fills)."""
        return self._stride

    def __len__(self) -> int:
        return len(self._samples)

    def tick(self, t: float, layers: tuple[LayerStats, ...]) -> None:
        """Offer the sample taken at ``t`` seconds; kept if this tick falls on the stride."""
        self._ticks += 1
        if self._ticks % self._stride == 0:
            self._append(t, layers)
        elif self._queued:
            # A skipped tick still counts towards the peak fill of the last kept sample.
            last = self._queued[-1]
            for i, s in enumerate(layers):
                last[i] = max(last[i], s.queued)

    def final(self, t: float, layers: tuple[LayerStats, ...]) -> None:
        """Record the last sample, whatever the stride."""
        if self._samples and self._samples[-1][0] >= t:
            return
        self._append(t, layers)

    def _append(self, t: float, layers: tuple[LayerStats, ...]) -> None:
        if len(self._samples) >= self.capacity:
            self._halve()
        self._samples.append((t, layers))
        self._queued.append([s.queued for s in layers])

    def _halve(self) -> None:
        samples, queued = self._samples, self._queued
        kept = [samples[k + 1] for k in range(0, len(samples) - 1, 2)]
        peaks = [
            [max(a, b) for a, b in zip(queued[k], queued[k + 1], strict=True)]
            for k in range(0, len(samples) - 1, 2)
        ]
        if len(samples) % 2:
            kept.append(samples[-1])
            peaks.append(queued[-1])
        self._samples, self._queued = kept, peaks
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
        queued = list(self._queued)
        if now is not None and (not samples or samples[-1][0] < now[0]):
            samples.append(now)
            queued.append([s.queued for s in now[1]])
        n = len(names)
        return Timeline(
            layers=names,
            workers=workers,
            maxsize=maxsize,
            times=tuple(t for t, _ in samples),
            received=tuple(tuple(s[i].received for _, s in samples) for i in range(n)),
            busy_seconds=tuple(tuple(s[i].busy_seconds for _, s in samples) for i in range(n)),
            queued=tuple(tuple(q[i] for q in queued) for i in range(n)),
        )
