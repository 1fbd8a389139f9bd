"""Graceful shutdown on SIGINT and SIGTERM: the first signal drains the run, the second aborts it.

While :func:`~async_flow.run` or :func:`~async_flow.pipeline` runs on the main thread, it takes
over SIGINT and SIGTERM and gives the previous handlers back when it ends. Signals only reach the
main thread's event loop: worker threads never see them, and worker processes and actors are
expected to ignore SIGINT (a terminal's Ctrl-C reaches the whole process group), so that the run
alone decides what stops when.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ("SIGNALS", "watch_signals")

#: The signals a run drains on.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def watch_signals(on_signal: Callable[[int], None]) -> Iterator[bool]:
    """Call ``on_signal(signum)`` on the running loop for each SIGINT/SIGTERM, inside the block.

    Does nothing (and yields False) off the main thread or where the loop cannot watch signals
    (Windows' proactor loop). A signal the program already handles on this loop
    (``loop.add_signal_handler``) is left to it. The handlers in place before are restored on
    exit.
    """
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in SIGNALS:
            before = signal.getsignal(sig)
            if _handled_on(loop, sig, before):
                continue  # the program handles it on this loop already: leave it alone
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            previous[sig] = before
        yield bool(previous)
    finally:
        for sig, before in previous.items():
            loop.remove_signal_handler(sig)
            if before is not None:
                signal.signal(sig, before)


def _handled_on(loop: asyncio.AbstractEventLoop, sig: signal.Signals, handler: Any) -> bool:
    """Whether ``loop.add_signal_handler(sig, ...)`` is in force (``handler`` is sig's handler)."""
    handlers = getattr(loop, "_signal_handlers", None)
    if handlers is not None:  # asyncio's own loops
        return sig in handlers
    # uvloop keeps its handlers out of reach; the Python-level handler it installs for them is a
    # method of the loop.
    return getattr(handler, "__self__", None) is loop
