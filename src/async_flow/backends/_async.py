"""The ``"async"`` backend: each worker is an asyncio task on the run's event loop.

A layer's ``timeout`` cancels the item's coroutine (its outputs so far are dropped) and the item
fails with :class:`~async_flow.ItemTimeout`; the worker goes on with the next item.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from .._calls import (
    BatchResult,
    WorkerCall,
    close_worker_call_async,
    open_worker_call_async,
    run_batch_async,
)
from ._base import Backend

__all__ = ("AsyncBackend",)


class AsyncBackend(Backend):
    """Runs coroutine functions (and plain ones, inline) as tasks on the event loop."""

    name = "async"
    target_batch_seconds = 0.001

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        self._calls: dict[int, WorkerCall] = {}

    async def open_worker(self, slot: int) -> None:
        self._calls[slot] = await open_worker_call_async(self.layer)

    def run_batch(self, slot: int, items: list[Any]) -> Coroutine[Any, Any, BatchResult]:
        # The batch's coroutine itself, not one wrapping it: one frame less per batch.
        wc = self._calls[slot]
        layer = self.layer
        if layer.timeout is None:
            return run_batch_async(wc.call, wc.kind, items)
        return run_batch_async(wc.call, wc.kind, items, None, layer.timeout, None, layer.name)

    async def close_worker(self, slot: int) -> None:
        wc = self._calls.pop(slot, None)
        if wc is not None:
            await close_worker_call_async(wc)
