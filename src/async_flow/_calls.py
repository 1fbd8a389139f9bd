"""Calling a layer's function on a batch of items: the code every backend shares.

A worker receives a batch (a list of items) and runs the layer's callable on each, collecting the
outputs, until the batch ends or an item raises. It then returns a :class:`BatchResult`; the
runtime decides what an error means (fail the run, skip, retry) and resubmits the rest of the batch.
One call per batch, not per item, is what keeps the per-item cost low on every backend: a thread
hop, a pipe write or a Ray call is paid once for many items.

The same functions run on the event loop (async backend), in a worker thread, in a worker process
and inside a Ray actor.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from time import monotonic, perf_counter
from typing import Any, NamedTuple

from ._errors import ItemTimeout
from ._keyed import keyed_call
from ._layer import Kind, Layer

__all__ = (
    "BatchResult",
    "Progress",
    "StopFlag",
    "WorkerCall",
    "close_worker_call_async",
    "close_worker_call_sync",
    "item_timeout",
    "open_worker_call_async",
    "open_worker_call_sync",
    "run_batch_async",
    "run_batch_sync",
)


class BatchResult(NamedTuple):
    """What a worker made of a batch.

    ``outputs`` are the outputs of ``items[:done]`` in order. If ``error`` is set, ``items[done]``
    raised it and ``items[done + 1:]`` were not tried. ``seconds``, when the worker measured it,
    is the time the items took where they ran, without the hop there and back: the batch sizer
    prefers it, so that a hop's cost does not pass for the items' own.
    """

    outputs: list[Any]
    done: int
    error: BaseException | None
    seconds: float | None = None


class StopFlag:
    """Set from the event loop to make a thread stop between two items of its batch."""

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped = False


class _Stopped(Exception):
    """The batch was abandoned between two items because its run is stopping."""


def run_batch_sync(
    call: Callable[[Any], Any],
    kind: Kind,
    items: list[Any],
    stop: StopFlag | None = None,
    runner: asyncio.Runner | None = None,
    per_item: float | None = None,
    progress: Progress | None = None,
    name: str = "",
) -> BatchResult:
    """Run ``call`` on each item, in this thread. Async kinds need ``runner`` (a private loop).

    With ``progress``, each item's start is published so that the event loop can time it out
    (see :class:`Progress`); ``per_item`` (the layer's timeout) cancels async items on the
    private loop.
    """
    if kind.is_async:
        if runner is None:
            raise RuntimeError("an async function needs an event loop runner in this worker")
        return runner.run(run_batch_async(call, kind, items, stop, per_item, progress, name))
    if progress is not None:
        return _run_watched_sync(call, kind, items, stop, progress)
    outputs: list[Any] = []
    i = 0
    start = perf_counter()
    try:
        if kind is Kind.MAP:
            # One output per item: after a failure, len(outputs) names the failing item (a list
            # extended from an iterator keeps what it got). A large batch is run in chunks of
            # 64 items or 1/32 of the batch, with the stop flag read between them: a batch is
            # sized to take a few milliseconds, so a stop waits for a fraction of one, and tiny
            # items run without a check each. A small batch (slower items) checks at each item.
            n = len(items)
            if stop is None:
                outputs.extend(map(call, items))
            elif n < 64:
                append = outputs.append
                for item in items:
                    if stop.stopped:
                        raise _Stopped
                    append(call(item))
            else:
                extend = outputs.extend
                step = max(64, n >> 5)
                for j in range(0, n, step):
                    if stop.stopped:
                        raise _Stopped
                    extend(map(call, items[j : j + step]))
        else:
            extend = outputs.extend
            for i, item in enumerate(items):  # noqa: B007
                if stop is not None and stop.stopped:
                    raise _Stopped
                # Materialise one item's outputs before keeping any, so that an item that fails
                # half-way contributes nothing (it may be retried).
                extend(list(call(item)))
    except BaseException as exc:  # noqa: BLE001 - even SystemExit: the runtime re-raises it after clean-up
        if kind is Kind.MAP:
            i = len(outputs)
        return BatchResult(outputs, i, exc, perf_counter() - start)
    return BatchResult(outputs, len(items), None, perf_counter() - start)


async def run_batch_async(
    call: Callable[[Any], Any],
    kind: Kind,
    items: list[Any],
    stop: StopFlag | None = None,
    per_item: float | None = None,
    progress: Progress | None = None,
    name: str = "",
) -> BatchResult:
    """Run ``call`` on each item on the running loop (sync callables are called inline).

    ``stop`` is checked between items when the batch runs on a thread's private loop. With
    ``per_item`` (the layer's timeout, in seconds), an async item that runs longer is cancelled
    and its error is an :class:`~async_flow.ItemTimeout` (a sync callable on the loop cannot be
    interrupted).
    """
    if per_item is not None or progress is not None:
        return await _run_watched_async(call, kind, items, stop, per_item, progress, name)
    outputs: list[Any] = []
    i = 0
    try:
        if kind is Kind.AMAP:
            append = outputs.append
            if stop is None:  # on the run's own loop: the hottest loop of the library
                if len(items) == 1:  # slow items go one at a time
                    append(await call(items[0]))
                    return BatchResult(outputs, 1, None)
                for i, item in enumerate(items):  # noqa: B007
                    append(await call(item))
            else:
                for i, item in enumerate(items):  # noqa: B007
                    if stop.stopped:
                        raise _Stopped
                    append(await call(item))
        elif kind is Kind.MAP:
            append = outputs.append
            for i, item in enumerate(items):  # noqa: B007
                append(call(item))
        elif kind is Kind.AFLAT:
            for i, item in enumerate(items):  # noqa: B007
                outputs.extend([y async for y in call(item)])
        else:
            for i, item in enumerate(items):  # noqa: B007
                outputs.extend(list(call(item)))
    except Exception as exc:  # noqa: BLE001 - handed to the error policy
        return BatchResult(outputs, i, exc)
    return BatchResult(outputs, len(items), None)


def item_timeout(name: str, timeout: float) -> ItemTimeout:
    """The error of an item that ran longer than its layer's ``timeout``."""
    return ItemTimeout(f"layer {name!r}: the item took longer than its timeout of {timeout:g}s")


class Progress:
    """Where a worker thread is in its batch, so that the event loop can time out an item.

    The thread publishes each item's index and start time, and keeps an item's outputs only if
    the loop has not abandoned the batch meanwhile: once the loop has taken the outputs so far and
    given the item up (:meth:`abandon`), nothing the thread does can change them. One lock per
    item transition is the whole cost, paid only by layers with a ``timeout``.
    """

    __slots__ = ("abandoned", "index", "kept", "lock", "outputs", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.index = 0
        self.kept = 0
        self.outputs: list[Any] = []
        self.started: float | None = None  # the running item's start (time.monotonic)
        self.abandoned = False

    def begin(self, index: int, outputs: list[Any]) -> bool:
        """Item ``index`` starts (False: the batch was abandoned, stop)."""
        with self.lock:
            if self.abandoned:
                return False
            self.index = index
            self.outputs = outputs
            self.kept = len(outputs)
            self.started = monotonic()
            return True

    def keep(self, outputs: list[Any], new: list[Any]) -> bool:
        """The running item finished with outputs ``new`` (False: too late, it was abandoned)."""
        with self.lock:
            if self.abandoned:
                return False
            outputs.extend(new)
            self.started = None
            return True

    def running(self) -> tuple[int, float] | None:
        """The running item's index and start time, or None between items."""
        with self.lock:
            return None if self.started is None else (self.index, self.started)

    def abandon(self, started: float) -> tuple[list[Any], int] | None:
        """Give up the item that started at ``started``; return the outputs before it and its
        index. None if that item has finished meanwhile."""
        with self.lock:
            if self.started != started:
                return None
            self.abandoned = True
            return self.outputs[: self.kept], self.index


def _run_watched_sync(
    call: Callable[[Any], Any],
    kind: Kind,
    items: list[Any],
    stop: StopFlag | None,
    progress: Progress,
) -> BatchResult:
    outputs: list[Any] = []
    flat = kind is Kind.FLAT
    for i, item in enumerate(items):
        if (stop is not None and stop.stopped) or not progress.begin(i, outputs):
            return BatchResult(outputs, i, _Stopped())
        try:
            new = list(call(item)) if flat else [call(item)]
        except BaseException as exc:  # noqa: BLE001 - handed to the runtime
            return BatchResult(outputs, i, exc)
        if not progress.keep(outputs, new):
            return BatchResult(outputs, i, _Stopped())
    return BatchResult(outputs, len(items), None)


async def _run_watched_async(
    call: Callable[[Any], Any],
    kind: Kind,
    items: list[Any],
    stop: StopFlag | None,
    per_item: float | None,
    progress: Progress | None,
    name: str,
) -> BatchResult:
    outputs: list[Any] = []
    loop = asyncio.get_running_loop()
    # One deadline for the batch, moved at each item: a sync callable on the loop cannot be
    # interrupted, so it is not timed here.
    timed = per_item is not None and kind.is_async
    span = per_item or 0.0
    deadline = asyncio.timeout(None)
    i = 0
    try:
        async with deadline:
            for i, item in enumerate(items):
                if stop is not None and stop.stopped:
                    return BatchResult(outputs, i, _Stopped())
                if progress is not None and not progress.begin(i, outputs):
                    return BatchResult(outputs, i, _Stopped())
                if timed:
                    deadline.reschedule(loop.time() + span)
                if kind is Kind.AMAP:
                    new = [await call(item)]
                elif kind is Kind.AFLAT:
                    new = [y async for y in call(item)]
                elif kind is Kind.MAP:
                    new = [call(item)]
                else:
                    new = list(call(item))
                if timed:
                    deadline.reschedule(None)
                if progress is None:
                    outputs.extend(new)
                elif not progress.keep(outputs, new):
                    return BatchResult(outputs, i, _Stopped())
    except TimeoutError as exc:
        # Our deadline, or a TimeoutError of the user's own (which is an ordinary error).
        if deadline.expired() and per_item is not None:
            return BatchResult(outputs, i, item_timeout(name, per_item))
        return BatchResult(outputs, i, exc)
    except Exception as exc:  # noqa: BLE001 - handed to the error policy
        return BatchResult(outputs, i, exc)
    return BatchResult(outputs, len(items), None)


class WorkerCall:
    """One worker's callable (for a class: its own instance) and how to close it."""

    __slots__ = ("call", "entered", "instance", "kind")

    def __init__(self, call: Callable[[Any], Any], kind: Kind, instance: Any, entered: bool):
        self.call = call
        self.kind = kind
        self.instance = instance
        self.entered = entered


def open_worker_call_sync(layer: Layer[Any, Any], runner: asyncio.Runner | None) -> WorkerCall:
    """Build a worker's callable in this thread or process (entering the instance if needed)."""
    if not layer.is_class:
        return _keyed(layer, WorkerCall(layer.fn, layer.kind, None, False))
    instance = layer.fn(*layer.args, **layer.kwargs)
    entered = False
    if hasattr(instance, "__enter__"):
        instance.__enter__()
        entered = True
    elif hasattr(instance, "__aenter__"):
        if runner is None:
            raise RuntimeError("an async context manager needs an event loop runner")
        runner.run(instance.__aenter__())
        entered = True
    return _keyed(layer, WorkerCall(instance, layer.kind, instance, entered))


def _keyed(layer: Layer[Any, Any], wc: WorkerCall) -> WorkerCall:
    """Under a checkpoint, the worker's call takes and returns keyed items (see ``_keyed``)."""
    if getattr(layer, "keyed", False):
        wc.call = keyed_call(wc.call, wc.kind)
    return wc


def close_worker_call_sync(wc: WorkerCall, runner: asyncio.Runner | None) -> None:
    """Close a worker's instance: exit its context, or call ``close()``/``aclose()``."""
    inst = wc.instance
    if inst is None:
        return
    if wc.entered:
        if hasattr(inst, "__exit__"):
            inst.__exit__(None, None, None)
        elif runner is not None:
            runner.run(inst.__aexit__(None, None, None))
        return
    close = getattr(inst, "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result) and runner is not None:
            runner.run(_await(result))
        return
    aclose = getattr(inst, "aclose", None)
    if callable(aclose) and runner is not None:
        runner.run(_await(aclose()))


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def open_worker_call_async(layer: Layer[Any, Any]) -> WorkerCall:
    """Build a worker's callable on the event loop (entering the instance if needed)."""
    if not layer.is_class:
        return _keyed(layer, WorkerCall(layer.fn, layer.kind, None, False))
    instance = layer.fn(*layer.args, **layer.kwargs)
    entered = False
    if hasattr(instance, "__aenter__"):
        await instance.__aenter__()
        entered = True
    elif hasattr(instance, "__enter__"):
        instance.__enter__()
        entered = True
    return _keyed(layer, WorkerCall(instance, layer.kind, instance, entered))


async def close_worker_call_async(wc: WorkerCall) -> None:
    """Close a worker's instance on the event loop."""
    inst = wc.instance
    if inst is None:
        return
    if wc.entered:
        if hasattr(inst, "__aexit__"):
            await inst.__aexit__(None, None, None)
        else:
            inst.__exit__(None, None, None)
        return
    aclose = getattr(inst, "aclose", None)
    if callable(aclose):
        await aclose()
        return
    close = getattr(inst, "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            await result
