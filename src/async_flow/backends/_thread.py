"""The ``"thread"`` backend: each worker is a dedicated thread.

A batch crosses to the thread in one hop and its items run there back to back, so the thread hop
is paid once per batch. Coroutine functions get a private event loop per thread. Between two items
a thread checks a stop flag, so a failing or cancelled run does not wait for a whole batch.

A layer's ``timeout`` is kept by the event loop, which watches when each item started (see
:class:`~async_flow._calls.Progress`). A thread cannot be stopped from outside, so the thread
holding a late item is abandoned: the item fails with :class:`~async_flow.ItemTimeout`, the slot
gets a fresh thread (and a fresh instance, for a class), counted in ``LayerStats.restarts``, and
the old thread exits whenever its call returns, its outputs discarded. Coroutine functions on this
backend are cancelled on the thread's own loop instead, and only abandoned if they block it.
"""

from __future__ import annotations

import asyncio
import contextlib
from time import monotonic
from typing import Any

from .._calls import (
    BatchResult,
    Progress,
    StopFlag,
    WorkerCall,
    close_worker_call_sync,
    item_timeout,
    open_worker_call_sync,
    run_batch_sync,
)
from .._threads import WorkerThread
from ._base import Backend

__all__ = ("ThreadBackend",)

#: Extra time a coroutine function gets before its thread is abandoned: it is normally cancelled
#: on the thread's own loop at the deadline, and only a coroutine blocking that loop needs this.
_ASYNC_GRACE = 1.0


class _Slot:
    __slots__ = ("call", "runner", "thread")

    def __init__(self, thread: WorkerThread) -> None:
        self.thread = thread
        self.call: WorkerCall | None = None
        self.runner: asyncio.Runner | None = None


class ThreadBackend(Backend):
    """Runs plain and generator functions (and anything else) on one thread per worker."""

    name = "thread"
    target_batch_seconds = 0.002
    # A hop to a thread and back costs tens of microseconds, more while other threads hold the
    # GIL: trivial plain functions need batches of thousands of items to leave it behind.
    max_batch = 4096
    channel_room_per_worker = 4096

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        self._slots: dict[int, _Slot] = {}
        self._stop = StopFlag()

    def _open_in_thread(self, slot: _Slot) -> None:
        layer = self.layer
        needs_loop = layer.kind.is_async or (
            layer.is_class
            and hasattr(layer.fn, "__aenter__")
            and not hasattr(layer.fn, "__enter__")
        )
        if needs_loop:
            slot.runner = asyncio.Runner()
        slot.call = open_worker_call_sync(layer, slot.runner)

    def _close_in_thread(self, slot: _Slot) -> None:
        try:
            if slot.call is not None:
                close_worker_call_sync(slot.call, slot.runner)
        finally:
            if slot.runner is not None:
                slot.runner.close()

    async def open_worker(self, slot: int) -> None:
        state = _Slot(WorkerThread(f"async_flow:{self.layer.name}:{slot}"))
        self._slots[slot] = state
        await state.thread.submit(self._open_in_thread, state)

    async def run_batch(self, slot: int, items: list[Any]) -> BatchResult:
        state = self._slots[slot]
        assert state.call is not None
        if self.layer.timeout is not None:
            return await self._run_watched(slot, state, items, self.layer.timeout)
        return await state.thread.submit(
            run_batch_sync, state.call.call, state.call.kind, items, self._stop, state.runner
        )

    async def _run_watched(
        self, slot: int, state: _Slot, items: list[Any], per_item: float
    ) -> BatchResult:
        assert state.call is not None
        kind = state.call.kind
        progress = Progress()
        done = state.thread.submit(
            run_batch_sync,
            state.call.call,
            kind,
            items,
            self._stop,
            state.runner,
            per_item,
            progress,
            self.layer.name,
        )
        allowed = per_item + (_ASYNC_GRACE if kind.is_async else 0.0)
        try:
            while True:
                running = progress.running()
                wait = allowed if running is None else running[1] + allowed - monotonic()
                if wait > 0:
                    await asyncio.wait((done,), timeout=wait)
                    if done.done():
                        return done.result()
                    continue
                assert running is not None
                given_up = progress.abandon(running[1])
                if given_up is None:
                    continue  # the item finished just now
                outputs, index = given_up
                await self._replace(slot, state)
                return BatchResult(outputs, index, item_timeout(self.layer.name, per_item))
        finally:
            # Cancelled, or abandoned: whatever the thread delivers later is not wanted.
            done.cancel()

    async def _replace(self, slot: int, state: _Slot) -> None:
        """Abandon ``state``'s thread (stuck on an item) and give the slot a fresh one."""
        fresh = _Slot(WorkerThread(f"async_flow:{self.layer.name}:{slot}"))
        self._slots[slot] = fresh
        self.restarts += 1

        def close_quietly() -> None:
            # Runs if the stuck call ever returns; nobody is left to hear a closing error.
            with contextlib.suppress(Exception):
                self._close_in_thread(state)

        state.thread.abandon(close_quietly)
        await fresh.thread.submit(self._open_in_thread, fresh)

    async def close_worker(self, slot: int) -> None:
        state = self._slots.pop(slot, None)
        if state is None:
            return
        close = state.thread.submit(self._close_in_thread, state)
        try:
            await state.thread.aclose()
        finally:
            # The close job ran before the thread exited; surface its error, if any.
            if close.done() and not close.cancelled():
                close.result()

    def stop(self) -> None:
        self._stop.stopped = True
