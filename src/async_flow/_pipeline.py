"""Building and owning one run: :func:`pipeline`, :func:`run` and :func:`open_stream`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from time import perf_counter
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from ._autoscale import Autoscaler, current_clock
from ._channel import EndOfChannel, ReceiveChannel, SendChannel, open_channel
from ._checkpoint import Checkpoint, Lineage
from ._errors import Interrupted
from ._layer import DEFAULT_MAXSIZE, Layer, named_by_position
from ._progress import ProgressOption, resolve_progress
from ._report import Report
from ._runtime import CALLER_WINDOW, LayerRun
from ._sampler import Sampler
from ._signals import install_exit_hook, watch_signals
from ._source import Merge, SourceCounters, _check_source, feed, source_length
from ._stats import LayerStats, SourceStats
from ._taskgroup import Carried, TaskGroup, finish
from ._tracebacks import hide_library_frames, shown_error, user_facing

__all__ = ("Stream", "open_stream", "pipeline", "run")

T = TypeVar("T")

# --- BEGIN GENERATED chain (scripts/gen_overloads.py; do not edit) ---
# The item types along a chain: the source gives _T0, layer k _Tk.
_T0 = TypeVar("_T0")
_T1 = TypeVar("_T1")
_T2 = TypeVar("_T2")
_T3 = TypeVar("_T3")
_T4 = TypeVar("_T4")
_T5 = TypeVar("_T5")
_T6 = TypeVar("_T6")
_T7 = TypeVar("_T7")
_T8 = TypeVar("_T8")
# --- END GENERATED chain ---

Source = Iterable[Any] | AsyncIterable[Any] | Merge[Any]
_L = Layer[Any, Any]

#: Seconds a run drains after the first SIGINT/SIGTERM before it aborts.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: Seconds between two lines on stderr saying how a drain goes, when no progress view shows it.
DRAIN_NOTICE_EVERY = 2.0
#: The widest an ``open_stream`` channel without a ``maxsize`` grows while its reader keeps up.
STREAM_ROOM = 16384

#: What builds the event loop of a run made from synchronous code (``uvloop.new_event_loop``).
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _check(source: Any, layers: tuple[Any, ...]) -> None:
    _check_source(source)
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"pipeline argument #{i + 1} must be an async_flow.Layer, got"
                f" {type(layer).__name__} (wrap functions: af.Layer(fn))"
            )


class _Run:
    """One execution of a pipeline: owns its channels, tasks, threads and workers."""

    def __init__(
        self,
        source: Any,
        layers: tuple[Layer[Any, Any], ...],
        progress: ProgressOption = None,
        total: int | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        _check(source, layers)
        layers = named_by_position(layers)
        if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
            raise TypeError(f"total must be an int, got {total!r}")
        self.source = source
        self.layers = layers
        self.checkpoint = checkpoint
        self.source_counters = SourceCounters()
        self.layer_runs: list[LayerRun] = []
        self.status = "running"
        self._started = perf_counter()
        self._ended: float | None = None
        self._first_send: SendChannel[Any] | None = None
        self.autoscaler: Autoscaler | None = None
        self._clock = current_clock()  # where the run is declared, for tests' manual clocks
        self._source_ended: float | None = None
        self._source_started: float | None = None
        self._lineage: Lineage | None = None
        self.sampler = Sampler(
            self._read_counters,
            resolve_progress(progress),
            total if total is not None else source_length(source),
        )
        # Graceful shutdown (see interrupt()).
        self.drain_timeout = DEFAULT_DRAIN_TIMEOUT
        self.signum: int | None = None
        self.aborted = False
        self._tg: TaskGroup | None = None
        self._source_task: asyncio.Task[None] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._drain_notice: asyncio.TimerHandle | None = None

    async def execute(self, output: SendChannel[Any] | None) -> Report:
        """Run to the end; send the last layer's outputs to ``output`` (or drop them)."""
        self._started = perf_counter()
        self.sampler.restart_clock()
        try:
            return await self._execute(output)
        except Carried as carried:
            raise carried.error from None
        finally:
            if output is not None:
                output.close()

    async def _execute(self, output: SendChannel[Any] | None) -> Report:
        if self.checkpoint is None:
            return await self._execute_layers(output, None)
        lineage = self._lineage = Lineage(self.checkpoint, self.layers)
        self.sampler.count_committed = lambda: lineage.skipped
        try:
            await lineage.open()
            return await self._execute_layers(output, lineage)
        finally:
            await finish(lineage.aclose())

    async def _execute_layers(
        self, output: SendChannel[Any] | None, lineage: Lineage | None
    ) -> Report:
        layers = self.layers if lineage is None else lineage.layers
        channels = [open_channel(layer.maxsize) for layer in layers]
        drain: ReceiveChannel[Any] | None = None
        if layers:
            first_send: SendChannel[Any] = channels[0][0]
        elif output is not None:
            first_send = output.clone()
        else:  # nothing to run: the source is still read to its end
            first_send, drain = open_channel(DEFAULT_MAXSIZE)
        self._first_send = first_send
        feed_into: Any = first_send if lineage is None else lineage.sender(first_send)
        # The last layer's outbox is the caller's output channel (a clone, so that the caller's own
        # side can be closed independently) or nothing at all.
        outboxes: list[SendChannel[Any] | None] = [
            channels[i + 1][0] for i in range(len(layers) - 1)
        ]
        outboxes.append(output.clone() if (output is not None and layers) else None)
        for i, layer in enumerate(layers):
            self.layer_runs.append(LayerRun(i, layer, channels[i][1], outboxes[i]))
            self.layer_runs[-1].lineage = lineage
        for upstream, downstream in zip(self.layer_runs, self.layer_runs[1:], strict=False):
            upstream.downstream = downstream
            upstream.backend.connect(downstream.backend)
        started: list[LayerRun] = []
        try:
            # Backends start before the source is read, so that a layer that cannot run fails
            # without consuming anything.
            for lr in self.layer_runs:
                await lr.backend.start()
                started.append(lr)
            # After the backends: an autoscaled Ray layer's budget is the CPUs of the cluster
            # its backend connected to. Without autoscaled layers no controller is built (nor
            # the cgroup read that sizes its budget).
            if any(lr.layer.autoscale is not None for lr in self.layer_runs):
                self.autoscaler = Autoscaler(self.layer_runs, clock=self._clock)
            async with TaskGroup() as tg:
                self._tg = tg
                chunk = layers[0].maxsize if layers else DEFAULT_MAXSIZE
                self._source_started = perf_counter()  # the start-up ends here
                if self.signum is None:
                    source_task = self._source_task = tg.start(
                        feed(self.source, feed_into, self.source_counters, chunk),
                        name="async_flow:source",
                    )
                    source_task.add_done_callback(self._on_source_done)
                    work = [source_task]
                else:  # interrupted while the backends started: read nothing
                    feed_into.close()
                    work = []
                if drain is not None:
                    work.append(tg.start(_drain(drain), name="async_flow:drain"))
                for lr in self.layer_runs:
                    work.append(tg.start(lr.run(), name=f"async_flow:layer:{lr.layer.name}"))
                if self.autoscaler is not None:
                    tg.start(self.autoscaler.run(), name="async_flow:autoscale")
                tg.start(self.sampler.run(work), name="async_flow:sampler")
            self.status = "completed" if self.signum is None else "interrupted"
        except asyncio.CancelledError:
            self.status = "cancelled"
            raise
        except BaseException:
            self.status = "failed"
            raise
        finally:
            self._tg = None
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            if self._drain_notice is not None:
                self._drain_notice.cancel()
            self._ended = perf_counter()
            for lr in started:
                await finish(lr.backend.aclose())
        return self.report()

    def interrupt(self, signum: int) -> None:
        """A signal arrived: the first one drains the run, a second one aborts it.

        Draining stops the source (closing the first channel, so end-of-stream flows down once
        the items inside are through) and arms the drain timeout; aborting cancels every task.
        """
        if self.signum is not None:
            self._abort()
            return
        self.signum = signum
        self.sampler.interrupted = True
        if self._source_task is not None:
            self.source_counters.request_stop()
        loop = asyncio.get_running_loop()
        self._abort_timer = loop.call_later(self.drain_timeout, self._abort)
        name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else name
        _say(
            f"async_flow: {name}: draining {self.in_flight()} items in flight;"
            f" {again} again to abort"
        )
        if self.sampler.view is None:  # nothing else shows how the drain goes
            self._drain_notice = loop.call_later(DRAIN_NOTICE_EVERY, self._notice_drain)

    def in_flight(self) -> int:
        """Items inside the pipeline now: in its channels or held by workers (an estimate for
        layers that emit more or fewer items than they take in)."""
        held = 0
        for lr in self.layer_runs:
            s = lr.snapshot()
            held += s.queued + max(0, s.received - s.emitted - s.failed - s.skipped)
        return held

    def _notice_drain(self) -> None:
        self._drain_notice = None
        if self._tg is None or self.aborted:
            return
        since = perf_counter() - self._started
        collected = self.layer_runs[-1].snapshot().emitted if self.layer_runs else 0
        _say(
            f"async_flow: draining, {self.in_flight()} items in flight, {collected} collected"
            f" ({since:.0f}s)"
        )
        loop = asyncio.get_running_loop()
        self._drain_notice = loop.call_later(DRAIN_NOTICE_EVERY, self._notice_drain)

    def _abort(self) -> None:
        self.aborted = True
        if self._tg is not None:
            self._tg.cancel()

    def report(self) -> Report:
        """The report of this run so far (final once the run has ended)."""
        end = self._ended if self._ended is not None else perf_counter()
        blocked = self._first_send_blocked()
        source_end = self._source_ended if self._source_ended is not None else end
        return Report(
            layers=tuple(lr.snapshot() for lr in self.layer_runs),
            source=SourceStats(
                produced=self.source_counters.produced,
                blocked_seconds=blocked,
                elapsed=end - self._started,
                exhausted=self.source_counters.exhausted,
                running_seconds=source_end - self._started,
                startup_seconds=(self._source_started if self._source_started is not None else end)
                - self._started,
                already_committed=0 if self._lineage is None else self._lineage.skipped,
            ),
            elapsed=end - self._started,
            status=self.status,
            scaling=tuple(self.autoscaler.events) if self.autoscaler is not None else (),
            timeline=self.sampler.timeline(),
            failures=tuple(f for lr in self.layer_runs for f in lr.failures),
        )

    def _read_counters(self) -> tuple[int, tuple[LayerStats, ...]]:
        return self.source_counters.produced, tuple(lr.snapshot() for lr in self.layer_runs)

    def _on_source_done(self, _: object) -> None:
        self._source_ended = perf_counter()

    def _first_send_blocked(self) -> float:
        # The first layer's input, or (a stream without layers) the stream's own channel.
        send = self._first_send
        return 0.0 if send is None else send.blocked_seconds


def _say(line: str) -> None:
    """One line on stderr for the person at the terminal (never fails the run)."""
    with contextlib.suppress(Exception):
        print(line, file=sys.stderr, flush=True)


async def _drain(channel: ReceiveChannel[Any]) -> None:
    with contextlib.suppress(EndOfChannel):
        while True:
            await channel.receive_batch(DEFAULT_MAXSIZE)


async def _run_handling_signals(
    source: Source,
    layers: tuple[Layer[Any, Any], ...],
    drain_timeout: float,
    signals: bool,
    progress: ProgressOption,
    total: int | None,
    checkpoint: Checkpoint | None,
) -> _Run:
    """Run to the end (or to an interruption); the caller raises :class:`Interrupted`."""
    if isinstance(drain_timeout, bool) or not (
        isinstance(drain_timeout, (int, float)) and drain_timeout >= 0
    ):
        raise ValueError(f"drain_timeout must be a number of seconds >= 0, got {drain_timeout!r}")
    run = _Run(source, layers, progress, total, checkpoint)
    run.drain_timeout = drain_timeout
    if not signals:
        await run.execute(None)
        return run
    with watch_signals(run.interrupt):
        await run.execute(None)
    return run


def _outcome(run: _Run) -> Report:
    report = run.report()
    if run.signum is not None:
        # Even if the run happened to complete meanwhile: the caller asked to stop. Uncaught,
        # it ends the program like the signal would (see install_exit_hook).
        install_exit_hook()
        raise Interrupted(report, run.signum, drained=not run.aborted)
    return report


# --- BEGIN GENERATED pipeline (scripts/gen_overloads.py; do not edit) ---


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    l7: Layer[_T6, _T7],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    l7: Layer[_T6, _T7],
    l8: Layer[_T7, _T8],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


@overload
async def pipeline(
    source: Source,
    l1: _L,
    l2: _L,
    l3: _L,
    l4: _L,
    l5: _L,
    l6: _L,
    l7: _L,
    l8: _L,
    l9: _L,
    /,
    *rest: _L,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report: ...


# --- END GENERATED pipeline ---


@user_facing
async def pipeline(
    source: Source,
    *layers: Layer[Any, Any],
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
) -> Report:
    """Run ``source`` through ``layers`` to the end and return the :class:`Report`.

    Each layer's workers read from a bounded channel filled by the layer above; a full channel
    suspends the producer, so memory stays flat however long the source is. The last layer is the
    collector: its outputs are counted and dropped (use :func:`open_stream` to consume them).

    The first exception in the source or any layer stops the run (unless the layer's error policy
    keeps it going): the source stops, every worker is cancelled, and the exception is re-raised
    as itself with a note naming the layer and item. Cancelling the awaiting task stops
    everything the same way. Nothing the run started (tasks, threads, processes, actors)
    outlives the call.

    On the main thread (and with ``handle_signals``), the first SIGINT or SIGTERM drains the run:
    the source stops and the items already inside are finished and collected, for at most
    ``drain_timeout`` seconds; a second signal (or the timeout) aborts it. Either way the call
    raises :class:`~async_flow.Interrupted`, which carries the report (status ``"interrupted"``).
    The previous signal handlers are restored when the call returns.

    ``progress`` shows how the run goes: ``None`` (default) draws a live table when stderr is a
    terminal; ``True`` draws it, or writes plain lines to stderr (through :mod:`logging` once the
    program has configured it) when stderr is not a terminal; ``False`` shows nothing; a
    callable receives a :class:`ProgressSnapshot` every second and at the end; a
    :class:`ProgressView` is used as it is. ``total`` is the number of source items, for the
    "done of total" column and the ETA when the source has no ``len()``.

    With a :class:`Checkpoint`, the run records each source item once its results are committed
    and skips the items an earlier run recorded (see :class:`Checkpoint`).

    For type checkers each layer must take what the one before it gives (the source's items for
    the first), for up to eight layers given one by one: ``mypy`` refuses
    ``af.run(ints(), af.Layer(takes_str))``.

    Without layers the source is drained: read to its end, its items counted and dropped (what
    a source does costs the same as in the full pipeline, which makes it a way to time it).

    Example::

        >>> import asyncio, async_flow as af
        >>> async def double(x):
        ...     return 2 * x
        >>> report = asyncio.run(af.pipeline(range(100), af.Layer(double, 4), af.Layer(print)))
        ... # doctest: +ELLIPSIS
        0
        ...
        >>> report.layers[0].emitted
        100
    """
    run = await _run_handling_signals(
        source, layers, drain_timeout, handle_signals, progress, total, checkpoint
    )
    return _outcome(run)


# --- BEGIN GENERATED run (scripts/gen_overloads.py; do not edit) ---


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    l7: Layer[_T6, _T7],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    l7: Layer[_T6, _T7],
    l8: Layer[_T7, _T8],
    /,
    *,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


@overload
def run(
    source: Source,
    l1: _L,
    l2: _L,
    l3: _L,
    l4: _L,
    l5: _L,
    l6: _L,
    l7: _L,
    l8: _L,
    l9: _L,
    /,
    *rest: _L,
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report: ...


# --- END GENERATED run ---


@user_facing
def run(
    source: Source,
    *layers: Layer[Any, Any],
    progress: ProgressOption = None,
    total: int | None = None,
    checkpoint: Checkpoint | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    handle_signals: bool = True,
    loop_factory: LoopFactory | None = None,
) -> Report:
    """Run a pipeline from synchronous code (``asyncio.Runner`` around :func:`pipeline`).

    Ctrl-C (SIGINT) or SIGTERM drains the run, a second one aborts it, and the call raises
    :class:`~async_flow.Interrupted` with the report (see :func:`pipeline`). A program that does
    not catch it prints the report and one line, and dies by the signal (exit status 130 for
    SIGINT, 143 for SIGTERM), as Python programs do on Ctrl-C. ``progress`` and ``total`` are as
    for :func:`pipeline`.

    ``loop_factory`` builds the event loop the run happens on (default: asyncio's own). Pass
    ``uvloop.new_event_loop`` to run on uvloop, whose timers wake closer to their deadline than
    the stock loop's (which rounds its waits up to whole milliseconds) and whose callbacks cost
    less: it pays off when the items are many short awaits.

    Example::

        >>> import async_flow as af
        >>> af.run(["a", "b"], af.Layer(str.upper, 2)).layers[0].emitted
        2
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "af.run() cannot be called from a running event loop: await af.pipeline()"
        )
    _check_loop_factory(loop_factory)
    # Interrupted is raised out here, not from inside the event loop, which treats a
    # KeyboardInterrupt escaping a task as fatal to the loop.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        ended = runner.run(
            _run_handling_signals(
                source, layers, drain_timeout, handle_signals, progress, total, checkpoint
            )
        )
    return _outcome(ended)


def _check_loop_factory(loop_factory: Any) -> None:
    if loop_factory is not None and not callable(loop_factory):
        raise TypeError(
            "loop_factory must be a callable returning an event loop (e.g."
            f" uvloop.new_event_loop), got {loop_factory!r}"
        )


class Stream(Generic[T]):
    """The last layer's outputs, as they come. Made by :func:`open_stream`.

    Use it as ``async with`` + ``async for`` in async code, or ``with`` + ``for`` in sync code (the
    run then happens on an event loop in a helper thread that the ``with`` block owns, built by
    ``loop_factory`` if :func:`open_stream` was given one). Leaving the block early cancels the
    run; :attr:`report` is set once the run has ended.

    Example::

        >>> import async_flow as af
        >>> with af.open_stream(range(3), af.Layer(str, ordered=True)) as stream:
        ...     items = list(stream)
        >>> items, stream.report.layers[0].emitted
        (['0', '1', '2'], 3)
    """

    def __init__(
        self,
        source: Source,
        layers: tuple[Layer[Any, Any], ...],
        maxsize: int | None,
        progress: ProgressOption = None,
        total: int | None = None,
        loop_factory: LoopFactory | None = None,
    ) -> None:
        _check_loop_factory(loop_factory)
        self._run = _Run(source, layers, progress, total)
        if maxsize is not None and (isinstance(maxsize, bool) or not isinstance(maxsize, int)):
            raise TypeError(f"open_stream: maxsize must be an int or None, got {maxsize!r}")
        if maxsize is not None and maxsize < 1:
            raise ValueError(f"open_stream: maxsize must be >= 1, got {maxsize}")
        self._maxsize = DEFAULT_MAXSIZE if maxsize is None else maxsize
        #: Without a maxsize, the channel widens while its reader keeps up.
        self._widens = maxsize is None
        self._loop_factory = loop_factory
        self._buffer: deque[Any] = deque()
        self._receive: ReceiveChannel[Any] | None = None
        self._task: asyncio.Task[Report] | None = None
        self._report: Report | None = None
        # sync mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._release: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def report(self) -> Report:
        """The run's report: final once the stream is exhausted or closed, else a live view."""
        return self._report if self._report is not None else self._run.report()

    # --- async form -------------------------------------------------------------------------

    async def __aenter__(self) -> Stream[T]:
        if self._loop_factory is not None:
            raise RuntimeError(
                "loop_factory is for 'with af.open_stream(...)': 'async with' runs the stream"
                " on the loop it is in"
            )
        send, self._receive = open_channel(self._maxsize)
        self._task = asyncio.get_running_loop().create_task(
            self._run.execute(send), name="async_flow:run"
        )
        return self

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        """What ``async for`` runs: the items already received are handed out by an async
        generator, which costs less per item than a coroutine per :meth:`__anext__` call."""
        buffer = self._buffer
        popleft = buffer.popleft
        while True:
            while buffer:
                yield popleft()
            try:
                item = await self.__anext__()
            except StopAsyncIteration:
                return
            except BaseException as error:
                if shown_error(error):
                    hide_library_frames(error)  # this generator's frame too
                raise
            yield item

    @user_facing
    async def __anext__(self) -> T:
        if self._buffer:
            return self._buffer.popleft()  # type: ignore[no-any-return]
        if self._receive is None:
            raise RuntimeError("use the stream inside 'async with af.open_stream(...)'")
        try:
            self._buffer.extend(await self._take(self._receive))
        except EndOfChannel:
            assert self._task is not None
            self._report = await self._task
            raise StopAsyncIteration from None
        return self._buffer.popleft()  # type: ignore[no-any-return]

    async def _take(self, receive: ReceiveChannel[Any]) -> list[Any]:
        """Everything the channel holds, waiting for an item if it is empty.

        Without a declared ``maxsize``, a reader that finds the channel empty keeps up with the
        run: the channel doubles, up to :data:`STREAM_ROOM` items, so that tiny items come
        across in large batches (each costs the sync form a hop between threads). A reader that
        has not had to wait for :data:`CALLER_WINDOW` seconds has fallen behind: the channel is
        back to its default bound, as are the layers' channels feeding it.
        """
        if self._widens:
            if not len(receive):
                receive.widen(min(STREAM_ROOM, 2 * receive.maxsize))
            elif not receive.receivers_keep_up(CALLER_WINDOW):
                receive.narrow(self._maxsize)
        return await receive.receive_batch(receive.maxsize)

    @user_facing
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            self._report = await task
        except asyncio.CancelledError:
            # We cancelled the run because the block was left early; swallow that, but not a
            # cancellation of the task we run in.
            self._report = self._run.report()
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except BaseException:
            self._report = self._run.report()
            if exc is None:
                raise

    # --- sync form --------------------------------------------------------------------------

    def __enter__(self) -> Stream[T]:
        ready = threading.Event()

        async def host() -> None:
            self._loop = asyncio.get_running_loop()
            send, self._receive = open_channel(self._maxsize)
            self._task = asyncio.get_running_loop().create_task(self._run.execute(send))
            # The loop stays up until the consuming thread is done with the channel.
            self._release = asyncio.Event()
            ready.set()
            try:
                self._report = await self._task
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                self._report = self._run.report()
                self._error = exc
            await self._release.wait()

        def main() -> None:
            try:
                with asyncio.Runner(loop_factory=self._loop_factory) as runner:
                    runner.run(host())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                self._error = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=main, name="async_flow:stream", daemon=True)
        self._thread.start()
        ready.wait()
        if self._loop is None:  # the loop could not be built (or the thread failed to start it)
            self._thread.join()
            error, self._error = self._error, None
            assert error is not None
            raise error
        return self

    def __iter__(self) -> Iterator[T]:
        return self._iterate_sync()

    def _iterate_sync(self) -> Iterator[T]:
        """What ``for`` runs: the items already received are handed out by a generator, which
        costs less per item than a call of :meth:`__next__` (as ``async for`` does)."""
        buffer = self._buffer
        popleft = buffer.popleft
        while True:
            while buffer:
                yield popleft()
            try:
                item = self.__next__()
            except StopIteration:
                return
            except BaseException as error:
                if shown_error(error):
                    hide_library_frames(error)  # this generator's frame too
                raise
            yield item

    @user_facing
    def __next__(self) -> T:
        if self._buffer:
            return self._buffer.popleft()  # type: ignore[no-any-return]
        if self._loop is None or self._receive is None:
            raise RuntimeError("use the stream inside 'with af.open_stream(...)'")
        future = asyncio.run_coroutine_threadsafe(self._take(self._receive), self._loop)
        try:
            self._buffer.extend(future.result())
        except EndOfChannel:
            self._join()
            if self._error is not None and not isinstance(self._error, asyncio.CancelledError):
                raise self._error from None
            raise StopIteration from None
        except BaseException:
            future.cancel()
            raise
        return self._buffer.popleft()  # type: ignore[no-any-return]

    def _join(self) -> None:
        loop, release = self._loop, self._release
        if loop is not None and release is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(release.set)
        if self._thread is not None:
            self._thread.join()

    @user_facing
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(task.cancel)
        self._join()
        error = self._error
        if exc is None and error is not None and not isinstance(error, asyncio.CancelledError):
            self._error = None
            raise error


# --- BEGIN GENERATED open_stream (scripts/gen_overloads.py; do not edit) ---


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T0]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T1]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T2]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T3]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T4]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T5]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T6]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    l7: Layer[_T6, _T7],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T7]: ...


@overload
def open_stream(
    source: Iterable[_T0] | AsyncIterable[_T0] | Merge[_T0],
    l1: Layer[_T0, _T1],
    l2: Layer[_T1, _T2],
    l3: Layer[_T2, _T3],
    l4: Layer[_T3, _T4],
    l5: Layer[_T4, _T5],
    l6: Layer[_T5, _T6],
    l7: Layer[_T6, _T7],
    l8: Layer[_T7, _T8],
    /,
    *,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[_T8]: ...


@overload
def open_stream(
    source: Source,
    l1: _L,
    l2: _L,
    l3: _L,
    l4: _L,
    l5: _L,
    l6: _L,
    l7: _L,
    l8: _L,
    l9: _L,
    /,
    *rest: _L,
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[Any]: ...


# --- END GENERATED open_stream ---


def open_stream(
    source: Source,
    *layers: Layer[Any, Any],
    maxsize: int | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    loop_factory: LoopFactory | None = None,
) -> Stream[Any]:
    """Run a pipeline and consume the last layer's outputs as they come.

    ``maxsize`` bounds the output channel: a consumer that stops reading suspends the last layer,
    which back-pressures the whole pipeline. Without it, the bound is 256 items, and the channel
    widens (up to 16,384 items) while the reader keeps up, meaning it keeps finding the channel
    empty: tiny items then come across in large batches. A reader that has not had to wait for
    a second has fallen behind, and its next read puts the bound back to 256. Give ``maxsize``
    to keep a bound fixed.

    ``progress`` and ``total`` are as for :func:`pipeline`. ``loop_factory`` is as for
    :func:`run` (``uvloop.new_event_loop``, say) and only for the ``with`` form, whose run has a
    loop of its own; ``async with`` runs the stream on the loop it is in, and refuses a
    ``loop_factory``.

    For type checkers the stream yields the last layer's ``Out`` (the source's items when there
    are no layers), for up to eight layers given one by one, each of which must take what the
    one before it gives (as for :func:`run`); beyond that the items are ``Any``.

    Example::

        >>> import async_flow as af
        >>> with af.open_stream(range(5), af.Layer(lambda x: x * x, ordered=True)) as squares:
        ...     print(list(squares))
        [0, 1, 4, 9, 16]
    """
    return Stream(source, layers, maxsize, progress, total, loop_factory)
