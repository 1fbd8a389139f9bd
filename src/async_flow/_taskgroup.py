"""A task group that re-raises the first failure as itself (not wrapped in an ExceptionGroup).

Every task the runtime starts lives in one of these. When a task fails, the others are cancelled
and awaited; the first exception is then raised unchanged, so ``except ValueError`` around a
pipeline catches a ``ValueError`` from a layer. Later failures are attached to it as notes. If the
task waiting on the group is cancelled, the children are cancelled and awaited before the
cancellation goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ("Carried", "TaskGroup", "finish")


class Carried(Exception):
    """Carries a ``SystemExit`` or ``KeyboardInterrupt`` from a worker through the run's tasks.

    asyncio lets those two escape the event loop from any task, which would skip the run's
    clean-up; wrapped, they travel like any error and are unwrapped where the run ends.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


T = TypeVar("T")


class TaskGroup:
    """Owns tasks: nothing it started outlives ``async with``."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._aborting = False
        self._parent: asyncio.Task[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> TaskGroup:
        self._parent = asyncio.current_task()
        return self

    def start(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task owned by this group."""
        if self._aborting:
            coro.close()
            raise RuntimeError("this task group is shutting down")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._on_done)
        return task

    @property
    def failed(self) -> bool:
        """True once a task of the group has raised."""
        return bool(self._errors)

    def cancel(self) -> None:
        """Cancel every task of the group (the group then exits without an error of its own).

        Only the first call cancels: a task already cleaning up after its cancellation must not be
        interrupted again half-way through closing its workers.
        """
        if self._aborting:
            return
        self._aborting = True
        for task in self._tasks:
            task.cancel()

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._errors.append(exc)
                self.cancel()
        if self._waiter is not None and not self._tasks and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        outer_cancel = isinstance(exc, asyncio.CancelledError)
        if exc is not None:
            self.cancel()
        while self._tasks:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                outer_cancel = True
                self.cancel()
            finally:
                self._waiter = None
        if self._errors:
            first = self._errors[0]
            for other in self._errors[1:]:
                if hasattr(first, "add_note"):
                    first.add_note(f"async_flow: also raised meanwhile: {other!r}")
            if exc is not None and exc is not first and not outer_cancel:
                first.__context__ = exc
            raise first
        if outer_cancel:
            if exc is None:
                raise asyncio.CancelledError
            return False
        return False


async def finish(coro: Coroutine[Any, Any, T]) -> T:
    """Run clean-up ``coro`` to its end even if the calling task is cancelled meanwhile.

    Stopping what a run started must not be cut short by the very cancellation that asked for
    it. A cancellation that arrives meanwhile is re-raised once the clean-up is done.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
