"""Limits: how fast, and how many at once, the layers sharing one budget may start items.

``Limit(rate=20, concurrency=8)`` is declared once and given to any number of layers
(``Layer(fetch, 32, limit=api)``); together they start at most ``rate`` items per second (a token
bucket holding up to ``burst`` tokens) and run at most ``concurrency`` items at once.

How the parent meters batches, on every backend alike (a worker never sees the limit): the run
hands a worker a batch of items and the worker runs them one after another, at times the parent
does not see. So a hand-off of ``k`` items takes **one concurrency unit** (at most one of its items
runs at any moment) and **k tokens**: the first is the start that happens now, the other ``k - 1``
are *outstanding* until the batch is back, and while they are, the bucket refills to ``burst``
less what is outstanding. Tokens in the bucket plus tokens outstanding never exceed ``burst``, so
in any span of ``t`` seconds at most ``burst + rate * t`` items start, wherever and whenever inside
its batch each one starts. Batches are capped to the tokens at hand (and to ``burst``); a limit
that binds thus hands out items one by one, an unused one costs two checks per batch. A limited
layer keeps one batch in flight per worker, so that a batch never waits behind another one: its
first item starts one hop after the parent metered it (microseconds for a thread, about a
millisecond for a process, more for a remote actor).

A retry (``af.Retry``) is a new start: it waits for a token and a unit like a first attempt.

Why not aiolimiter (or pyrate-limiter) for the bucket: the budget here must be shared by layers
on different event loops (two runs in two threads), read a clock that tests control, and wait for
a concurrency unit *before* the token (so that an item never holds a token while it queues for a
unit, which would let starts bunch up), and hold back tokens a batch has not spent yet (above);
aiolimiter binds its waiters to one loop, reads the loop's clock, and none of this has a place in
it. The bucket is a GCRA (a token bucket written as one "theoretical arrival time"), a few lines
under one lock: each start reserves its instant in first-come order, so no waiter is woken to
find the token gone.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._autoscale import Clock
    from ._layer import Layer
    from ._stats import LayerCounters

__all__ = ("Limit", "Meter", "attach_limit")


class Limit:
    """A budget of item starts shared by every layer given it: a rate and/or a concurrency cap.

    ``rate`` is item starts per second across all the layers sharing the limit, metered by a token
    bucket that holds up to ``burst`` tokens (default: one second's worth, ``ceil(rate)``): after a
    quiet spell up to ``burst`` items start at once, and in any span of ``t`` seconds at most
    ``burst + rate * t`` items start. ``concurrency`` is how many items may run at once across
    those layers. Either may be ``None`` (no such limit), not both. A retry counts as a start.

    Both hold on every backend, batches included: the run meters each batch before a worker gets
    it (see the module docstring and ``docs/limits.md``). A batch waits first for a concurrency
    unit, then for its tokens, then starts at once. Time spent waiting is
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
        "_outstanding",
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
        self._outstanding = 0  # tokens of batches in flight that their items have not spent
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

    def _clamped(self, now: float) -> float:
        """The bucket's state now: full at most to ``burst`` less the outstanding tokens.

        A full bucket is ``tat <= now``; each outstanding token keeps one interval of it empty.
        Applied whenever the outstanding count changes, so that the cap holds at every instant.
        """
        floor = now + self._outstanding * self._interval
        return self._tat if self._tat > floor else floor

    def _try_start(self, k: int) -> bool:
        """Take a unit and ``k`` tokens if all are free right now (the path of an unused limit)."""
        with self._lock:
            if self.concurrency is not None and (
                self._running >= self.concurrency or self._waiters
            ):
                return False
            if self._interval:
                now = self._now()
                tat = self._clamped(now)
                if tat + (k - 1) * self._interval - self._depth > now:
                    return False
                self._tat = tat + k * self._interval
                self._outstanding += k - 1
            if self.concurrency is not None:
                self._running += 1
            return True

    def _reserve(self, k: int, now: float) -> tuple[float, float]:
        """Reserve ``k`` starts: the instant the last of them is due (``now`` or later), and the
        bucket's state after them (to give them back). Under the lock."""
        tat = self._clamped(now)
        due = tat + (k - 1) * self._interval - self._depth
        self._tat = tat + k * self._interval
        return (due if due > now else now), self._tat

    def _hold_back(self, k: int) -> None:
        """``k`` tokens of a batch being sent are not spent yet (see the module docstring)."""
        with self._lock:
            self._tat = self._clamped(self._now())
            self._outstanding += k

    def _spent(self, k: int) -> None:
        """A batch is back: its ``k`` outstanding tokens were spent by its items."""
        with self._lock:
            self._tat = self._clamped(self._now())
            self._outstanding -= k

    def _at_hand(self) -> int:
        """How many tokens the bucket holds now (a batch is cut to them)."""
        with self._lock:
            now = self._now()
            return int(self.burst or 0) - math.ceil((self._clamped(now) - now) / self._interval)

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

    def _refund(self, k: int, reserved: float) -> None:
        """Reserved starts that will not happen: give their tokens back if none came after."""
        with self._lock:
            if self._tat == reserved:
                self._tat -= k * self._interval


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
    """One layer's use of a :class:`Limit` in one run: it meters hand-offs and counts the waits.

    :meth:`size` cuts a batch to what the limit allows now; :meth:`enter` waits for the batch's
    unit, then its tokens; :meth:`exit` when the batch is back. The waits go to the layer's
    counters (``rate_wait_seconds``, ``concurrency_wait_seconds``); with ``in_busy`` (a retry,
    waiting inside time counted as busy) they are taken off ``busy_seconds``, so that a layer
    waiting on its limit does not look busy.
    """

    __slots__ = ("_concurrency", "_limit", "_rate", "counters")

    def __init__(self, limit: Limit, counters: LayerCounters) -> None:
        self._limit = limit
        self._rate = limit.rate is not None
        self._concurrency = limit.concurrency is not None
        self.counters = counters

    def size(self, wanted: int) -> int:
        """The batch to take: ``wanted`` items, cut to the tokens at hand (at least one)."""
        if not self._rate or wanted <= 1:
            return wanted
        return max(1, min(wanted, self._limit._at_hand()))

    async def enter(self, k: int, in_busy: bool = False) -> None:
        """Wait until a batch of ``k`` items (``k <= burst``) may be handed to a worker."""
        limit = self._limit
        if limit._try_start(k):
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
                due, reserved = limit._reserve(k, began)
                if due > began:
                    limit._sleeping += 1
            if due > began:
                try:
                    await limit._sleep_until(due)
                except BaseException:
                    limit._refund(k, reserved)
                    if self._concurrency:
                        limit._release()
                    raise
                finally:
                    with limit._lock:
                        limit._sleeping -= 1
                spent = clock() - began
                counters.rate_wait_seconds += spent
                waited += spent
            if k > 1:
                limit._hold_back(k - 1)
        if in_busy:
            counters.busy_seconds -= waited

    def exit(self, k: int) -> None:
        """The batch of ``k`` items is back: its unit is free, its tokens spent."""
        limit = self._limit
        if self._rate and k > 1:
            limit._spent(k - 1)
        if self._concurrency:
            limit._release()


def attach_limit(layer: Layer[Any, Any], counters: LayerCounters) -> Meter | None:
    """The meter the runtime applies to each hand-off of ``layer`` in one run (None: no limit)."""
    return None if layer.limit is None else Meter(layer.limit, counters)
