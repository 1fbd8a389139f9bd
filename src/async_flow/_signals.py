"""Graceful shutdown on SIGINT and SIGTERM: the first signal drains the run, the second aborts it.

While :func:`~async_flow.run` or :func:`~async_flow.pipeline` runs on the main thread, it takes
over SIGINT and SIGTERM and gives the previous handlers back when it ends. Signals only reach the
main thread's event loop: worker threads never see them, and worker processes and actors are
expected to ignore SIGINT (a terminal's Ctrl-C reaches the whole process group), so that the run
alone decides what stops when.

A program that does not catch the :class:`~async_flow.Interrupted` a run raises ends the way
Python programs end on that signal: :func:`install_exit_hook` chains a ``sys.excepthook`` that
prints the run's report and one line instead of a traceback, then lets the program die by the
signal once the usual shutdown work is done (see :func:`_die_by`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from ._errors import Interrupted

__all__ = ("SIGNALS", "install_exit_hook", "watch_signals")

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


_ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


class _ExitHook:
    """``sys.excepthook`` for an uncaught :class:`Interrupted`; other exceptions go to
    ``previous``."""

    def __init__(self, previous: _ExceptHook) -> None:
        self.previous = previous

    def __call__(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> Any:
        if not isinstance(exc, Interrupted):
            return self.previous(exc_type, exc, tb)
        with contextlib.suppress(Exception):  # a closed or replaced stderr: exit all the same
            print(exc.report, file=sys.stderr)
            print(f"async_flow: {exc}", file=sys.stderr, flush=True)
        if hasattr(sys, "ps1") or sys.flags.interactive:
            return None  # the interactive prompt goes on, as after a KeyboardInterrupt
        _die_by(exc.signum)
        return None


def install_exit_hook() -> None:
    """Make an uncaught :class:`Interrupted` end the program like the signal it stands for.

    Chained in front of whatever ``sys.excepthook`` is in place (once): other exceptions, and an
    ``Interrupted`` the program catches, are untouched.
    """
    if not isinstance(sys.excepthook, _ExitHook):
        sys.excepthook = _ExitHook(sys.excepthook)


def _die_by(signum: int) -> None:
    """Finish as the interpreter would, then die by ``signum`` (exit status 128 + signum).

    CPython itself dies by SIGINT only for an uncaught exception of the exact type
    ``KeyboardInterrupt``, after its whole shutdown. From the excepthook the shutdown has not
    begun, so its parts that matter to a program's output are done here, in the interpreter's
    order: wait for the non-daemon threads, run the ``atexit`` handlers (``logging`` flushes and
    closes its handlers there), and flush every open file, as freeing it at exit would. What is
    skipped is the tearing down of modules and the ``__del__`` of objects still alive then,
    which a program must not rely on anyway.
    """
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon and thread is not threading.current_thread():
            with contextlib.suppress(RuntimeError):
                thread.join()
    atexit._run_exitfuncs()
    for obj in gc.get_objects():
        if isinstance(obj, io.IOBase):
            with contextlib.suppress(Exception):
                if not obj.closed and obj.writable():
                    obj.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # the signal did not end the process (not deliverable here)
