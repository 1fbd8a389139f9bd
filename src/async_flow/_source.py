"""Sources: feeding a pipeline's first channel from iterables and async iterables.

A sync iterator (a generator above all) may block, so it is pulled in chunks on a dedicated thread:
the event loop never runs user code that could block it. Collections (lists, tuples, ranges, ...)
cannot block and are sliced on the loop directly. Async iterables are iterated on the loop.

Stopping a source (the drain after Ctrl-C) never drops an item: whatever has left the user's
iterator (an item the reading thread holds or has handed over, a chunk read from a list, an item
of an async generator) is sent into the pipeline before the first channel closes. Only reads not
yet made are given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Set,
)
from itertools import islice
from typing import Any, Generic, TypeVar

from ._channel import SendChannel
from ._taskgroup import TaskGroup
from ._threads import WorkerThread

__all__ = ("Merge", "SourceCounters", "feed", "merge", "source_length")

T = TypeVar("T")


class Merge(Generic[T]):
    """Several sources read concurrently into one pipeline: what :func:`merge` returns.

    Public so that a function building a source can say so (``def rows() -> af.Merge[Row]``);
    build one with :func:`merge`, which checks its sources.
    """

    __slots__ = ("sources",)

    def __init__(self, sources: tuple[Iterable[T] | AsyncIterable[T], ...]) -> None:
        self.sources = sources

    def __repr__(self) -> str:
        return f"merge({', '.join(type(s).__name__ for s in self.sources)})"


def merge(*sources: Iterable[T] | AsyncIterable[T]) -> Merge[T]:
    """Read several sources (sync or async iterables) at once, interleaving their items.

    Each source is fed by its own producer; the pipeline's first channel ends when all of them are
    exhausted. Items keep their order within a source, not across sources.

    Example::

        >>> import async_flow as af
        >>> report = af.run(af.merge(range(3), ["a", "b"]), af.Layer(str))
        >>> report.source.produced
        5
    """
    if not sources:
        raise ValueError("merge() needs at least one source")
    for s in sources:
        _check_source(s)
    return Merge(sources)


def _check_source(source: Any) -> None:
    if isinstance(source, Merge):
        return
    if not isinstance(source, (Iterable, AsyncIterable)):
        message = f"a source must be an iterable or an async iterable, got {type(source).__name__}"
        if callable(source) and not isinstance(source, type):
            # The generator function itself instead of the generator it makes: the usual slip.
            name = getattr(source, "__name__", "source")
            if name == "<lambda>":
                name = "source"
            message += f": did you mean {name}()?"
        raise TypeError(message)


def source_length(source: Any) -> int | None:
    """The number of items a source will produce, when it can tell without being consumed."""
    if isinstance(source, Merge):
        lengths = [source_length(s) for s in source.sources]
        return None if any(n is None for n in lengths) else sum(n for n in lengths if n is not None)
    if isinstance(source, (Sequence, Set, Mapping)):
        return len(source)
    return None


class SourceCounters:
    """How many items the source produced, and the request to stop reading (runtime-internal)."""

    __slots__ = ("_stoppers", "exhausted", "produced", "stopping")

    def __init__(self) -> None:
        self.produced = 0
        self.exhausted = False
        self.stopping = False
        self._stoppers: list[Callable[[], object]] = []

    def on_stop(self, stopper: Callable[[], object]) -> Callable[[], None]:
        """Call ``stopper`` (a feed's way to stop waiting on its source) at :meth:`request_stop`;
        returns the function that unregisters it."""
        self._stoppers.append(stopper)
        return lambda: self._stoppers.remove(stopper)

    def request_stop(self) -> None:
        """Stop reading the source, keeping every item that has left it.

        Each feed stops waiting on its source, sends what it has read (those items are the
        pipeline's now, whatever the drain takes) and closes its side of the first channel.
        """
        self.stopping = True
        for stopper in list(self._stoppers):
            stopper()


async def _send(out: SendChannel[Any], items: list[Any], counters: SourceCounters) -> bool:
    """Send ``items``, counting each as produced once the channel holds it; False once the source
    is asked to stop.

    Every item is sent even then: it has left the user's iterator, so dropping it would lose it.
    A drain keeps the pipeline moving, so the send ends; an abort cancels it.
    """
    pos, end = 0, len(items)
    while pos < end:
        # No more than fits now (at least one, which waits for room), so that ``produced`` counts
        # each piece as soon as the channel holds it.
        stats = out.statistics()
        piece = items[pos : pos + max(1, stats.maxsize - stats.buffered)]
        await out.send_batch(piece)
        counters.produced += len(piece)
        pos += len(piece)
    return not counters.stopping


class _Handoff:
    """A bounded hand-off from the thread that iterates a blocking source to the event loop.

    Each item is handed over as soon as the iterator yields it (a generator that blocks after an
    item must not hold that item back), and the thread waits while ``capacity`` items are
    waiting for the loop, so the source is back-pressured like any producer.

    :meth:`stop` ends the reading without losing an item: the thread hands over the item it
    holds (or the one its current ``next()`` returns) even past ``capacity``, then reads no
    more; :meth:`take` keeps handing out items until the thread is done.
    """

    def __init__(self, capacity: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None

    # -- the thread's side --
    def pump(self, iterator: Iterator[Any]) -> None:
        cond, items, capacity = self._cond, self._items, self._capacity
        try:
            for item in iterator:
                with cond:
                    while len(items) >= capacity and not self._stopped:
                        cond.wait()
                    # Handed over even once stopped: the item has left the iterator.
                    items.append(item)
                    self._wake_loop()
                    if self._stopped:
                        return
        except BaseException as exc:  # noqa: BLE001 - re-raised on the loop
            self._error = exc
        finally:
            with cond:
                self._done = True
                self._wake_loop()

    def _wake_loop(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_set_done, waiter)

    # -- the loop's side --
    async def take(self) -> list[Any]:
        """Everything handed over so far (waiting for at least one item); [] at the end."""
        while True:
            with self._cond:
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    self._cond.notify()
                    return batch
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return []
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def stop(self) -> None:
        """Read no more (see the class docstring); callable from the loop or any thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


async def _feed_blocking(
    iterator: Iterator[Any], out: SendChannel[Any], counters: SourceCounters, chunk: int
) -> None:
    thread = WorkerThread("async_flow:source")
    handoff = _Handoff(chunk)
    pumping = thread.submit(handoff.pump, iterator)
    # A stop request stops the thread; take() then hands out what it read, to the end.
    forget = counters.on_stop(handoff.stop)
    try:
        while items := await handoff.take():
            await _send(out, items, counters)
    finally:
        forget()
        handoff.stop()
        # Runs the generator's own cleanup (its finally blocks) in the thread it ran in.
        thread.submit(_close_iterator, iterator)
        await thread.aclose()
        if pumping.done() and not pumping.cancelled():
            pumping.result()


async def _feed_collection(
    source: Iterable[Any], out: SendChannel[Any], counters: SourceCounters, chunk: int
) -> None:
    iterator = iter(source)
    while not counters.stopping:
        # As much as the channel has room for (it may have been widened since the run began):
        # reading a collection ahead costs nothing, and one send per refill beats many.
        stats = out.statistics()
        items = list(islice(iterator, max(chunk, stats.maxsize - stats.buffered)))
        if not items or not await _send(out, items, counters):
            return


async def _feed_async(
    source: AsyncIterable[Any], out: SendChannel[Any], counters: SourceCounters
) -> None:
    iterator: AsyncIterator[Any] = aiter(source)
    task = asyncio.current_task()
    assert task is not None
    reading = False  # awaiting the source (not a send): a stop request cancels that wait
    interrupted = False

    def stop() -> None:
        nonlocal interrupted
        if reading and not interrupted:
            interrupted = True
            task.cancel()

    forget = counters.on_stop(stop)
    try:
        while not counters.stopping:
            reading = True
            try:
                # An item the source yields comes back within the step that resumes this task,
                # so a cancellation lands in the source's own await, before it yields: no item is
                # cancelled away after it left the source.
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if interrupted and task.uncancel() == 0:
                    return  # our own stop request, not the run's cancellation
                raise
            finally:
                reading = False
            if interrupted:  # the source swallowed the cancellation and yielded: keep the item
                task.uncancel()
            await _send(out, [item], counters)
    finally:
        forget()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _feed_one(
    source: Any, out: SendChannel[Any], counters: SourceCounters, chunk: int
) -> None:
    try:
        if isinstance(source, Merge):
            async with TaskGroup() as tg:
                for s in source.sources:
                    tg.start(_feed_one(s, out.clone(), counters, chunk), name="async_flow:source")
        elif isinstance(source, AsyncIterable):
            await _feed_async(source, out, counters)
        elif isinstance(source, (Sequence, Set, Mapping)):
            await _feed_collection(source, out, counters, chunk)
        else:
            await _feed_blocking(iter(source), out, counters, chunk)
    finally:
        out.close()


async def feed(source: Any, out: SendChannel[Any], counters: SourceCounters, chunk: int) -> None:
    """Send every item of ``source`` into ``out``, then close it. Errors are annotated."""
    try:
        await _feed_one(source, out, counters, chunk)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        exc.add_note(f"async_flow: raised by the source after {counters.produced} item(s)")
        raise
    counters.exhausted = not counters.stopping
