"""Per-layer counters (mutable, updated by the runtime once per batch) and their frozen snapshots.

The runtime bumps plain attributes of a :class:`LayerCounters`; everything that shows a run (live
progress, callbacks, the report, the picture) reads :class:`LayerStats` snapshots taken from them,
so none of it sits on the per-item path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ("LayerCounters", "LayerStats", "SourceStats")


class LayerCounters:
    """The live counters of one layer in one run (runtime-internal)."""

    __slots__ = (
        "busy_seconds",
        "busy_workers",
        "concurrency_wait_seconds",
        "dead_letters",
        "emitted",
        "failed",
        "rate_wait_seconds",
        "received",
        "restarts",
        "retried",
        "skipped",
        "timeouts",
        "workers",
    )

    def __init__(self, workers: int) -> None:
        self.received = 0
        self.emitted = 0
        self.failed = 0
        self.skipped = 0
        self.retried = 0
        self.restarts = 0
        self.dead_letters = 0
        self.timeouts = 0
        self.busy_seconds = 0.0
        self.busy_workers = 0
        self.workers = workers
        # Time waited on the layer's af.Limit (see _limit), summed over its workers.
        self.rate_wait_seconds = 0.0
        self.concurrency_wait_seconds = 0.0


@dataclass(frozen=True, slots=True)
class LayerStats:
    """A frozen snapshot of one layer's counters.

    Times are summed over the layer's workers: ``busy_seconds / (workers * elapsed)`` is the share
    of the layer's capacity that was used. ``wait_seconds`` is time its workers spent waiting for
    input (an empty input channel), ``blocked_seconds`` time they spent suspended on a full output
    channel.

    Every item a layer receives ends one way: it completes (its outputs, one for a plain
    function, zero or more for a generator, count in ``emitted``), it is ``skipped``, or it
    ``failed`` (dead-lettered, or it stopped the run). So for a one-output layer that ran to the
    end, ``received == emitted + skipped + failed``. ``dead_letters`` is the part of ``failed``
    recorded in the report; ``retried`` counts re-runs (not items); ``timeouts`` counts every
    attempt that ran out of time, retried or not.

    A layer with an :class:`~async_flow.Limit` (``limited``) counts the time its items waited for
    a token in ``rate_wait_seconds`` and for a concurrency unit in ``concurrency_wait_seconds``
    (summed over its workers, not part of ``busy_seconds``).

    Example::

        >>> import async_flow as af
        >>> stats = af.run(range(10), af.Layer(str, 2, name="text")).layer("text")
        >>> stats.received, stats.emitted, stats.workers, 0 <= stats.busy_fraction <= 1
        (10, 10, 2, True)
    """

    name: str
    backend: str
    workers: int
    received: int
    emitted: int
    failed: int
    skipped: int
    retried: int
    restarts: int
    busy_seconds: float
    wait_seconds: float
    blocked_seconds: float
    busy_workers: int
    queued: int
    maxsize: int
    elapsed: float
    dead_letters: int = 0
    timeouts: int = 0
    #: Worker count integrated over time (it differs from ``workers * elapsed`` when the layer
    #: was autoscaled); 0 when unknown.
    worker_seconds: float = 0.0
    #: The layer has an af.Limit; the two waits on it, summed over its workers.
    limited: bool = False
    rate_wait_seconds: float = 0.0
    concurrency_wait_seconds: float = 0.0

    @property
    def limit_seconds(self) -> float:
        """Worker-time spent waiting on the layer's limit (rate and concurrency)."""
        return self.rate_wait_seconds + self.concurrency_wait_seconds

    @property
    def limit_fraction(self) -> float:
        """Share of the layer's worker-time spent waiting on its limit (0..1)."""
        capacity = self.capacity_seconds
        return min(1.0, self.limit_seconds / capacity) if capacity > 0 else 0.0

    @property
    def capacity_seconds(self) -> float:
        """The worker-time the layer had: ``worker_seconds``, else ``workers * elapsed``."""
        return self.worker_seconds if self.worker_seconds > 0 else self.workers * self.elapsed

    @property
    def busy_fraction(self) -> float:
        """Share of the layer's worker-time spent working on items (0..1)."""
        capacity = self.capacity_seconds
        return min(1.0, max(0.0, self.busy_seconds) / capacity) if capacity > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """Share of the layer's worker-time spent waiting for input (0..1)."""
        capacity = self.capacity_seconds
        return min(1.0, self.wait_seconds / capacity) if capacity > 0 else 0.0

    @property
    def blocked_fraction(self) -> float:
        """Share of the layer's worker-time spent blocked on a full output channel (0..1)."""
        capacity = self.capacity_seconds
        return min(1.0, self.blocked_seconds / capacity) if capacity > 0 else 0.0

    @property
    def rate(self) -> float:
        """Items received per second over the snapshot's elapsed time."""
        return self.received / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A frozen snapshot of the source: items produced and time blocked on the first channel.

    ``running_seconds`` is how long the source ran before it was exhausted or stopped (``None``:
    as long as the run), counted from the start of the run. ``startup_seconds`` is the part of
    the run before the source was first read: the workers starting (processes, Ray actors) and
    a checkpoint's ledger opening. ``already_committed`` counts the source items (part of
    ``produced``) that a :class:`~async_flow.Checkpoint` skipped because an earlier run had
    committed them: they never reach the layers.

    Example::

        >>> import async_flow as af
        >>> source = af.run(range(10), af.Layer(str)).source
        >>> source.produced, source.exhausted
        (10, True)
    """

    produced: int
    blocked_seconds: float
    elapsed: float
    exhausted: bool
    running_seconds: float | None = None
    startup_seconds: float = 0.0
    already_committed: int = 0

    @property
    def blocked_fraction(self) -> float:
        """Share of the run the source spent blocked on a full first channel (0..1)."""
        return min(1.0, self.blocked_seconds / self.elapsed) if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return asdict(self)
