"""The inside of a ``"process"`` worker: a loop that runs batches sent by the parent.

The parent starts a fresh interpreter (``python -c``), or forks itself when it has a single
thread, with one end of a socket pair, and talks to it in length-prefixed frames (see
:mod:`._process_wire`). The worker builds the layer's callable once, then answers each batch with
a :class:`~async_flow._calls.BatchResult`, until the parent asks it to close or goes away. It
ignores SIGINT (the parent coordinates a Ctrl-C) and exits on its own within a fraction of a
second if the parent dies, even in the middle of an item, and silently (see :func:`run_worker`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from .._calls import BatchResult, close_worker_call_sync, open_worker_call_sync, run_batch_sync
from .._errors import SerializationError
from .._layer import Kind, Layer
from ._process_wire import (
    BAD_BATCH,
    BATCH,
    CLOSE,
    CLOSED,
    INIT,
    INIT_FAILED,
    READY,
    RESULT,
    FrameSocket,
    dump_error,
)

__all__ = ("main",)

#: How often the worker checks that its parent is still alive.
_PARENT_POLL_SECONDS = 0.2
#: ``prctl`` option: the signal this process gets when its parent thread dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process the moment its parent dies (Linux only).

    ``PR_SET_PDEATHSIG`` fires on the death of the parent *thread* that started the worker, not
    of the parent process. The backend starts its workers from the thread of the run's event
    loop, which outlives every worker of the run (the run closes or kills them all before it
    ends), so the signal comes only when that loop's process dies (or the loop's thread with
    it, which leaves nobody to talk to either).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _watch_parent(parent: int) -> None:
    """Exit at once if the parent process dies (its pid is no longer our parent's).

    Where :func:`_die_with_parent` has no kernel help (not Linux), this is what notices, within
    :data:`_PARENT_POLL_SECONDS`.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(70)
            time.sleep(_PARENT_POLL_SECONDS)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _needs_loop(layer: Layer[Any, Any]) -> bool:
    return layer.kind.is_async or (
        layer.is_class and hasattr(layer.fn, "__aenter__") and not hasattr(layer.fn, "__enter__")
    )


def _counting(call: Callable[[Any], Any], kind: Kind, counts: list[int]) -> Callable[[Any], Any]:
    """Wrap a generator callable so that the outputs of each item are counted.

    With the counts, an output that cannot be pickled is traced back to the item that made it.
    """
    if kind is Kind.FLAT:

        def flat(item: Any) -> list[Any]:
            out = list(call(item))
            counts.append(len(out))
            return out

        return flat

    async def aflat(item: Any) -> AsyncIterator[Any]:
        out = [y async for y in call(item)]
        counts.append(len(out))
        for y in out:
            yield y

    return aflat


def _encode_result(
    layer: Layer[Any, Any], items: list[Any], result: BatchResult, counts: list[int] | None
) -> bytes:
    """Pickle a batch's result; an output that cannot be pickled fails the item that made it."""
    import cloudpickle

    outputs, done, error = result.outputs, result.done, result.error
    try:
        return cloudpickle.dumps((outputs, done, dump_error(error) if error else None))  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - turned into the item's error below
        why = exc
    from .._runtime import short_repr

    bad = 0
    for bad, output in enumerate(outputs):  # noqa: B007 - bad names the failing output
        try:
            cloudpickle.dumps(output)
        except Exception as exc:  # noqa: BLE001
            why = exc
            break
    # Map the output back to its item: one output per item, unless the kind is a generator.
    index = bad
    start = bad
    if counts is not None:
        index, start, seen = 0, 0, 0
        for index, count in enumerate(counts):  # noqa: B007
            if seen + count > bad:
                break
            seen += count
        start = seen
    index = min(index, len(items) - 1)
    failure = SerializationError(
        f"layer {layer.name!r}: the result {short_repr(outputs[bad] if outputs else None)} of item"
        f" {short_repr(items[index])} cannot be pickled: {type(why).__name__}: {why}"
    )
    return cloudpickle.dumps((outputs[:start], index, dump_error(failure)))  # type: ignore[no-any-return]


def serve(conn: FrameSocket) -> None:
    """Answer the parent's frames until it closes the worker or goes away."""
    op, payload = conn.receive()
    if op != INIT:
        raise RuntimeError(f"expected the init frame, got {op}")
    sys_path, layer_bytes = pickle.loads(payload)
    sys.path[:] = sys_path
    runner: asyncio.Runner | None = None
    try:
        layer: Layer[Any, Any] = pickle.loads(layer_bytes)
        if _needs_loop(layer):
            runner = asyncio.Runner()
        wc = open_worker_call_sync(layer, runner)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(INIT_FAILED, pickle.dumps(dump_error(exc)))
        return
    conn.send(READY, b"")
    kind = wc.kind
    counts: list[int] | None = [] if kind.is_flat else None
    call = _counting(wc.call, kind, counts) if counts is not None else wc.call
    while True:
        op, payload = conn.receive()
        if op == BATCH:
            try:
                items = pickle.loads(payload)
            except Exception as exc:  # noqa: BLE001 - the parent retries the items one by one
                conn.send(BAD_BATCH, pickle.dumps(f"{type(exc).__name__}: {exc}"))
                continue
            if counts is not None:
                counts.clear()
            result = run_batch_sync(call, kind, items, None, runner)
            conn.send(RESULT, _encode_result(layer, items, result, counts))
        elif op == CLOSE:
            error = None
            try:
                close_worker_call_sync(wc, runner)
                if runner is not None:
                    runner.close()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                error = dump_error(exc)
            conn.send(CLOSED, pickle.dumps(error))
            return
        else:
            raise RuntimeError(f"unexpected frame {op}")


def run_worker(sock: socket.socket, parent: int, *, exec_started: bool) -> NoReturn:
    """Serve the parent on ``sock``, then exit this process.

    A parent that dies (even by SIGKILL) takes its workers with it at once on Linux, and within
    a fraction of a second elsewhere; a worker that finds the socket closed while it writes a
    result exits quietly: with nobody left to report to, a traceback would only be noise on the
    terminal the parent shared with it.
    """
    _die_with_parent()
    if os.getppid() != parent:  # died before the line above: nothing would have signalled us
        os._exit(70)
    _watch_parent(parent)
    conn = FrameSocket(sock)
    try:
        serve(conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent closed the socket or went away: nothing left to do
    finally:
        sock.close()
    # Skip the slow part of interpreter shutdown (tearing down every module): the parent waits
    # for this exit. A forked worker must not run the exit handlers it inherited from the parent.
    if exec_started:
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def main() -> NoReturn:
    """Entry point of an exec-started worker: ``main()`` with ``fd parent_pid`` in ``sys.argv``."""
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    run_worker(sock, parent, exec_started=True)


def after_fork(sock: socket.socket, parent: int, close: list[int]) -> NoReturn:
    """Entry point of a forked worker (the parent had a single thread): drop the parent's state."""
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop is not ours
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setpgid(0, 0)
        asyncio.events._set_running_loop(None)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        run_worker(sock, parent, exec_started=False)
    finally:
        os._exit(1)
