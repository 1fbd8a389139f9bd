"""The run's sampler: one task that reads the counters at an interval.

It keeps the time series behind ``Report.timeline`` and feeds the progress view, if any. It is
started in the run's task group next to the source and the layers, ends once they all have, and
is cancelled with them when the run fails: it owns nothing that could outlive the run.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from ._progress import LayerProgress, ProgressSnapshot, ProgressView
from ._stats import LayerStats
from ._timeline import Timeline, TimelineRecorder

__all__ = ("Sampler",)

#: Seconds between two samples of the timeline (a faster progress view samples faster).
TICK = 0.1
#: Rates shown while running are measured over about this many seconds.
RATE_WINDOW = 3.0


class Sampler:
    """Samples a run's layers; see the module docstring."""

    def __init__(
        self,
        read: Callable[[], tuple[int, tuple[LayerStats, ...]]],
        view: ProgressView | None,
        total: int | None,
    ) -> None:
        #: Returns (items the source produced, a snapshot of every layer).
        self._read = read
        self.view = view
        self.total = total
        self.recorder = TimelineRecorder()
        self._started = perf_counter()
        self._window: deque[tuple[float, tuple[int, ...]]] = deque()
        self._last: tuple[int, tuple[LayerStats, ...]] | None = None
        #: Source items a checkpoint skipped as already committed (set by a run that has one).
        self.count_committed: Callable[[], int] = _nothing
        #: Set once a signal has stopped the source: snapshots say "draining", the last one
        #: "interrupted".
        self.interrupted = False

    def restart_clock(self) -> None:
        """Count time from now (the run has just started)."""
        self._started = perf_counter()

    async def run(self, work: Sequence[asyncio.Future[Any]]) -> None:
        """Sample until every task in ``work`` is done; then record and show the last sample."""
        view = self.view
        tick = TICK if view is None else min(TICK, view.interval)
        status = "running"
        opened = False
        try:
            if view is not None:
                view.open()
                opened = True
            next_update = 0.0
            pending = set(work)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=tick)
                if not pending:
                    break
                t, snapshot = self.sample()
                if view is not None and t >= next_update:
                    view.update(snapshot)
                    next_update = t + view.interval
            status = self._ended(_outcome(work))
        except asyncio.CancelledError:
            status = self._ended(_outcome(work, cancelled=True))
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            t = perf_counter() - self._started
            produced, layers = self._read()
            self.recorder.final(t, layers)
            if opened and view is not None:
                view.close(self._snapshot(t, produced, layers, status))

    def _ended(self, status: str) -> str:
        # A drained run completes and an aborted one is cancelled; both were interrupted.
        return "interrupted" if self.interrupted and status != "failed" else status

    def sample(self) -> tuple[float, ProgressSnapshot]:
        """Read the counters now: record them, and return the progress snapshot."""
        t = perf_counter() - self._started
        produced, layers = self._read()
        self.recorder.tick(t, layers)
        status = "draining" if self.interrupted else "running"
        return t, self._snapshot(t, produced, layers, status)

    def timeline(self) -> Timeline:
        """The samples so far, with the counters as they are now as the last one."""
        _, layers = self._read()
        return self.recorder.timeline(
            tuple(s.name for s in layers),
            tuple(s.workers for s in layers),
            tuple(s.maxsize for s in layers),
            now=(perf_counter() - self._started, layers),
        )

    def _rates(self, t: float, layers: tuple[LayerStats, ...]) -> list[float]:
        window = self._window
        counts = tuple(s.received for s in layers)
        window.append((t, counts))
        while len(window) > 2 and t - window[1][0] >= RATE_WINDOW:
            window.popleft()
        t0, c0 = window[0]
        dt = t - t0
        if dt <= 0:
            return [s.rate for s in layers]
        return [(c - c_old) / dt for c, c_old in zip(counts, c0, strict=True)]

    def _snapshot(
        self, t: float, produced: int, layers: tuple[LayerStats, ...], status: str
    ) -> ProgressSnapshot:
        if status in ("running", "draining"):
            rates = self._rates(t, layers)
        else:
            rates = [s.received / t if t > 0 else 0.0 for s in layers]
        rows = []
        committed = self.count_committed()
        # Items an earlier run committed never reach the layers: they are not left to do.
        expected: float | None = None if self.total is None else max(0, self.total - committed)
        etas: list[float] = []
        for s, rate in zip(layers, rates, strict=True):
            total = None if expected is None else max(s.received, round(expected))
            eta = None
            if total is not None:
                left = total - s.received
                eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
                if eta is not None:
                    etas.append(eta)
            rows.append(
                LayerProgress(
                    name=s.name,
                    backend=s.backend,
                    workers=s.workers,
                    done=s.received,
                    total=total,
                    emitted=s.emitted,
                    errors=s.failed + s.skipped,
                    rate=rate,
                    queued=s.queued,
                    maxsize=s.maxsize,
                    # A backend may keep several batches in flight per worker.
                    busy_workers=min(s.busy_workers, s.workers),
                    eta=eta,
                    limit_seconds=s.limit_seconds if s.limited else None,
                )
            )
            # What the next layer should expect: this layer's share of outputs per input so far.
            if expected is not None and s.received > 0:
                expected = expected * s.emitted / s.received
            elif expected is not None and s.received == 0:
                expected = None
        eta_all = max(etas) if etas and len(etas) == len(rows) else None
        return ProgressSnapshot(
            elapsed=t,
            status=status,
            produced=produced,
            total=self.total,
            eta=eta_all,
            layers=tuple(rows),
            already_committed=committed,
        )


def _nothing() -> int:
    return 0


def _outcome(work: Sequence[asyncio.Future[Any]], cancelled: bool = False) -> str:
    for task in work:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return "failed"
    return "cancelled" if cancelled else "completed"
