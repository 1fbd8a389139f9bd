"""Building and owning one run: :func:`pipeline`, :func:`run` and :func:`open_stream`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterable, Iterable
from time import perf_counter
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._channel import EndOfChannel, ReceiveChannel, SendChannel, open_channel
from ._layer import DEFAULT_MAXSIZE, Layer
from ._report import Report
from ._runtime import LayerRun
from ._source import Merge, SourceCounters, _check_source, feed
from ._stats import SourceStats
from ._taskgroup import Carried, TaskGroup, finish

__all__ = ("Stream", "open_stream", "pipeline", "run")

T = TypeVar("T")

Source = Iterable[Any] | AsyncIterable[Any] | Merge[Any]


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

    def __init__(self, source: Any, layers: tuple[Layer[Any, Any], ...]) -> None:
        _check(source, layers)
        self.source = source
        self.layers = layers
        self.source_counters = SourceCounters()
        self.layer_runs: list[LayerRun] = []
        self.status = "running"
        self._started = perf_counter()
        self._ended: float | None = None
        self._first_send: SendChannel[Any] | None = None

    async def execute(self, output: SendChannel[Any] | None) -> Report:
        """Run to the end; send the last layer's outputs to ``output`` (or drop them)."""
        self._started = perf_counter()
        try:
            return await self._execute(output)
        except Carried as carried:
            raise carried.error from None
        finally:
            if output is not None:
                output.close()

    async def _execute(self, output: SendChannel[Any] | None) -> Report:
        layers = self.layers
        channels = [open_channel(layer.maxsize) for layer in layers]
        drain: ReceiveChannel[Any] | None = None
        if layers:
            first_send: SendChannel[Any] = channels[0][0]
        elif output is not None:
            first_send = output.clone()
        else:  # nothing to run: the source is still read to its end
            first_send, drain = open_channel(DEFAULT_MAXSIZE)
        self._first_send = first_send
        # The last layer's outbox is the caller's output channel (a clone, so that the caller's own
        # side can be closed independently) or nothing at all.
        outboxes: list[SendChannel[Any] | None] = [
            channels[i + 1][0] for i in range(len(layers) - 1)
        ]
        outboxes.append(output.clone() if (output is not None and layers) else None)
        for i, layer in enumerate(layers):
            outbox = outboxes[i]
            next_recv = channels[i + 1][1] if i + 1 < len(layers) else None
            self.layer_runs.append(
                LayerRun(i, layer, channels[i][1], outbox, _blocked_reader(next_recv))
            )
        for upstream, downstream in zip(self.layer_runs, self.layer_runs[1:], strict=False):
            upstream.backend.connect(downstream.backend)
        started: list[LayerRun] = []
        try:
            # Backends start before the source is read, so that a layer that cannot run fails
            # without consuming anything.
            for lr in self.layer_runs:
                await lr.backend.start()
                started.append(lr)
            async with TaskGroup() as tg:
                chunk = layers[0].maxsize if layers else DEFAULT_MAXSIZE
                tg.start(
                    feed(self.source, first_send, self.source_counters, chunk),
                    name="async_flow:source",
                )
                if drain is not None:
                    tg.start(_drain(drain), name="async_flow:drain")
                for lr in self.layer_runs:
                    tg.start(lr.run(), name=f"async_flow:layer:{lr.layer.name}")
            self.status = "completed"
        except asyncio.CancelledError:
            self.status = "cancelled"
            raise
        except BaseException:
            self.status = "failed"
            raise
        finally:
            self._ended = perf_counter()
            for lr in started:
                await finish(lr.backend.aclose())
        return self.report()

    def report(self) -> Report:
        """The report of this run so far (final once the run has ended)."""
        end = self._ended if self._ended is not None else perf_counter()
        blocked = self._first_send_blocked()
        return Report(
            layers=tuple(lr.snapshot() for lr in self.layer_runs),
            source=SourceStats(
                produced=self.source_counters.produced,
                blocked_seconds=blocked,
                elapsed=end - self._started,
                exhausted=self.source_counters.exhausted,
            ),
            elapsed=end - self._started,
            status=self.status,
        )

    def _first_send_blocked(self) -> float:
        if self.layer_runs:
            return self.layer_runs[0].inbox.blocked_seconds
        return 0.0


async def _drain(channel: ReceiveChannel[Any]) -> None:
    with contextlib.suppress(EndOfChannel):
        while True:
            await channel.receive_batch(DEFAULT_MAXSIZE)


def _blocked_reader(next_recv: ReceiveChannel[Any] | None) -> Any:
    if next_recv is None:
        return lambda: 0.0
    return lambda: next_recv.blocked_seconds


async def pipeline(source: Source, *layers: Layer[Any, Any]) -> Report:
    """Run ``source`` through ``layers`` to the end and return the :class:`Report`.

    Each layer's workers read from a bounded channel filled by the layer above; a full channel
    suspends the producer, so memory stays flat however long the source is. The last layer is the
    collector: its outputs are counted and dropped (use :func:`open_stream` to consume them).

    The first exception in the source or any layer stops the run: the source stops, every worker
    is cancelled, and the exception is re-raised as itself with a note naming the layer and item.
    Cancelling the awaiting task stops everything the same way. Nothing the run started (tasks,
    threads, processes, actors) outlives the call.

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
    return await _Run(source, layers).execute(None)


def run(source: Source, *layers: Layer[Any, Any]) -> Report:
    """Run a pipeline from synchronous code (``asyncio.run`` around :func:`pipeline`).

    Ctrl-C cancels the run, stops every worker, and raises ``KeyboardInterrupt``.

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
    return asyncio.run(pipeline(source, *layers))


class Stream(Generic[T]):
    """The last layer's outputs, as they come. Made by :func:`open_stream`.

    Use it as ``async with`` + ``async for`` in async code, or ``with`` + ``for`` in sync code (the
    run then happens on an event loop in a helper thread that the ``with`` block owns). Leaving the
    block early cancels the run; :attr:`report` is set once the run has ended.
    """

    def __init__(self, source: Source, layers: tuple[Layer[Any, Any], ...], maxsize: int) -> None:
        self._run = _Run(source, layers)
        self._maxsize = maxsize
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
        send, self._receive = open_channel(self._maxsize)
        self._task = asyncio.get_running_loop().create_task(
            self._run.execute(send), name="async_flow:run"
        )
        return self

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        if self._buffer:
            return self._buffer.popleft()  # type: ignore[no-any-return]
        if self._receive is None:
            raise RuntimeError("use the stream inside 'async with af.open_stream(...)'")
        try:
            self._buffer.extend(await self._receive.receive_batch(self._maxsize))
        except EndOfChannel:
            assert self._task is not None
            self._report = await self._task
            raise StopAsyncIteration from None
        return self._buffer.popleft()  # type: ignore[no-any-return]

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
                asyncio.run(host())
            finally:
                ready.set()

        self._thread = threading.Thread(target=main, name="async_flow:stream", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        if self._buffer:
            return self._buffer.popleft()  # type: ignore[no-any-return]
        if self._loop is None or self._receive is None:
            raise RuntimeError("use the stream inside 'with af.open_stream(...)'")
        future = asyncio.run_coroutine_threadsafe(
            self._receive.receive_batch(self._maxsize), self._loop
        )
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


def open_stream(
    source: Source, *layers: Layer[Any, Any], maxsize: int = DEFAULT_MAXSIZE
) -> Stream[Any]:
    """Run a pipeline and consume the last layer's outputs as they come.

    ``maxsize`` bounds the output channel: a consumer that stops reading suspends the last layer,
    which back-pressures the whole pipeline.

    Example::

        >>> import async_flow as af
        >>> with af.open_stream(range(5), af.Layer(lambda x: x * x, ordered=True)) as squares:
        ...     print(list(squares))
        [0, 1, 4, 9, 16]
    """
    return Stream(source, layers, maxsize)
