"""Bounded, closable, batch-aware channels: the queues between layers.

A channel is a pair: :class:`SendChannel` and :class:`ReceiveChannel`. Each producer holds its own
clone of the send side and closes it when it is done; the receive side sees end-of-stream
(:class:`EndOfChannel`) when the last clone is closed and the buffer is empty. There is no ``None``
sentinel, so ``None`` is an ordinary item.

The buffer holds at most ``maxsize`` items. :meth:`SendChannel.send_batch` puts what fits and
suspends until a receiver makes room for the rest: this is the back-pressure that keeps a pipeline's
memory flat. Items move in batches (a list per call) because one call per item is what makes a naive
``asyncio.Queue`` pipeline slow; the buffer itself is a deque of items, so a batch may be split
between receivers.

Channels belong to one event loop and are not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from itertools import repeat, starmap
from time import perf_counter
from typing import Any, Generic, TypeVar

from ._errors import ClosedChannelError

__all__ = ("ChannelStatistics", "EndOfChannel", "ReceiveChannel", "SendChannel", "open_channel")

T = TypeVar("T")


class EndOfChannel(Exception):
    """Raised by a receive when every send clone is closed and the buffer is empty."""


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel."""

    buffered: int
    maxsize: int
    open_senders: int
    waiting_senders: int
    waiting_receivers: int


class _State:
    __slots__ = (
        "buffer",
        "closed_receive",
        "maxsize",
        "open_senders",
        "receive_wait_seconds",
        "receive_waited_at",
        "receive_waiters",
        "send_wait_seconds",
        "send_waiters",
    )

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.buffer: deque[Any] = deque()
        self.send_waiters: deque[asyncio.Future[None]] = deque()
        self.receive_waiters: deque[asyncio.Future[None]] = deque()
        self.open_senders = 0
        self.closed_receive = False
        # Time spent suspended, summed over all callers: "blocked on output" for the
        # producers, "waiting for input" for the consumers.
        self.send_wait_seconds = 0.0
        self.receive_wait_seconds = 0.0
        #: When a receiver last had to wait for items (perf_counter), -inf before any did.
        self.receive_waited_at = float("-inf")


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)


async def _wait(waiters: deque[asyncio.Future[None]]) -> float:
    """Suspend until woken; return the seconds spent. A cancelled waiter passes its wake-up on."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    start = perf_counter()
    try:
        await fut
    except BaseException:
        if fut.done() and not fut.cancelled():
            # We were woken and cancelled at once: hand the wake-up to the next in line.
            _wake_one(waiters)
        else:
            fut.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
        raise
    return perf_counter() - start


def open_channel(maxsize: int) -> tuple[SendChannel[Any], ReceiveChannel[Any]]:
    """Create a channel holding at most ``maxsize`` items; return its send and receive sides."""
    if maxsize < 1:
        raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
    state = _State(maxsize)
    return SendChannel(state), ReceiveChannel(state)


class SendChannel(Generic[T]):
    """The producing side of a channel. Clone it once per producer; close each clone when done."""

    __slots__ = ("_closed", "_state")

    def __init__(self, state: _State) -> None:
        self._state = state
        self._closed = False
        state.open_senders += 1

    def clone(self) -> SendChannel[T]:
        """Another send side of the same channel; the channel ends when every clone is closed."""
        if self._closed:
            raise ClosedChannelError("cannot clone a closed send channel")
        return SendChannel(self._state)

    def close(self) -> None:
        """Close this clone (idempotent). The last close wakes the receivers with end-of-stream."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        state.open_senders -= 1
        if state.open_senders == 0:
            _wake_all(state.receive_waiters)

    @property
    def maxsize(self) -> int:
        """The most items the channel buffers."""
        return self._state.maxsize

    async def send(self, item: T) -> None:
        """Put one item, suspending while the channel is full."""
        await self.send_batch([item])

    async def send_batch(self, items: list[T]) -> None:
        """Put every item of ``items`` in order, suspending whenever the channel is full.

        Cancellation may leave a prefix of ``items`` sent; the runtime only cancels a send when the
        whole run is being torn down.
        """
        if self._closed:
            raise ClosedChannelError("send on a closed send channel")
        state = self._state
        buffer = state.buffer
        while True:
            if state.closed_receive:
                raise ClosedChannelError("the receiving side of this channel is closed")
            room = state.maxsize - len(buffer)  # below 0 after the channel was narrowed
            if room >= len(items) or not items:
                buffer.extend(items)
                if state.receive_waiters:
                    _wake_one(state.receive_waiters)
                if len(buffer) < state.maxsize and state.send_waiters:
                    _wake_one(state.send_waiters)
                return
            if room > 0:
                buffer.extend(items[:room])
                items = items[room:]
                if state.receive_waiters:
                    _wake_one(state.receive_waiters)
            # Not `state.send_wait_seconds += await ...`: that reads the total before the wait,
            # and the waits of concurrent senders would overwrite each other.
            waited = await _wait(state.send_waiters)
            state.send_wait_seconds += waited

    def receivers_keep_up(self, within: float) -> bool:
        """True if a receiver waits for items now, or had to within the last ``within`` seconds:
        whoever reads this channel takes items faster than they come."""
        return _keep_up(self._state, within)

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's fill and waiters."""
        return _statistics(self._state)

    @property
    def blocked_seconds(self) -> float:
        """Total seconds senders (every clone) spent suspended on a full channel."""
        return self._state.send_wait_seconds


class ReceiveChannel(Generic[T]):
    """The consuming side of a channel. Iterate with ``async for``, or take batches."""

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    def __len__(self) -> int:
        return len(self._state.buffer)

    @property
    def maxsize(self) -> int:
        """The most items the channel buffers."""
        return self._state.maxsize

    async def receive_batch(self, max_items: int, spread: int = 1) -> list[T]:
        """Take between 1 and ``max_items`` items, suspending while the channel is empty.

        With ``spread`` > 1, take at most a ``1/spread`` share of what is buffered, so that that
        many receivers sharing the channel each get a part of a burst.
        Raises :class:`EndOfChannel` once every sender has closed and the buffer is drained.
        """
        state = self._state
        buffer = state.buffer
        while not buffer:
            if state.open_senders == 0:
                raise EndOfChannel
            if state.closed_receive:
                raise ClosedChannelError("receive on a closed receive channel")
            waited = await _wait(state.receive_waiters)  # as in send_batch: then add
            state.receive_wait_seconds += waited
            state.receive_waited_at = perf_counter()
        if spread > 1:
            max_items = min(max_items, -(-len(buffer) // spread))
        if max_items >= len(buffer):
            items = list(buffer)
            buffer.clear()
        else:
            if max_items == 1:  # slow items go one at a time
                items = [buffer.popleft()]
            else:
                # starmap calls popleft from C: twice as fast as a comprehension for large batches.
                items = list(starmap(buffer.popleft, repeat((), max_items)))
            if state.receive_waiters:
                # Items remain: let the next idle receiver have its share.
                _wake_one(state.receive_waiters)
        if state.send_waiters:
            _wake_one(state.send_waiters)
        return items

    def receivers_keep_up(self, within: float) -> bool:
        """As :meth:`SendChannel.receivers_keep_up`."""
        return _keep_up(self._state, within)

    def widen(self, maxsize: int) -> None:
        """Raise the bound to ``maxsize`` (never lowers it); suspended senders put what now fits."""
        state = self._state
        if maxsize > state.maxsize:
            state.maxsize = maxsize
            _wake_all(state.send_waiters)

    def narrow(self, maxsize: int) -> None:
        """Lower the bound to ``maxsize`` (never raises it, never below 1). Items already buffered
        stay; senders wait until the buffer has drained below the new bound."""
        state = self._state
        state.maxsize = max(1, min(maxsize, state.maxsize))

    async def receive(self) -> T:
        """Take one item (see :meth:`receive_batch`)."""
        return (await self.receive_batch(1))[0]

    def close(self) -> None:
        """Stop receiving: pending and future sends raise :class:`ClosedChannelError`."""
        state = self._state
        state.closed_receive = True
        state.buffer.clear()
        _wake_all(state.send_waiters)
        _wake_all(state.receive_waiters)

    def __aiter__(self) -> ReceiveChannel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's fill and waiters."""
        return _statistics(self._state)

    @property
    def wait_seconds(self) -> float:
        """Total seconds receivers spent suspended on an empty channel."""
        return self._state.receive_wait_seconds

    @property
    def blocked_seconds(self) -> float:
        """Total seconds senders spent suspended on a full channel."""
        return self._state.send_wait_seconds


def _keep_up(state: _State, within: float) -> bool:
    return bool(state.receive_waiters) or perf_counter() - state.receive_waited_at < within


def _statistics(state: _State) -> ChannelStatistics:
    return ChannelStatistics(
        buffered=len(state.buffer),
        maxsize=state.maxsize,
        open_senders=state.open_senders,
        waiting_senders=sum(not f.done() for f in state.send_waiters),
        waiting_receivers=sum(not f.done() for f in state.receive_waiters),
    )
