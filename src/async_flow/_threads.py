"""A dedicated worker thread driven from the event loop.

Each thread-backend worker owns one (so a class instance always runs on the same thread, which is
what e.g. ``sqlite3`` connections require), and so does a blocking source. Jobs are plain
callables; results come back as asyncio futures. The thread is a daemon so that a job stuck
forever cannot keep the interpreter alive, but the runtime always asks it to stop and awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ("WorkerThread",)

T = TypeVar("T")

_STOP = object()


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class WorkerThread:
    """One thread that runs jobs one at a time, in submission order."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the returned future resolves on the loop when it has run."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, fut))
        return fut

    def _post(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(_resolve, fut, ok, value)

    def _main(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                fn, args, fut = job
                try:
                    result = fn(*args)
                except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting task
                    if fut is not None:
                        self._post(fut, False, exc)
                else:
                    if fut is not None:
                        self._post(fut, True, result)
                del job, fn, args, fut
        finally:
            self._post(self._exited, True, None)

    def abandon(self, job: Callable[[], None]) -> None:
        """Give the thread up without waiting: it runs ``job`` and exits once its current job
        returns, if ever. It keeps its name with ``:abandoned`` appended, for leak reports."""
        self._thread.name = f"{self._thread.name}:abandoned"
        self._jobs.put((job, (), None))
        self._jobs.put(_STOP)

    async def aclose(self) -> None:
        """Ask the thread to stop after its queued jobs and wait until it has exited."""
        self._jobs.put(_STOP)
        await asyncio.shield(self._exited)
        self._thread.join()
