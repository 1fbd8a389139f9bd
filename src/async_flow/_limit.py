"""Limits: how fast, and how many at once, the layers sharing one budget may start items.

``Limit(rate=20, concurrency=8)`` is declared once and given to any number of layers
(``Layer(fetch, 32, limit=api)``); together they start at most ``rate`` items per second (a token
bucket holding up to ``burst`` tokens) and run at most ``concurrency`` items at once.

Where the metering happens, per backend (the parent always meters: a worker never sees the limit):

- **async**: the items start on the run's own event loop, so each item of a batch takes its token
  and its concurrency unit just before its call and gives the unit back after it. Batches stay as
  large as without a limit; an unused limit costs one check per item.
- **thread, process, ray**: the parent cannot see when a worker starts the items of a batch: a
  batch of k items sent at once would start k items over a time the parent does not see, and
  items queued behind a running batch would start late and bunch up with later ones. So a limited
  layer hands each worker **one item at a time, one in flight per worker**: the token and the unit
  are taken right before the item is sent and the unit is given back when its result is back. The
  start the parent meters is then the worker's start, up to one hop (microseconds for a thread,
  about a millisecond for a process, more for a remote actor). The price is a hop per item, which
  a call worth rate-limiting dwarfs; a layer that wants large batches of tiny items should not be
  limited item by item (limit the layer that calls the service, or group items with
  ``af.batch()`` so that one item is one call).

A retry (``af.Retry``) is a new start: it waits for a token and a unit like a first attempt.

Why not aiolimiter (or pyrate-limiter) for the bucket: the budget here must be shared by layers
on different event loops (two runs in two threads), read a clock that tests control, and wait for
a concurrency unit *before* the token (so that an item never holds a token while it queues for a
unit, which would let starts bunch up); aiolimiter binds its waiters to one loop and reads the
loop's clock, and neither library couples the two limits. The bucket is a GCRA (a token bucket
written as one "theoretical arrival time"), a dozen lines under one lock: each start reserves its
instant in first-come order, so no waiter is woken to find the token gone.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._autoscale import Clock
    from ._calls import WorkerCall
    from ._layer import Layer
    from ._stats import LayerCounters
    from .backends import Backend

__all__ = ("Limit", "Meter", "attach_limit")


class Limit:
    """A budget of item starts shared by every layer given it: a rate and/or a concurrency cap.

    ``rate`` is item starts per second across all the layers sharing the limit, metered by a token
    bucket that holds up to ``burst`` tokens (default: one second's worth, ``ceil(rate)``): after a
    quiet spell up to ``burst`` items start at once, and in any span of ``t`` seconds at most
    ``burst + rate * t`` items start. ``concurrency`` is how many items may run at once across
    those layers. Either may be ``None`` (no such limit), not both. A retry counts as a start.

    Both hold on every backend: the run meters each item before a worker gets it (see
    ``docs/limits.md`` for how batches are handed to threads, processes and actors). An item waits
    first for a concurrency unit, then for its token, then starts at once. Time spent waiting is
    shown per layer (``LayerStats.limit_seconds``, progress, the report), and the diagnosis names
    a layer that the limit, not its workers, held back; the autoscaler does not add workers to
    such a layer.

    ``clock`` (tests) is what the bucket reads and sleeps on: an object with ``now()`` and
    ``call_later(delay, callback)`` such as ``async_flow._autoscale.ManualClock``; by default the
    system's monotonic clock. One limit may serve several runs at once, in one event loop or in
    several.

    Example::

        >>> import async_flow as af
        >>> api = af.Limit(rate=20, concurrency=8)
        >>> api
        Limit(rate=20, concurrency=8, burst=20)
        >>> layers = [af.Layer(str, 32, limit=api), af.Layer(repr, 32, limit=api)]
        >>> af.Layer(str, 50, rate=100).limit
        Limit(rate=100, burst=100)
    """

    __slots__ = (
        "_clock",
        "_depth",
        "_interval",
        "_lock",
        "_running",
        "_sleeping",
        "_tat",
        "_waiters",
        "burst",
        "concurrency",
        "rate",
    )

    def __init__(
        self,
        rate: float | None = None,
        concurrency: int | None = None,
        burst: int | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        if rate is None and concurrency is None:
            raise ValueError("Limit: give a rate (starts per second), a concurrency, or both")
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not rate > 0
            or math.isinf(rate)
        ):
            raise ValueError(f"Limit: rate must be a number > 0 (starts per second), got {rate!r}")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(f"Limit: concurrency must be an int >= 1, got {concurrency!r}")
        if burst is not None:
            if rate is None:
                raise ValueError("Limit: burst needs a rate")
            if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                raise ValueError(f"Limit: burst must be an int >= 1, got {burst!r}")
        self.rate: float | None = rate
        self.concurrency: int | None = concurrency
        self.burst: int | None = (
            None if rate is None else (burst if burst is not None else max(1, math.ceil(rate)))
        )
        self._clock = clock
        self._lock = threading.Lock()
        # GCRA: the instant the next start would be due if starts came exactly at the rate. A
        # start may happen up to (burst - 1) intervals before it: that is the bucket's depth.
        self._tat = -math.inf
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._depth = 0.0 if self.burst is None else (self.burst - 1) * self._interval
        self._running = 0
        self._sleeping = 0  # items holding a start (and a unit) that wait for its instant
        # Items waiting for a concurrency unit, first come first.
        self._waiters: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        parts = []
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}")
        if self.concurrency is not None:
            parts.append(f"concurrency={self.concurrency}")
        if self.burst is not None:
            parts.append(f"burst={self.burst}")
        return f"Limit({', '.join(parts)})"

    def __reduce__(self) -> Any:
        # A limit is the parent's: it never travels to a worker (a Layer leaves it behind).
        raise TypeError("an af.Limit cannot be pickled: the run meters items in the parent")

    # --- the bucket and the units (called by Meter) -----------------------------------------

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.monotonic()

    def _reserve(self, now: float) -> tuple[float, float]:
        """Reserve the next start: the instant it may happen (``now`` or later), and the
        bucket's state after it (to give the token back). Under the lock."""
        tat = self._tat if self._tat > now else now
        due = tat - self._depth
        self._tat = tat + self._interval
        return (due if due > now else now), self._tat

    def _try_start(self) -> bool:
        """Take a unit and a token if both are free right now (the path of an unused limit)."""
        with self._lock:
            if self.concurrency is not None and (
                self._running >= self.concurrency or self._waiters
            ):
                return False
            if self._interval:
                now = self._now()
                tat = self._tat if self._tat > now else now
                if tat - self._depth > now:
                    return False
                self._tat = tat + self._interval
            if self.concurrency is not None:
                self._running += 1
            return True

    async def _take_unit(self) -> None:
        """Wait for a concurrency unit (first come, first served)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            assert self.concurrency is not None
            if self._running < self.concurrency and not self._waiters:
                self._running += 1
                return
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter.handed:
                    # A release handed its unit over just as this wait ended: pass it on.
                    self._release_locked()
                else:
                    self._waiters.remove(waiter)
            raise
        # Woken by a release that handed its unit over: _running already counts it.

    def _release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        # Hand the unit to the first waiter (it stays counted), else give it back.
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.loop.is_closed():
                continue
            waiter.handed = True
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if here is waiter.loop:
                waiter.wake()
            else:  # a run on another loop (another thread) shares the limit
                waiter.loop.call_soon_threadsafe(waiter.wake)
            return
        self._running -= 1

    async def _sleep_until(self, due: float) -> None:
        clock = self._clock
        while (delay := due - self._now()) > 0:
            if clock is None:
                await asyncio.sleep(delay)
                continue
            waiter = _Waiter(asyncio.get_running_loop())
            timer = clock.call_later(delay, waiter.wake)
            try:
                await waiter.future
            finally:
                timer.cancel()

    def _refund(self, reserved: float) -> None:
        """A reserved start that will not happen: give its token back if none came after it."""
        with self._lock:
            if self._tat == reserved:
                self._tat -= self._interval


class _Waiter:
    """An item waiting for a unit or a timer, on its own event loop."""

    __slots__ = ("future", "handed", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        #: Set (under the limit's lock) when a release hands this waiter its unit.
        self.handed = False

    def wake(self) -> None:
        # A cancelled waiter's unit is passed on by the waiter itself (see _take_unit).
        if not self.future.done():
            self.future.set_result(None)


class Meter:
    """One layer's use of a :class:`Limit` in one run: it takes starts and counts the waits.

    ``enter()`` before an item starts (first a concurrency unit, then a token), ``exit()`` when it
    is done. The waits go to the layer's counters (``rate_wait_seconds``,
    ``concurrency_wait_seconds``); with ``in_busy`` (the wait happens inside time counted as
    busy) it is taken off ``busy_seconds``, so that a layer waiting on its limit does not look
    busy.
    """

    __slots__ = ("_concurrency", "_limit", "_rate", "counters")

    def __init__(self, limit: Limit, counters: LayerCounters) -> None:
        self._limit = limit
        self._rate = limit.rate is not None
        self._concurrency = limit.concurrency is not None
        self.counters = counters

    async def enter(self, in_busy: bool = False) -> None:
        limit = self._limit
        if limit._try_start():
            return
        counters = self.counters
        clock = limit._now
        waited = 0.0
        if self._concurrency:
            began = clock()
            sleeping = limit._sleeping
            await limit._take_unit()
            spent = clock() - began
            # Units held by items that wait for their token mean the rate holds this item back,
            # not the concurrency: that share of the wait counts as a wait on the rate.
            assert limit.concurrency is not None
            share = min(1.0, (sleeping + limit._sleeping) / (2 * limit.concurrency))
            counters.rate_wait_seconds += spent * share
            counters.concurrency_wait_seconds += spent * (1.0 - share)
            waited += spent
        if self._rate:
            # After the unit, not before: a token taken while queueing for a unit would let
            # this start come late and bunch up with the starts of later tokens.
            with limit._lock:
                began = clock()
                due, reserved = limit._reserve(began)
                if due > began:
                    limit._sleeping += 1
            if due > began:
                try:
                    await limit._sleep_until(due)
                except BaseException:
                    limit._refund(reserved)
                    if self._concurrency:
                        limit._release()
                    raise
                finally:
                    with limit._lock:
                        limit._sleeping -= 1
                spent = clock() - began
                counters.rate_wait_seconds += spent
                waited += spent
        if in_busy:
            counters.busy_seconds -= waited

    def exit(self) -> None:
        if self._concurrency:
            self._limit._release()

    def wrap(self, wc: WorkerCall) -> WorkerCall:
        """``wc`` with each call metered: for a backend whose items start on the run's loop."""
        from ._calls import WorkerCall
        from ._layer import Kind

        call, kind = wc.call, wc.kind
        enter, exit_ = self.enter, self.exit
        try_start = self._limit._try_start
        wrapped: Callable[[Any], Any]
        if kind is Kind.AMAP or kind is Kind.MAP:
            is_async = kind is Kind.AMAP

            async def one(item: Any) -> Any:
                if not try_start():
                    await enter(True)
                try:
                    return (await call(item)) if is_async else call(item)
                finally:
                    exit_()

            wrapped, new_kind = one, Kind.AMAP
        else:
            is_async = kind is Kind.AFLAT

            async def many(item: Any) -> AsyncIterator[Any]:
                if not try_start():
                    await enter(True)
                try:
                    if is_async:
                        async for y in call(item):
                            yield y
                    else:
                        for y in call(item):
                            yield y
                finally:
                    exit_()

            wrapped, new_kind = many, Kind.AFLAT
        return WorkerCall(wrapped, new_kind, wc.instance, wc.entered)


def attach_limit(layer: Layer[Any, Any], counters: LayerCounters, backend: Backend) -> Meter | None:
    """Set up a layer's metering for one run: the meter the runtime applies to each hand-off.

    None when the layer has no limit, or when its backend starts the items on the run's loop and
    meters each call itself (it is given the meter).
    """
    if layer.limit is None:
        return None
    meter = Meter(layer.limit, counters)
    if backend.meters_items:
        backend.meter = meter
        return None
    return meter
