"""The runtime of one layer in one run: its workers, batching, ordering and counters.

Every backend shares this code. A worker task takes a batch from the layer's input channel, has the
backend run it, applies the error policy to a failed item, and sends the outputs on (through the
reorder buffer when the layer is ordered).

The worker count may change while the layer runs (see ``_autoscale``): :meth:`LayerRun.add_workers`
opens new slots, :meth:`LayerRun.retire_workers` lets slots finish their current batch, then closes
them.
"""

from __future__ import annotations

import asyncio
import math
import random
import reprlib
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._calls import BatchResult, _Stopped
from ._channel import EndOfChannel, ReceiveChannel, SendChannel, _wait, _wake_all
from ._errors import ItemTimeout, TooManyFailures, WorkerCrashed
from ._keyed import Keyed
from ._layer import Layer
from ._limit import attach_limit
from ._policy import Action, DeadLetter, Policy, _GiveUp
from ._report import Failure
from ._stats import LayerCounters, LayerStats
from ._taskgroup import Carried, TaskGroup, finish
from .backends import Backend, get_backend

if TYPE_CHECKING:
    from ._checkpoint import Lineage

__all__ = ("LayerRun", "short_repr")

_TaskSet = set[asyncio.Task[Any]]

#: Seconds since the caller last waited for items on ``open_stream``'s channel for it to count as
#: keeping up (see ``LayerRun._limit``).
CALLER_WINDOW = 1.0

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def short_repr(item: Any) -> str:
    """A bounded ``repr`` for naming an item in a message."""
    try:
        return _repr.repr(item)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the error
        return f"<{type(item).__name__} with a failing repr>"


class _BatchSizer:
    """Sizes batches so that one takes about ``target`` seconds, from the measured per-item time.

    The first batch is a single item; from then on the per-item time is a decaying average
    weighted by items (seconds over items, older batches fading by 0.7 per batch). Slow work goes
    one item at a time (so workers share it evenly), tiny work in large batches (so the per-batch
    cost of a hop, a pipe write or a Ray call vanishes). Weighting by items lets a large batch
    outweigh the single-item batch that opened the run, whose time is mostly the round trip: the
    size reaches its target in a couple of batches rather than a dozen.
    """

    __slots__ = ("_items", "_seconds", "cap", "per_item", "target")

    def __init__(self, target: float, cap: int) -> None:
        self.target = target
        self.cap = cap
        self.per_item: float | None = None
        self._seconds = 0.0
        self._items = 0.0

    def size(self) -> int:
        if self.per_item is None:
            return 1
        if self.per_item <= 0:
            return self.cap
        return max(1, min(self.cap, int(self.target / self.per_item)))

    def observe(self, seconds: float, items: int) -> None:
        if items <= 0:
            return
        self._seconds = 0.7 * self._seconds + seconds
        self._items = 0.7 * self._items + items
        self.per_item = self._seconds / self._items


class _Reorderer:
    """Releases batches of outputs in input order; holds at most ``limit`` early finishers."""

    __slots__ = ("_flushing", "_limit", "_next", "_pending", "_waiters")

    def __init__(self, limit: int) -> None:
        self._next = 0
        self._pending: dict[int, list[Any]] = {}
        self._flushing = False
        self._limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def widen(self, limit: int) -> None:
        """Follow a new worker count: never below the initial bound, so parked batches fit."""
        if limit > self._limit:
            self._limit = limit
            _wake_all(self._waiters)

    async def put(self, seq: int, outputs: list[Any], out: SendChannel[Any] | None) -> None:
        self._pending[seq] = outputs
        if self._flushing or seq != self._next:
            # Not our turn. Wait while too many batches are parked, so the buffer stays bounded;
            # the worker holding the head batch is never waiting here, so this cannot deadlock.
            while len(self._pending) > self._limit and seq in self._pending:
                await _wait(self._waiters)
            return
        self._flushing = True
        try:
            while self._next in self._pending:
                batch = self._pending.pop(self._next)
                self._next += 1
                if batch and out is not None:
                    await out.send_batch(batch)
                if self._waiters:
                    _wake_all(self._waiters)
        finally:
            self._flushing = False


class _Slot:
    """One worker slot of a running layer."""

    __slots__ = ("id", "idle", "in_flight", "last_end", "retiring")

    def __init__(self, slot_id: int) -> None:
        self.id = slot_id
        self.retiring = False
        #: The slot's tasks now suspended on the empty input channel (they hold no item).
        self.idle: _TaskSet = set()
        #: Batches handed to the worker and not yet back (a backend may queue two at a worker).
        self.in_flight = 0
        #: When the worker's last batch came back.
        self.last_end = 0.0

    def is_retiring(self) -> bool:
        # A call, not the attribute: the flag changes while the worker awaits.
        return self.retiring


class LayerRun:
    """One layer during one run."""

    def __init__(
        self,
        index: int,
        layer: Layer[Any, Any],
        inbox: ReceiveChannel[Any],
        outbox: SendChannel[Any] | None,
    ) -> None:
        self.index = index
        self.layer = layer
        self.inbox = inbox
        #: The next layer's input, the channel of an ``open_stream``, or None for a collector.
        self.outbox = outbox
        self.counters = LayerCounters(layer.workers)
        self.backend: Backend = get_backend(layer.backend)(layer)
        # Limit hook (see _limit): the runtime meters each hand-off of a limited layer, which
        # keeps one batch in flight per worker (a batch queued behind another starts unseen).
        self._meter = attach_limit(layer, self.counters)
        self._in_flight = 1 if self._meter is not None else self.backend.batches_in_flight
        self._sizer = _BatchSizer(self.backend.target_batch_seconds, self.backend.max_batch)
        self._room = 0 if layer.fixed_maxsize else self.backend.channel_room_per_worker
        in_flight = self._in_flight
        self._spread = layer.workers * in_flight
        self._seq = 0
        self._reorder = _Reorderer(2 * layer.workers * in_flight) if layer.ordered else None
        self._started_at = perf_counter()
        self._ended_at: float | None = None
        #: Set by the run under a checkpoint: tracks which source items are finished.
        self.lineage: Lineage | None = None
        #: Dead letters of this layer, in the order they failed (for the report).
        self.failures: list[Failure] = []
        #: Set once the layer's error policy has raised TooManyFailures.
        self._gave_up = False
        self._random = random.Random()
        self._slots: dict[int, _Slot] = {}
        # Worker count integrated over time, up to _counted_at (the last change).
        self._worker_seconds = 0.0
        self._counted_at = self._started_at
        self._opened: list[int] = []
        self._next_slot = 0
        self._workers: TaskGroup | None = None
        self._input_ended = False
        #: The next layer of the run (None for the last one): it bounds how wide this layer's
        #: input channel may grow.
        self.downstream: LayerRun | None = None
        #: Called once when :meth:`run` ends, however it ends (the autoscaler listens).
        self.on_finished: Callable[[], None] | None = None

    # --- statistics -----------------------------------------------------------------------

    def snapshot(self) -> LayerStats:
        """A frozen copy of this layer's counters, now."""
        c = self.counters
        end = self._ended_at if self._ended_at is not None else perf_counter()
        return LayerStats(
            name=self.layer.name,
            backend=self.layer.backend,
            workers=c.workers,
            received=c.received,
            emitted=c.emitted,
            failed=c.failed,
            skipped=c.skipped,
            retried=c.retried + self.backend.retried,
            restarts=self.backend.restarts,
            busy_seconds=c.busy_seconds,
            wait_seconds=self.inbox.wait_seconds,
            blocked_seconds=0.0 if self.outbox is None else self.outbox.blocked_seconds,
            busy_workers=c.busy_workers,
            queued=len(self.inbox),
            maxsize=self.inbox.maxsize,
            elapsed=end - self._started_at,
            dead_letters=c.dead_letters,
            timeouts=c.timeouts,
            worker_seconds=self._worker_seconds + c.workers * (end - self._counted_at),
            limited=self.layer.limit is not None,
            rate_wait_seconds=c.rate_wait_seconds,
            concurrency_wait_seconds=c.concurrency_wait_seconds,
        )

    # --- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Open the workers, process the input channel to its end, close the workers."""
        self._started_at = self._counted_at = perf_counter()
        layer = self.layer
        backend = self.backend
        outbox = self.outbox
        try:
            if layer.stream is not None:
                await self._run_stream(layer.stream)
                return
            async with TaskGroup() as tg:
                self._workers = tg
                for _ in range(layer.workers):
                    self._start_slot(tg)
        except BaseException:
            backend.stop()
            raise
        finally:
            self._workers = None
            try:
                if outbox is not None:
                    outbox.close()
                await finish(self._close_workers(self._opened))
            finally:
                self._ended_at = perf_counter()
                if self.on_finished is not None:
                    self.on_finished()

    # --- changing the worker count --------------------------------------------------------

    @property
    def accepts_workers(self) -> bool:
        """True while workers can still be added or retired (running, input not at its end)."""
        return self._workers is not None and not self._input_ended

    def add_workers(self, count: int) -> int:
        """Open ``count`` more worker slots; return how many were started (0 once ending).

        A new slot is opened like the first ones (a stateful worker builds its instance once);
        it is counted in ``workers`` from now on.
        """
        tg = self._workers
        if tg is None or self._input_ended or count <= 0:
            return 0
        self._count_worker_time()
        for _ in range(count):
            self._start_slot(tg)
        self.counters.workers += count
        self._resize()
        return count

    def retire_workers(self, count: int) -> int:
        """Retire up to ``count`` workers, keeping at least one; return how many were retired.

        A retired worker takes no new batch: it finishes the batch it holds, sends its outputs,
        and its slot is closed (a stateful worker's instance with it). Idle workers go first and
        leave at once.
        """
        if not self.accepts_workers:
            return 0
        live = [s for s in self._slots.values() if not s.retiring]
        count = min(count, len(live) - 1)
        if count <= 0:
            return 0
        # Idle slots first, newest first: they hold nothing, so they leave at once.
        live.sort(key=lambda s: (bool(s.idle), s.id), reverse=True)
        self._count_worker_time()
        for slot in live[:count]:
            slot.retiring = True
            for task in list(slot.idle):
                task.cancel()
        self.counters.workers -= count
        self._resize()
        return count

    def _count_worker_time(self) -> None:
        now = perf_counter()
        self._worker_seconds += self.counters.workers * (now - self._counted_at)
        self._counted_at = now

    def _resize(self) -> None:
        in_flight = self._in_flight
        live = self.counters.workers
        self._spread = live * in_flight
        if self._reorder is not None:
            self._reorder.widen(2 * live * in_flight)

    def _start_slot(self, tg: TaskGroup) -> None:
        slot = _Slot(self._next_slot)
        self._next_slot += 1
        self._slots[slot.id] = slot
        tg.start(self._open_and_work(slot), name=f"async_flow:{self.layer.name}")

    async def _close_workers(self, slots: list[int]) -> None:
        """Close every opened slot, even if closing one of them fails."""
        errors: list[BaseException] = []
        for slot in slots:
            try:
                await self.backend.close_worker(slot)
            except Exception as exc:  # noqa: BLE001 - raised below, after the others closed
                exc.add_note(
                    f"async_flow: raised while closing worker {slot} of layer"
                    f" {self.layer.name!r} (#{self.index})"
                )
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _open_and_work(self, slot: _Slot) -> None:
        # Recorded before opening: a slot cancelled half-open is still closed.
        self._opened.append(slot.id)
        try:
            await self.backend.open_worker(slot.id)
        except Exception as exc:
            exc.add_note(
                f"async_flow: raised while starting worker {slot.id} of layer"
                f" {self.layer.name!r} (#{self.index})"
            )
            raise
        in_flight = self._in_flight
        if in_flight == 1:
            await self._work(slot)
        else:
            async with TaskGroup() as tg:
                for _ in range(in_flight):
                    tg.start(self._work(slot), name=f"async_flow:{self.layer.name}")
        if slot.retiring:
            # Retired (not ended with the input): close the slot now, not at the end of the run.
            self._opened.remove(slot.id)
            del self._slots[slot.id]
            await finish(self.backend.close_worker(slot.id))

    async def _work(self, slot: _Slot) -> None:
        outbox = self.outbox.clone() if self.outbox is not None else None
        task = asyncio.current_task()
        assert task is not None
        try:
            inbox = self.inbox
            counters = self.counters
            sizer = self._sizer
            reorder = self._reorder
            lineage = self.lineage
            slot_id = slot.id
            idle = slot.idle
            run_batch = self.backend.run_batch
            room = self._room
            meter = self._meter
            seq = 0
            while True:
                if slot.retiring:
                    return
                idle.add(task)
                size = sizer.size() if meter is None else meter.size(sizer.size())  # limit hook
                try:
                    items = await inbox.receive_batch(size, self._spread)
                except EndOfChannel:
                    self._input_ended = True
                    # Under a checkpoint the collector may still owe the ledger some keys.
                    if lineage is None or not lineage.owed(self.index):
                        return
                    items = []
                except asyncio.CancelledError:
                    # Retiring cancels only a task waiting here, holding no item; any other
                    # cancellation (the run stopping) is still pending after uncancel().
                    if slot.is_retiring() and task.uncancel() == 0:
                        return
                    raise
                finally:
                    idle.discard(task)
                if reorder is not None:
                    seq = self._seq
                    self._seq = seq + 1
                n = len(items)
                counters.received += n
                extra = 0 if lineage is None else lineage.before(self.index, items)
                if meter is not None and n:  # limit hook: wait for the batch's starts
                    await meter.enter(n)
                start = perf_counter()
                if slot.in_flight == 0:
                    counters.busy_workers += 1
                slot.in_flight += 1
                try:
                    try:
                        result = await run_batch(slot_id, items)
                    except WorkerCrashed as crashed:  # as in _run_batch, without its frame
                        result = BatchResult([], 0, crashed)
                    finally:
                        if meter is not None and n:  # limit hook: the batch is back
                            meter.exit(n)
                    worked = result.seconds
                    outputs = result.outputs
                    if result.error is not None:
                        outputs = await self._recover(
                            slot_id, items, result.done, result.error, outputs
                        )
                finally:
                    # A worker serves its batches one after the other: a batch queued behind
                    # another one is served from when that one came back. Counting from there
                    # keeps a worker's busy time a time (never two batches at once) and gives
                    # the sizer the batch's own cost, not its wait in the queue.
                    end = perf_counter()
                    served = max(0.0, end - max(start, slot.last_end))
                    slot.last_end = end
                    slot.in_flight -= 1
                    if slot.in_flight == 0:
                        counters.busy_workers -= 1
                    counters.busy_seconds += served
                sizer.observe(served if worked is None else worked, n + extra)
                if room:
                    self._fit_inbox()
                if lineage is not None:
                    lineage.after(self.index, items, outputs)
                counters.emitted += len(outputs) - extra
                if reorder is not None:
                    await reorder.put(seq, outputs, outbox)
                elif outputs and outbox is not None:
                    await outbox.send_batch(outputs)
        finally:
            if outbox is not None:
                outbox.close()

    def _intake(self) -> float:
        """How wide the layer above may let its channel into this layer grow (inf: no limit).

        A layer whose items are tiny (its batches at the backend's cap), like a helper such as
        ``af.batch``, takes in whatever comes as fast as it comes, so it sets no limit of its
        own; otherwise it takes a batch for each batch in flight. Either way it passes on the
        limit of the layers below it: a cheap layer in front of a slow one takes in no faster
        than the slow one.
        """
        sizer = self._sizer
        base = self.layer.maxsize
        below = max(base, self._limit())
        if self.layer.stream is not None:  # a helper on the loop (af.batch, ...): no batches
            return below
        if sizer.per_item is not None and sizer.size() >= sizer.cap:
            return below
        return min(below, max(base, self._spread * sizer.size()))

    def _limit(self) -> float:
        """How wide the layers below let this layer's input channel grow (inf: no limit)."""
        if self.downstream is not None:
            return self.downstream._intake()
        outbox = self.outbox
        if outbox is not None:
            # The caller's channel (``open_stream``): its reader's pace is only known from how it
            # reads. One that keeps finding the channel empty takes in whatever comes; one that
            # does not (it reads slowly, or not at all) holds the layers to the channel's bound.
            if outbox.receivers_keep_up(CALLER_WINDOW):
                return math.inf
            return outbox.maxsize
        return math.inf

    def _fit_inbox(self) -> None:
        """Size the input channel for this layer's batches, within the room the backend allows.

        Batches are cut from what the channel holds, so tiny items need a wide channel to travel
        in large batches: one batch for every batch in flight. The channel is never wider than
        what the layers below can take in (see :meth:`_intake`; a caller's output channel, its
        declared bound): a cheap layer held back by a slow one keeps its declared bound, so
        memory stays as flat as with fixed bounds. The bound grows at most twofold per batch and
        falls back when the items turn slow or a layer below does.
        """
        spread_size = self._spread * self._sizer.size()
        want = int(min(spread_size, self._room * self.counters.workers, self._limit()))
        want = max(want, self.layer.maxsize)
        inbox = self.inbox
        current = inbox.maxsize
        if want > current:
            inbox.widen(min(want, 2 * current))
        elif 2 * want <= current:
            inbox.narrow(want)

    async def _recover(
        self, slot: int, items: list[Any], done: int, error: BaseException, outputs: list[Any]
    ) -> list[Any]:
        """``items[done]`` raised ``error``: apply the layer's error policy to it, run the rest of
        the batch, and so on until the batch is through. Returns the batch's outputs in order.

        Only ``Exception`` reaches the policy. A retried item runs again alone at the head of the
        rest of its batch, in the same worker, so an ordered layer's outputs stay in order.
        """
        counters = self.counters
        policy = self.layer.on_error
        outputs = list(outputs)
        failures = 1  # how many times items[done] has failed
        while True:
            item = items[done]
            # Under a checkpoint items travel wrapped with their source key: name the item itself.
            shown = item.value if isinstance(item, Keyed) else item
            if isinstance(error, ItemTimeout):
                counters.timeouts += 1
            if not isinstance(error, Exception):
                counters.failed += 1
                self._annotate(error, shown)
                raise Carried(error)
            if isinstance(error, _Stopped):  # the run is being torn down
                raise error
            decision = policy.decide(error, failures, self._random.random())
            action = decision.action
            if action is Action.RETRY:
                counters.retried += 1
                if decision.delay > 0:
                    await asyncio.sleep(decision.delay)
                start = done
            elif action is Action.SKIP:
                counters.skipped += 1
                if self.lineage is not None:  # not finished: a resumed run does it again
                    self.lineage.drop(item)
                self._check_threshold(decision.policy, counters.skipped, error, shown)
                start = done + 1
            elif action is Action.DEAD_LETTER:
                counters.failed += 1
                counters.dead_letters += 1
                if self.lineage is not None:
                    self.lineage.drop(item)
                await self._dead_letter(decision.policy, shown, error)
                self._check_threshold(decision.policy, counters.dead_letters, error, shown)
                start = done + 1
            else:
                counters.failed += 1
                self._annotate(error, shown)
                if failures > 1:
                    error.add_note(f"async_flow: the item failed {failures} times")
                raise error
            if start >= len(items):
                return outputs
            result = await self._run_batch(slot, items[start:])
            outputs.extend(result.outputs)
            if result.error is None:
                return outputs
            failures = failures + 1 if (start == done and result.done == 0) else 1
            done = start + result.done
            error = result.error

    async def _run_batch(self, slot: int, items: list[Any]) -> BatchResult:
        """``backend.run_batch``; a raised ``WorkerCrashed`` becomes the first item's error."""
        meter = self._meter
        n = len(items)
        if meter is not None:  # limit hook: a retry is a start (its wait is not busy time)
            await meter.enter(n, in_busy=True)
        try:
            return await self.backend.run_batch(slot, items)
        except WorkerCrashed as crashed:
            return BatchResult([], 0, crashed)
        finally:
            if meter is not None:
                meter.exit(n)

    def _check_threshold(self, policy: Policy, given_up: int, error: Exception, item: Any) -> None:
        if not isinstance(policy, _GiveUp):
            return
        # Measured against every item received so far, including those other workers hold: a
        # little lenient while batches are in flight, never alarmed by an early burst.
        reason = policy.exceeded(given_up, self.counters.received)
        if reason is not None and self._gave_up:
            # Another worker's failure already crossed the threshold and is stopping the run:
            # one TooManyFailures says it, this worker just stops (its item counts as skipped or
            # dead-lettered all the same).
            raise asyncio.CancelledError
        if reason is not None:
            self._gave_up = True
            raise TooManyFailures(
                f"layer {self.layer.name!r} gave up: {reason}; last on item {short_repr(item)}:"
                f" {type(error).__name__}: {error}"
            ) from error

    async def _dead_letter(self, policy: Policy, item: Any, error: Exception) -> None:
        failure = Failure(
            layer=self.layer.name,
            item=short_repr(item),
            error_type=type(error).__qualname__,
            message=str(error),
            traceback="".join(traceback.format_exception(error)),
        )
        self.failures.append(failure)
        if isinstance(policy, DeadLetter):
            try:
                await policy.deliver(item, failure)
            except Exception as exc:
                exc.add_note(
                    f"async_flow: raised by the dead-letter sink of layer {self.layer.name!r}"
                    f" on item {short_repr(item)}"
                )
                raise

    def _annotate(self, error: BaseException, item: Any) -> None:
        error.add_note(
            f"async_flow: raised in layer {self.layer.name!r} (#{self.index})"
            f" on item {short_repr(item)}"
        )

    async def _run_stream(
        self, stream: Callable[[ReceiveChannel[Any]], AsyncIterator[list[Any]]]
    ) -> None:
        """Run a stream layer: one function that reads the whole input channel."""
        counters = self.counters
        outbox = self.outbox
        counting = _CountingReceiver(self.inbox, counters)
        async for outputs in stream(counting):  # type: ignore[arg-type]
            counters.emitted += len(outputs)
            if outputs and outbox is not None:
                await outbox.send_batch(outputs)


class _CountingReceiver:
    """A receive side that counts what a stream layer takes, for its stats."""

    __slots__ = ("_counters", "_inbox")

    def __init__(self, inbox: ReceiveChannel[Any], counters: LayerCounters) -> None:
        self._inbox = inbox
        self._counters = counters

    async def receive_batch(self, max_items: int, spread: int = 1) -> list[Any]:
        items = await self._inbox.receive_batch(max_items, spread)
        self._counters.received += len(items)
        return items

    def __len__(self) -> int:
        return len(self._inbox)
