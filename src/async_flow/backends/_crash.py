"""Retrying the items of a worker that died: shared by the process and Ray backends.

A remote worker that dies while it holds a batch loses the whole batch, and nothing says which item
killed it. :func:`run_with_crash_retry` re-runs the batch one item at a time on fresh workers, so
that only the item that keeps killing workers fails (with :class:`~async_flow.WorkerCrashed`, after
``attempts`` tries) and every other item is processed exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._calls import BatchResult
from .._errors import WorkerCrashed

__all__ = ("WorkerLost", "run_with_crash_retry")


class WorkerLost(Exception):
    """Raised by a backend's single-attempt runner when its worker died holding the batch.

    The backend has already replaced (or is replacing) the worker; ``exitcode`` is negative for a
    signal, as in :attr:`multiprocessing.Process.exitcode`.
    """

    def __init__(self, exitcode: int | None, detail: str = "") -> None:
        super().__init__(f"worker died (exit code {exitcode}){': ' + detail if detail else ''}")
        self.exitcode = exitcode
        self.detail = detail


def describe_exit(exitcode: int | None) -> str:
    """``'killed by SIGKILL'``, ``'exit code 3'``, ... for a process exit code."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


async def run_with_crash_retry(
    run_once: Callable[[list[Any]], Awaitable[BatchResult]],
    items: list[Any],
    *,
    layer: str,
    attempts: int = 3,
    on_retry: Callable[[int], None] | None = None,
) -> BatchResult:
    """Run ``items`` with ``run_once``; if its worker dies, retry item by item.

    ``run_once`` raises :class:`WorkerLost` when the worker died. A batch that crashed is retried
    one item at a time (the crash counts as one attempt for an item alone in its batch); an item
    that crashes its worker ``attempts`` times ends the result with a ``WorkerCrashed`` error for
    it, which the runtime hands to the layer's error policy. ``on_retry(n)`` reports n re-runs.
    """
    from .._runtime import short_repr

    try:
        return await run_once(items)
    except WorkerLost as lost:
        last = lost
    outputs: list[Any] = []
    for index, item in enumerate(items):
        tries = 1 if len(items) == 1 else 0
        while True:
            if tries >= attempts:
                detail = f"; {last.detail}" if last.detail else ""
                error = WorkerCrashed(
                    f"layer {layer!r}: item {short_repr(item)} crashed its worker {tries} times"
                    f" (last: {describe_exit(last.exitcode)}{detail})",
                    exitcode=last.exitcode,
                )
                return BatchResult(outputs, index, error)
            if on_retry is not None:
                on_retry(1)
            try:
                result = await run_once([item])
                break
            except WorkerLost as lost:
                last = lost
                tries += 1
        outputs.extend(result.outputs)
        if result.error is not None:
            return BatchResult(outputs, index, result.error)
    return BatchResult(outputs, len(items), None)
