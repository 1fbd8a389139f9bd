"""Sources: feeding a pipeline's first channel from iterables and async iterables.

A sync iterator (a generator above all) may block, so it is pulled in chunks on a dedicated thread:
the event loop never runs user code that could block it. Collections (lists, tuples, ranges, ...)
cannot block and are sliced on the loop directly. Async iterables are iterated on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence, Set
from itertools import islice
from time import perf_counter
from typing import Any, Generic, TypeVar

from ._channel import SendChannel
from ._taskgroup import TaskGroup
from ._threads import WorkerThread

__all__ = ("Merge", "SourceCounters", "feed", "merge", "source_length")

T = TypeVar("T")

#: A chunk pulled from a blocking iterator stops growing after this long, so that a slow
#: generator's items are not held back waiting for a full chunk.
_CHUNK_SECONDS = 0.002


class Merge(Generic[T]):
    """Several sources read concurrently into one pipeline (see :func:`merge`)."""

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
        raise TypeError(
            f"a source must be an iterable or an async iterable, got {type(source).__name__}"
        )


def source_length(source: Any) -> int | None:
    """The number of items a source will produce, when it can tell without being consumed."""
    if isinstance(source, Merge):
        lengths = [source_length(s) for s in source.sources]
        return None if any(n is None for n in lengths) else sum(n for n in lengths if n is not None)
    if isinstance(source, (Sequence, Set, Mapping)):
        return len(source)
    return None


class SourceCounters:
    """How many items the source produced (runtime-internal)."""

    __slots__ = ("exhausted", "produced")

    def __init__(self) -> None:
        self.produced = 0
        self.exhausted = False


def _pull_chunk(iterator: Iterator[Any], size: int) -> list[Any]:
    chunk: list[Any] = []
    append = chunk.append
    deadline = perf_counter() + _CHUNK_SECONDS
    for item in iterator:
        append(item)
        if len(chunk) >= size or perf_counter() > deadline:
            break
    return chunk


def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


async def _feed_blocking(iterator: Iterator[Any], out: SendChannel[Any], counters: SourceCounters,
                         chunk: int) -> None:
    thread = WorkerThread("async_flow:source")
    try:
        while True:
            items = await thread.submit(_pull_chunk, iterator, chunk)
            if not items:
                return
            counters.produced += len(items)
            await out.send_batch(items)
    finally:
        # Runs the generator's own cleanup (its finally blocks) in the thread it ran in.
        thread.submit(_close_iterator, iterator)
        await thread.aclose()


async def _feed_collection(source: Iterable[Any], out: SendChannel[Any],
                           counters: SourceCounters, chunk: int) -> None:
    iterator = iter(source)
    while items := list(islice(iterator, chunk)):
        counters.produced += len(items)
        await out.send_batch(items)


async def _feed_async(source: AsyncIterable[Any], out: SendChannel[Any],
                      counters: SourceCounters) -> None:
    iterator: AsyncIterator[Any] = aiter(source)
    try:
        async for item in iterator:
            counters.produced += 1
            await out.send_batch([item])
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _feed_one(source: Any, out: SendChannel[Any], counters: SourceCounters,
                    chunk: int) -> None:
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
    counters.exhausted = True
