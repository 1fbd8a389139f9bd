"""The ``"thread"`` backend: each worker is a dedicated thread.

A batch crosses to the thread in one hop and its items run there back to back, so the thread hop
is paid once per batch. Coroutine functions get a private event loop per thread. Between two items
a thread checks a stop flag, so a failing or cancelled run does not wait for a whole batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._calls import (
    BatchResult,
    StopFlag,
    WorkerCall,
    close_worker_call_sync,
    open_worker_call_sync,
    run_batch_sync,
)
from .._threads import WorkerThread
from ._base import Backend

__all__ = ("ThreadBackend",)


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
        return await state.thread.submit(
            run_batch_sync, state.call.call, state.call.kind, items, self._stop, state.runner
        )

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
