"""The ``"process"`` backend: each worker is a long-lived process, for CPU-bound layers.

``af.Layer(score, 2, backend="process")`` starts two worker processes when the run starts, builds
the layer's callable once in each (for a class: one instance per process), and sends them batches
of items over a socket pair. The runtime sizes the batches from the measured per-item time (large
for tiny work, one item at a time for slow work) and keeps two batches in flight per worker, so a
worker always has its next batch waiting while the parent reads the last result.

Shipping code
    The function (or class and its constructor arguments) travels with ``cloudpickle``, so
    lambdas, closures and functions defined in a script or a notebook cell work. Something that
    cannot be pickled fails at pipeline start with :class:`~async_flow.SerializationError`, naming
    the layer, before the source is read. An item or a result that cannot be pickled fails that
    item (under the layer's error policy), naming it.

Start method, ``__main__`` and Jupyter
    Forking a process that runs other threads can deadlock the child (a lock held by a thread
    that does not exist there), and an asyncio program may always have threads. So workers are
    forked only while the parent runs a single thread, counted by the OS (C threads included),
    which is the common case of ``af.run`` in a script: they are then up in milliseconds.
    Otherwise (a notebook kernel, the sync ``open_stream`` form, a program with threads, or
    ``options={"start_method": "spawn"}``) each worker is a fresh interpreter started with
    ``sys.executable -c ...``, which takes as long as importing async_flow.

    Either way the function is pickled, and an exec'd worker receives the parent's ``sys.path``
    but never imports the parent's ``__main__`` module: functions and classes defined in
    ``__main__`` (a script or a notebook cell) travel by value, and functions from importable
    modules by reference. So a script works with or without an ``if __name__ == "__main__":``
    guard, and a notebook works as is. The guard is still good practice, so that importing your
    script does not run the pipeline.

Crashes
    A worker that dies (SIGKILL, segfault, ``os._exit``, out of memory) is noticed at once through
    its process handle (a pidfd on Linux), not a timeout. It is replaced by a fresh process and
    the items it held are retried one at a time; an item that kills its worker three times fails
    with :class:`~async_flow.WorkerCrashed` naming the layer, the item and the exit signal, and the
    other items go on. ``report.layers[i].restarts`` and ``.retried`` count this.

Timeouts
    With ``Layer(timeout=...)``, items go to a worker one at a time and each must come back
    within the timeout (shipping included); a worker that does not answer in time is killed and
    replaced, and the item fails with :class:`~async_flow.ItemTimeout` under the layer's policy.

    An exception raised by the function is not a crash: it comes back as its own type with the
    worker's traceback attached as a note. ``SystemExit`` and ``KeyboardInterrupt`` raised by the
    function travel back like on every other backend (the run re-raises them after clean-up).

No orphans
    Workers are owned by the run: closed at the end, killed on an error, a cancellation or
    Ctrl-C (a worker in the middle of a batch is killed, an idle one closes its instance first).
    They ignore SIGINT and sit in their own process group, so a Ctrl-C reaches only the parent,
    which coordinates; and each one exits by itself, silently, if the parent process dies, even
    if it is killed with SIGKILL (at once on Linux, within a fraction of a second elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections import deque
from typing import Any, Protocol

import cloudpickle

from .._autoscale import available_cpus
from .._calls import BatchResult, item_timeout
from .._errors import SerializationError, WorkerCrashed
from .._layer import Layer
from ._base import Backend
from ._crash import WorkerLost, describe_exit, run_with_crash_retry
from ._process_wire import (
    BAD_BATCH,
    BATCH,
    CLOSE,
    CLOSED,
    HEADER,
    INIT,
    INIT_FAILED,
    READY,
    RESULT,
    RemoteError,
    dumps_with_filenames,
)
from ._process_worker import after_fork

__all__ = ("ProcessBackend",)

_READ_CHUNK = 1 << 18

_BOOT = (
    "import sys; sys.path[:0] = {path!r}; "
    "from async_flow.backends._process_worker import main; main()"
)


def _package_root() -> str:
    import async_flow

    return os.path.dirname(os.path.dirname(os.path.abspath(async_flow.__file__)))


Reply = tuple[int, bytes]


def _single_threaded() -> bool:
    """True if this process runs one thread only (C threads included), so forking it is safe."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _Process(Protocol):
    """What the backend needs of a child process: ``subprocess.Popen`` or :class:`_Forked`."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...


class _Forked:
    """A forked child, with the part of ``Popen``'s interface that :class:`_Worker` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


class _Worker:
    """One worker process and the parent's end of its socket.

    Replies come back in the order requests were sent, so each request queues a future and the
    reader resolves them first in, first out. When the process exits, the replies it managed to
    write are still delivered, then every remaining request fails with :class:`WorkerLost`.
    """

    def __init__(self, proc: _Process, sock: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.proc = proc
        self.sock = sock
        self.pid = proc.pid
        self.waiters: deque[asyncio.Future[Reply]] = deque()
        #: Set while the worker owes no reply.
        self._idle = asyncio.Event()
        self._idle.set()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self.exitcode: int | None = None
        self.dead = False
        #: A send was cut short: the stream is out of step and the worker can only be killed.
        self.broken = False
        #: The worker was asked to close: it will close its socket and exit.
        self.closing = False
        self._buffer = bytearray()
        self._chunk = memoryview(bytearray(_READ_CHUNK))
        self._eof = False
        self._pidfd: int | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._on_readable)
        with contextlib.suppress(AttributeError, OSError):  # no pidfd: EOF, then poll
            self._pidfd = os.pidfd_open(proc.pid)
            self.loop.add_reader(self._pidfd, self._on_exit)

    def fds(self) -> list[int]:
        """The file descriptors the parent holds for this worker (a forked sibling closes them)."""
        fds = [] if self.sock.fileno() < 0 else [self.sock.fileno()]
        if self._pidfd is not None:
            fds.append(self._pidfd)
        return fds

    # --- reading ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self.sock
        chunk = self._chunk
        while not self._eof:
            try:
                # Into a buffer kept for the worker's life: ``recv(n)`` would allocate (and,
                # at this size, map and unmap) n bytes per call.
                got = sock.recv_into(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                got = 0
            if not got:
                self._on_eof()
                break
            self._buffer += chunk[:got]
            if got < _READ_CHUNK:
                break
        self._deliver()

    def _deliver(self) -> None:
        buf = self._buffer
        pos = 0
        header = HEADER.size
        with memoryview(buf) as view:
            while len(buf) - pos >= header:
                size, op = HEADER.unpack_from(buf, pos)
                end = pos + header + size
                if len(buf) < end:
                    break
                payload = bytes(view[pos + header : end])
                pos = end
                if self.waiters:
                    fut = self.waiters.popleft()
                    if not fut.done():  # else its caller was cancelled: drop the reply
                        fut.set_result((op, payload))
                    if not self.waiters:
                        self._idle.set()
        if pos:
            del buf[:pos]

    def _on_eof(self) -> None:
        self._eof = True
        self.loop.remove_reader(self.sock.fileno())
        if not self.closing:
            # A live worker never closes its socket: it is exiting or broken. Make sure.
            self.kill()
        if self._pidfd is None:
            self._poll_exit()

    def _poll_exit(self) -> None:
        if self.proc.poll() is None:
            self.loop.call_later(0.005, self._poll_exit)
        else:
            self._on_exit()

    def _on_exit(self) -> None:
        """The process has exited (its sentinel fired): deliver what it wrote, fail the rest."""
        if self.dead:
            return
        self.dead = True
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.exitcode = code = self.proc.wait()
        if not self._eof:
            self._on_readable()
            if not self._eof:
                self._eof = True
                self.loop.remove_reader(self.sock.fileno())
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(WorkerLost(code, f"pid {self.pid}"))
        self._idle.set()
        self.sock.close()
        if not self.exited.done():
            self.exited.set_result(code)

    # --- writing ----------------------------------------------------------------------------

    async def request(self, op: int, payload: bytes) -> asyncio.Future[Reply]:
        """Send one frame; the returned future resolves with the reply to it."""
        fut: asyncio.Future[Reply] = self.loop.create_future()
        if self.dead:
            fut.set_exception(WorkerLost(self.exitcode, f"pid {self.pid}"))
            return fut
        self.waiters.append(fut)
        self._idle.clear()
        try:
            await self.loop.sock_sendall(self.sock, HEADER.pack(len(payload), op) + payload)
        except OSError:
            # The worker is gone (or going): its exit fails the future with WorkerLost.
            self.kill()
        except BaseException:
            self.broken = True
            raise
        return fut

    async def drained(self) -> None:
        """Wait until every reply this worker owes has arrived (or it died)."""
        await self._idle.wait()

    # --- stopping ---------------------------------------------------------------------------

    def kill(self) -> None:
        """Send SIGKILL (the exit is then seen through the sentinel)."""
        if not self.dead:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    def kill_now(self) -> None:
        """Kill and reap at once, without the event loop (for clean-up paths)."""
        self.kill()
        if not self.dead:
            self.proc.wait()
            self._on_exit()

    async def wait_exit(self) -> int:
        if self.dead:
            assert self.exitcode is not None
            return self.exitcode
        return await asyncio.shield(self.exited)


class _Slot:
    """One worker slot: its current process (replaced after a crash) and its send gate."""

    __slots__ = ("gate", "index", "worker")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: _Worker | None = None
        #: Held while sending, and for a whole exchange when a retry must run alone.
        self.gate = asyncio.Lock()


class ProcessBackend(Backend):
    """Runs a layer's function in long-lived worker processes (one per worker).

    See the module documentation for start-up, shipping code, crashes and clean-up.
    """

    name = "process"
    batches_in_flight = 2
    # About 80 ms of work per batch. A batch costs the parent a few hundred microseconds (pickling,
    # a socket round trip, event-loop turns) on cores the workers need: measured side by side,
    # 10 ms batches ran 2 ms items about 10% slower than 40 ms ones, and 80 ms ones cut the
    # parent's CPU time by another quarter (2 ms items) to an eighth (20 us items). The tail of
    # a run is still shared evenly: once the channel holds less than a batch per batch in
    # flight, each batch takes only its share of what is left (see ReceiveChannel.receive_batch).
    target_batch_seconds = 0.08
    max_batch = 4096
    # Room for two full batches per batch in flight (two per worker): batches are cut from what
    # the channel holds, a share per batch in flight, so a narrower channel would cut batches of
    # tiny items (20 us each) well short of their target (measured: 1024 items, not 2000).
    channel_room_per_worker = 4 * max_batch

    def __init__(self, layer: Layer[Any, Any]) -> None:
        super().__init__(layer)
        self._slots: dict[int, _Slot] = {}
        self._init_payload = b""
        self._stopping = False
        self._may_fork = False
        #: Workers launched by start(), waiting for open_worker() to take them.
        self._starting: list[tuple[_Worker, asyncio.Future[Reply]]] = []
        #: An autoscaled layer's process started ahead, not yet given the layer.
        self._spare: _Worker | None = None
        self._all: list[_Worker] = []

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        layer = self.layer
        method = layer.options.get("start_method", "auto")
        if method not in ("auto", "spawn"):
            raise ValueError(
                f"layer {layer.name!r}: start_method must be 'auto' or 'spawn', got {method!r}"
            )
        self._may_fork = method == "auto" and sys.platform == "linux"
        try:
            layer_bytes = dumps_with_filenames(layer)
        except Exception as exc:
            what = "its class or constructor arguments" if layer.is_class else "its function"
            raise SerializationError(
                f"layer {layer.name!r}: {what} cannot be pickled for a worker process:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        self._init_payload = pickle.dumps((list(sys.path), layer_bytes))
        # Start every worker now, before the source is read: they build their callables while
        # the rest of the pipeline starts.
        for _ in range(layer.workers):
            self._starting.append(await self._launch())
        self._keep_spare()

    def _keep_spare(self) -> None:
        """Keep one process started ahead, idle, for an autoscaled layer with room to grow.

        A growth then skips the interpreter's start-up (about a quarter of a second when the
        parent runs threads and cannot fork). The spare builds no instance until a slot takes
        it, so no user code runs ahead; it costs an idle process, killed at the end of the run.
        """
        auto = self.layer.autoscale
        if auto is None or self._stopping or self._spare is not None:
            return
        most = auto.max if auto.max is not None else available_cpus()
        if len(self._slots) + len(self._starting) < most:
            self._spare = self._start_process()

    async def _launch(self) -> tuple[_Worker, asyncio.Future[Reply]]:
        """Start a worker process and send it the layer; the future resolves once it is built."""
        worker = self._start_process()
        return worker, await self._init(worker)

    def _start_process(self) -> _Worker:
        """Start a worker process (forked or exec'd), not yet given the layer."""
        ours, theirs = socket.socketpair()
        try:
            if self._may_fork and _single_threaded():
                proc: _Process = self._fork(ours, theirs)
            else:
                proc = self._exec(theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(proc, ours)
        self._all.append(worker)
        return worker

    async def _init(self, worker: _Worker) -> asyncio.Future[Reply]:
        """Send a started worker the layer to build."""
        try:
            return await worker.request(INIT, self._init_payload)
        except BaseException:
            worker.kill_now()
            raise

    def _fork(self, ours: socket.socket, theirs: socket.socket) -> _Process:
        """Fork this (single-threaded) process: a worker is up in milliseconds."""
        parent = os.getpid()
        close = [ours.fileno()]
        for worker in self._all:
            close.extend(worker.fds())
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            after_fork(theirs, parent, close)
        return _Forked(pid)

    def _exec(self, theirs: socket.socket) -> _Process:
        """Start a fresh interpreter (safe whatever threads this process runs)."""
        fd = theirs.fileno()
        # fork + exec returns as soon as the child has exec'd; its start-up is awaited later.
        boot = _BOOT.format(path=[_package_root()])
        return subprocess.Popen(
            [sys.executable, "-c", boot, str(fd), str(os.getpid())],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            process_group=0,
        )

    async def _ready(self, worker: _Worker, built: asyncio.Future[Reply]) -> _Worker:
        """Wait until a launched worker has built the layer's callable.

        Raises :class:`WorkerLost` if the process dies while starting (a replacement that dies
        counts as one more attempt for the item it was started for).
        """
        try:
            op, payload = await built
        except WorkerLost:
            raise
        except BaseException:
            worker.kill_now()
            raise
        if op == INIT_FAILED:
            worker.kill_now()
            raise self._remote_error(pickle_loads(payload), worker.pid)
        assert op == READY, op
        return worker

    async def _spawn(self) -> _Worker:
        """A new worker, started and ready (for a slot, or to replace a dead one)."""
        return await self._ready(*await self._launch())

    async def open_worker(self, slot: int) -> None:
        state = _Slot(slot)
        self._slots[slot] = state
        try:
            spare = self._spare
            if self._starting:
                launched = self._starting.pop(0)
            elif spare is not None and not spare.dead:
                self._spare = None
                launched = (spare, await self._init(spare))
            else:
                self._spare = None  # none, or one that died while it waited
                launched = await self._launch()
            self._keep_spare()
            state.worker = await self._ready(*launched)
        except WorkerLost as lost:
            raise WorkerCrashed(
                f"layer {self.layer.name!r}: worker process {slot} died while starting"
                f" ({describe_exit(lost.exitcode)})",
                exitcode=lost.exitcode,
            ) from None

    async def close_worker(self, slot: int) -> None:
        state = self._slots.pop(slot, None)
        if state is None or state.worker is None or state.worker.dead:
            return
        worker = state.worker
        if worker.broken or (self._stopping and worker.waiters):
            worker.kill_now()
            return
        try:
            await worker.drained()
            if worker.dead:
                return
            worker.closing = True
            op, payload = await (await worker.request(CLOSE, b""))
        except WorkerLost as lost:
            raise WorkerCrashed(
                f"layer {self.layer.name!r}: worker process {slot} died while closing"
                f" ({describe_exit(lost.exitcode)})",
                exitcode=lost.exitcode,
            ) from None
        except BaseException:
            worker.kill_now()
            raise
        await worker.wait_exit()
        assert op == CLOSED, op
        error = pickle_loads(payload)
        if error is not None:
            raise self._remote_error(error, worker.pid)

    def stop(self) -> None:
        self._stopping = True

    async def aclose(self) -> None:
        # Anything still running (a slot whose opening was cut short, a run torn down early).
        for worker in self._all:
            worker.kill_now()
        self._all.clear()
        self._spare = None
        for _, built in self._starting:
            if built.done() and not built.cancelled():
                built.exception()  # retrieved: the worker is gone anyway
        self._starting.clear()

    # --- batches --------------------------------------------------------------------------------

    async def run_batch(self, slot: int, items: list[Any]) -> BatchResult:
        state = self._slots[slot]
        if self.layer.timeout is not None:
            return await self._run_timed(state, items, self.layer.timeout)

        async def run_once(batch: list[Any]) -> BatchResult:
            # A retry (one item, after a crash) runs alone on its worker, so that an innocent
            # item is never lost alongside an item that keeps killing workers.
            return await self._run_once(state, batch, solo=batch is not items)

        return await run_with_crash_retry(
            run_once, items, layer=self.layer.name, on_retry=self._count_retry
        )

    async def _run_timed(self, state: _Slot, items: list[Any], per_item: float) -> BatchResult:
        """Run ``items`` one at a time, each alone on its worker and within ``per_item`` seconds.

        A worker that does not answer in time is killed (replaced on the slot's next use) and the
        item fails with :class:`~async_flow.ItemTimeout`. The time counted is the round trip: the
        item's shipping, its call and its result's return.
        """
        outputs: list[Any] = []
        for index, item in enumerate(items):
            result = await run_with_crash_retry(
                lambda batch: self._timed_once(state, batch, per_item),
                [item],
                layer=self.layer.name,
                on_retry=self._count_retry,
            )
            outputs.extend(result.outputs)
            if result.error is not None:
                return BatchResult(outputs, index, result.error)
        return BatchResult(outputs, len(items), None)

    async def _timed_once(self, state: _Slot, items: list[Any], per_item: float) -> BatchResult:
        try:
            payload = cloudpickle.dumps(items)
        except Exception:  # noqa: BLE001 - find the item at fault
            return await self._unpicklable_items(state, items, solo=True)
        async with state.gate:
            worker = await self._healthy(state)
            while worker.waiters:
                await worker.drained()
                worker = await self._healthy(state)
            # The clock starts once the worker is free, so time spent queued is not counted.
            fut = await worker.request(BATCH, payload)
            await asyncio.wait((fut,), timeout=per_item)
            if not fut.done():
                fut.cancel()
                worker.kill()
                await worker.wait_exit()
                return BatchResult([], 0, item_timeout(self.layer.name, per_item))
            op, reply = fut.result()
        if op == BAD_BATCH:
            return await self._one_by_one(state, items, pickle_loads(reply))
        assert op == RESULT, op
        outputs, done, error = pickle_loads(reply)
        return BatchResult(outputs, done, self._remote_error(error, worker.pid) if error else None)

    def _count_retry(self, n: int) -> None:
        self.retried += n

    async def _healthy(self, state: _Slot) -> _Worker:
        """The slot's worker, replaced first if it died. Called with the slot's gate held."""
        worker = state.worker
        if worker is None or worker.dead or worker.broken:
            if worker is not None:
                worker.kill_now()
                with contextlib.suppress(ValueError):
                    self._all.remove(worker)
            worker = state.worker = await self._spawn()
            self.restarts += 1
        return worker

    async def _run_once(self, state: _Slot, items: list[Any], *, solo: bool) -> BatchResult:
        try:
            payload = cloudpickle.dumps(items)
        except Exception:  # noqa: BLE001 - find the item at fault
            return await self._unpicklable_items(state, items, solo=solo)
        if solo:
            async with state.gate:
                worker = await self._healthy(state)
                while worker.waiters:
                    await worker.drained()
                    worker = await self._healthy(state)
                op, reply = await (await worker.request(BATCH, payload))
        else:
            async with state.gate:
                worker = await self._healthy(state)
                fut = await worker.request(BATCH, payload)
            op, reply = await fut
        if op == BAD_BATCH:
            return await self._one_by_one(state, items, pickle_loads(reply))
        assert op == RESULT, op
        try:
            outputs, done, error = pickle_loads(reply)
        except Exception as exc:  # noqa: BLE001 - a result the parent cannot rebuild
            from .._runtime import short_repr

            return BatchResult(
                [],
                0,
                SerializationError(
                    f"layer {self.layer.name!r}: the results of the batch starting at item"
                    f" {short_repr(items[0])} cannot be unpickled here: {type(exc).__name__}: {exc}"
                ),
            )
        return BatchResult(outputs, done, self._remote_error(error, worker.pid) if error else None)

    async def _unpicklable_items(
        self, state: _Slot, items: list[Any], *, solo: bool
    ) -> BatchResult:
        """Run the items before the first one that cannot be pickled, then fail that one."""
        from .._runtime import short_repr

        for bad, item in enumerate(items):  # noqa: B007 - bad names the failing item
            try:
                cloudpickle.dumps(item)
            except Exception as exc:  # noqa: BLE001
                why = exc
                break
        else:  # each pickles alone: the batch as a whole is at fault (too deep, ...)
            return await self._one_by_one(state, items, "the batch cannot be pickled")
        error = SerializationError(
            f"layer {self.layer.name!r}: item {short_repr(items[bad])} cannot be pickled for a"
            f" worker process: {type(why).__name__}: {why}"
        )
        if bad == 0:
            return BatchResult([], 0, error)
        head = await self._run_once(state, items[:bad], solo=solo)
        if head.error is not None:
            return head
        return BatchResult(head.outputs, bad, error)

    async def _one_by_one(self, state: _Slot, items: list[Any], reason: str) -> BatchResult:
        """The worker could not unpickle a batch: send its items alone to find the culprit."""
        from .._runtime import short_repr

        if len(items) == 1:
            return BatchResult(
                [],
                0,
                SerializationError(
                    f"layer {self.layer.name!r}: item {short_repr(items[0])} cannot be unpickled"
                    f" in a worker process: {reason}"
                ),
            )
        outputs: list[Any] = []
        for index, item in enumerate(items):
            result = await self._run_once(state, [item], solo=True)
            outputs.extend(result.outputs)
            if result.error is not None:
                return BatchResult(outputs, index, result.error)
        return BatchResult(outputs, len(items), None)

    def _remote_error(self, error: RemoteError, pid: int) -> BaseException:
        """Rebuild an exception raised in a worker, with the worker's traceback as a note."""
        blob, type_name, message, text = error
        exc: BaseException | None = None
        why = "it could not be pickled"
        if blob is not None:
            try:
                exc = pickle_loads(blob)
            except Exception as problem:  # noqa: BLE001 - replaced below
                why = f"it could not be unpickled: {type(problem).__name__}: {problem}"
        if not isinstance(exc, BaseException):
            exc = SerializationError(
                f"layer {self.layer.name!r}: a worker process raised {type_name}: {message} ({why})"
            )
        exc.add_note(f"async_flow: traceback in worker process {pid}:\n{text.rstrip()}")
        return exc


#: ``pickle.loads`` (cloudpickle's output is plain pickle data).
pickle_loads = pickle.loads
