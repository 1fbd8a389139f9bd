"""Ready-made layers for common shapes: batching and flattening.

They are ordinary :class:`~async_flow.Layer` objects, so the runtime has no special case for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, TypeVar

from ._channel import EndOfChannel, ReceiveChannel
from ._layer import Layer

__all__ = ("batch", "flatten")

T = TypeVar("T")


def batch(size: int, timeout: float | None = None, *, name: str = "batch") -> Layer[Any, list[Any]]:
    """A layer that groups items into lists of up to ``size`` items.

    With ``timeout``, a partial list also goes on once ``timeout`` seconds have passed since its
    first item arrived, so a slow trickle still reaches the next layer (a collector committing
    every few seconds, say). The last list may be short. Item order is kept.

    Example::

        >>> import async_flow as af
        >>> with af.open_stream(range(7), af.batch(3)) as groups:
        ...     print(list(groups))
        [[0, 1, 2], [3, 4, 5], [6]]
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch size must be an int >= 1, got {size!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"batch timeout must be > 0 seconds, got {timeout!r}")

    async def group(inbox: ReceiveChannel[Any]) -> AsyncIterator[list[list[Any]]]:
        loop = asyncio.get_running_loop()
        pending: list[Any] = []
        deadline = 0.0
        while True:
            try:
                if timeout is None or not pending:
                    got = await inbox.receive_batch(size - len(pending))
                    if timeout is not None:
                        deadline = loop.time() + timeout
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        yield [pending]
                        pending = []
                        continue
                    try:
                        async with asyncio.timeout(remaining):
                            got = await inbox.receive_batch(size - len(pending))
                    except TimeoutError:
                        yield [pending]
                        pending = []
                        continue
            except EndOfChannel:
                if pending:
                    yield [pending]
                return
            pending.extend(got)
            if len(pending) >= size:
                yield [pending]
                pending = []

    return Layer._from_stream(group, name=name)


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    yield from items


def flatten(workers: int = 1, *, name: str = "flatten") -> Layer[Iterable[Any], Any]:
    """A layer that passes on each element of each incoming iterable (the inverse of :func:`batch`).

    Example::

        >>> import async_flow as af
        >>> with af.open_stream([[1, 2], [], [3]], af.flatten()) as items:
        ...     print(list(items))
        [1, 2, 3]
    """
    return Layer(_flatten, workers, name=name)
