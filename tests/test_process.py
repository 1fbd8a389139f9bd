"""The process backend: shipping code, remote errors, crashes, chaos, and no orphans ever.

The shared suite (test_core, test_errors, test_backpressure) already runs on ``"process"``; this
module covers what only worker processes can do wrong. Crashes are real: workers are SIGKILLed,
segfault, ``os._exit``; the parent itself is SIGKILLed in a subprocess.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

import async_flow as af
from async_flow.backends._process import ProcessBackend
from tests.conftest import run_async, wait_until

# Ship this module's functions by value: workers then need not import pytest and this module,
# which keeps every test here fast on a loaded machine. (The shared suite covers functions that
# travel by reference.)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PARENT_PID = os.getpid()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def proc_layer(
    fn: Any, workers: int = 2, *, start: str = "auto", **kwargs: Any
) -> af.Layer[Any, Any]:
    return af.Layer(fn, workers, backend="process", options={"start_method": start}, **kwargs)


@pytest.fixture(params=["auto", "spawn"])
def start(request: pytest.FixtureRequest) -> str:
    """How workers start: forked when the parent has one thread ("auto"), or always exec'd."""
    return str(request.param)


def collect(source: Any, *layers: af.Layer[Any, Any]) -> tuple[list[Any], af.Report]:
    with af.open_stream(source, *layers) as results:
        out = list(results)
    return out, results.report


def gather(source: Any, *layers: af.Layer[Any, Any]) -> tuple[list[Any], af.Report]:
    """Like :func:`collect`, but with ``af.run`` (one thread: workers may be forked)."""
    out: list[Any] = []

    async def keep(x: Any) -> None:
        out.append(x)

    return out, af.run(source, *layers, af.Layer(keep))


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE]


# --- shipping code ------------------------------------------------------------------------


def test_lambdas_and_closures_run_in_worker_processes(start: str) -> None:
    offset = 1000

    def shifted(x: int) -> tuple[int, int]:
        return x + offset, os.getpid()

    got, report = collect(
        range(100), proc_layer(shifted, start=start), proc_layer(lambda p: p[0] * 2, start=start)
    )
    assert sorted(got) == [(x + offset) * 2 for x in range(100)]
    assert report.layers[0].emitted == 100


def test_work_runs_in_other_processes() -> None:
    got, _ = collect(range(50), proc_layer(lambda x: os.getpid()))
    assert PARENT_PID not in set(got)
    assert 1 <= len(set(got)) <= 2


def test_unpicklable_function_fails_at_start_before_the_source_is_read() -> None:
    lock = threading.Lock()
    read: list[int] = []

    def source() -> Iterator[int]:
        read.append(1)
        yield 1

    def guarded(x: int) -> int:
        with lock:
            return x

    with pytest.raises(af.SerializationError, match=r"'guarded': its function cannot be"):
        af.run(source(), proc_layer(guarded, name="guarded"))
    assert read == []


class Holder:
    def __init__(self, thing: Any) -> None:
        self.thing = thing

    def __call__(self, x: int) -> int:
        return x


_FORK_SCRIPT = """
import sys
sys.path.insert(0, {src!r})
import colorsys, async_flow as af

def inherited(x):
    return "colorsys" in sys.modules  # imported by the parent only

seen = []

async def keep(x):
    seen.append(x)

layer = af.Layer(inherited, 2, backend="process", options={{"start_method": sys.argv[1]}})
af.run(range(4), layer, af.Layer(keep))
print(seen)
"""


def test_fork_only_a_single_threaded_parent() -> None:
    """A forked worker inherits the parent's modules; an exec'd one starts from a fresh
    interpreter. af.run in a fresh single-threaded script forks; the sync stream form runs the
    pipeline on a second thread, so its workers must not be forked."""
    script = textwrap.dedent(_FORK_SCRIPT.format(src=SRC))
    for start, expected in [("auto", True), ("spawn", False)]:
        out = subprocess.run(
            [sys.executable, "-c", script, start],
            capture_output=True,
            text=True,
            check=True,
            timeout=50,
        )
        assert out.stdout.strip() == str([expected] * 4)

    def inherited(x: int) -> bool:
        return "pytest" in sys.modules

    got, _ = collect(range(4), proc_layer(inherited))
    assert got == [False] * 4
    got, _ = collect(range(4), proc_layer(inherited, start="spawn"))
    assert got == [False] * 4
    with pytest.raises(ValueError, match="start_method must be 'auto' or 'spawn'"):
        af.run(range(4), proc_layer(inherited, start="fork"))


def test_unpicklable_constructor_argument_fails_at_start() -> None:
    layer = proc_layer(Holder, args=(threading.Lock(),), name="holder")
    with pytest.raises(af.SerializationError, match="'holder': its class or constructor"):
        af.run(range(3), layer)


class Counted:
    """A stateful worker: records how many instances its process built."""

    built = 0

    def __init__(self, factor: int) -> None:
        Counted.built += 1
        self.factor = factor

    def __call__(self, x: int) -> tuple[int, int, int]:
        return x * self.factor, os.getpid(), Counted.built


def test_class_workers_are_built_once_per_process(start: str) -> None:
    got, report = collect(range(300), proc_layer(Counted, 2, args=(3,), start=start))
    assert sorted(v for v, _, _ in got) == [3 * x for x in range(300)]
    assert {built for _, _, built in got} == {1}
    assert len({pid for _, pid, _ in got}) <= 2
    assert report.layers[0].restarts == 0


class AsyncResource:
    """An async context manager worker: needs the event loop inside the worker process."""

    async def __aenter__(self) -> AsyncResource:
        self.ready = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.ready = False

    async def __call__(self, x: int) -> int:
        assert self.ready
        return x + 1


def test_async_class_and_generator_kinds_in_processes() -> None:
    async def agen(x: int) -> AsyncIterator[int]:
        yield x
        yield -x

    def gen(x: int) -> Iterator[int]:
        if x % 3 == 0:
            yield x

    got, _ = gather(range(30), proc_layer(AsyncResource), proc_layer(agen), proc_layer(gen))
    assert sorted(got) == sorted(v for x in range(1, 31) for v in (x, -x) if v % 3 == 0)


# --- exceptions ---------------------------------------------------------------------------


class Explosion(Exception):
    pass


def explode(x: int) -> int:
    if x == 13:
        raise Explosion(f"boom at {x}")
    return x


def test_remote_exception_keeps_its_type_and_traceback() -> None:
    with pytest.raises(Explosion, match="boom at 13") as info:
        af.run(range(50), proc_layer(explode, name="fragile"))
    notes = _notes(info.value)
    assert "traceback in worker process" in notes
    assert "in explode" in notes  # the remote frame
    assert "layer 'fragile'" in notes
    assert "on item 13" in notes


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_needs_two(x: int) -> int:
    raise NeedsTwo(x, 2)


def test_exception_that_cannot_travel_back_is_described() -> None:
    with pytest.raises(af.SerializationError, match=r"NeedsTwo: 0/2") as info:
        af.run([0], proc_layer(raise_needs_two, 1))
    assert "in raise_needs_two" in _notes(info.value)


# --- crash matrix -------------------------------------------------------------------------


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _segfault() -> None:
    ctypes.string_at(0)


def _exit3() -> None:
    os._exit(3)


@pytest.mark.parametrize(
    ("crash", "described", "exitcode"),
    [
        (_sigkill, "killed by SIGKILL", -signal.SIGKILL),
        (_segfault, "killed by SIGSEGV", -signal.SIGSEGV),
        (_exit3, "exit code 3", 3),
    ],
)
def test_an_item_that_keeps_crashing_its_worker_fails_by_name(
    crash: Any, described: str, exitcode: int
) -> None:
    def poison(x: int) -> int:
        if x == 5:
            crash()
        return x

    with pytest.raises(af.WorkerCrashed) as info:
        af.run(range(20), proc_layer(poison, name="victim"))
    message = str(info.value)
    assert "layer 'victim'" in message
    assert "item 5 crashed its worker 3 times" in message
    assert described in message
    assert info.value.exitcode == exitcode


def dies_once_at(item: int, marker: Path) -> Callable[[int], int]:
    """A per-item function whose process kills itself at ``item``, the first time only
    (``marker`` records that it did, across processes)."""

    def once(x: int) -> int:
        if x == item and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    return once


def test_a_worker_that_dies_once_is_replaced_and_its_items_retried(
    tmp_path: Path, start: str
) -> None:
    once = dies_once_at(30, tmp_path / "crashed")
    got, report = collect(range(100), proc_layer(once, name="once", start=start))
    assert sorted(got) == list(range(100))
    stats = report.layer("once")
    assert stats.restarts == 1
    assert stats.retried >= 1
    assert (stats.received, stats.emitted, stats.failed) == (100, 100, 0)


def test_sys_exit_in_a_worker_travels_back_like_on_every_backend() -> None:
    def leave(x: int) -> int:
        sys.exit(3)

    with pytest.raises(SystemExit) as info:
        af.run(range(5), proc_layer(leave))
    assert info.value.code == 3


class PicklingFails:
    def __reduce__(self) -> Any:
        raise ValueError("refuses to be pickled")

    def __repr__(self) -> str:
        return "PicklingFails()"


def test_an_item_that_cannot_be_pickled_fails_by_name() -> None:
    items: list[Any] = [1, 2, PicklingFails(), 4]
    with pytest.raises(af.SerializationError, match=r"item PicklingFails\(\) cannot be pickled"):
        af.run(items, proc_layer(lambda x: x, 1, name="ship"))


def test_a_result_that_cannot_be_pickled_fails_its_item() -> None:
    def make(x: int) -> Any:
        return PicklingFails() if x == 4 else x

    with pytest.raises(af.SerializationError) as info:
        af.run(range(10), proc_layer(make, 1, name="maker"))
    assert "result PicklingFails() of item 4 cannot be pickled" in str(info.value)
    assert "on item 4" in _notes(info.value)


def test_generator_results_are_traced_to_their_item() -> None:
    def fan(x: int) -> Iterator[Any]:
        yield x
        yield PicklingFails() if x == 6 else x

    with pytest.raises(af.SerializationError, match="of item 6 cannot be pickled"):
        af.run(range(10), proc_layer(fan, 1))


def _refuse_outside_parent() -> int:
    if os.getpid() != PARENT_PID:
        raise ValueError("cannot be rebuilt here")
    return 0


class UnpicklesOnlyInParent:
    def __reduce__(self) -> Any:
        return (_refuse_outside_parent, ())

    def __repr__(self) -> str:
        return "UnpicklesOnlyInParent()"


def test_an_item_that_cannot_be_unpickled_in_the_worker_fails_by_name() -> None:
    items: list[Any] = [1, 2, UnpicklesOnlyInParent(), 3]
    with pytest.raises(af.SerializationError, match=r"UnpicklesOnlyInParent\(\) cannot be unpick"):
        af.run(items, proc_layer(lambda x: x, 1))


class UnpicklesOnlyInWorker:
    def __reduce__(self) -> Any:
        return (_refuse_in_parent, ())


def _refuse_in_parent() -> int:
    if os.getpid() == PARENT_PID:
        raise ValueError("cannot be rebuilt in the parent")
    return 0


def test_a_result_that_cannot_be_unpickled_in_the_parent_fails_its_batch() -> None:
    def make(x: int) -> Any:
        return UnpicklesOnlyInWorker() if x == 2 else x

    with pytest.raises(af.SerializationError, match="cannot be unpickled here") as info:
        af.run([2], proc_layer(make, 1, name="maker"))
    assert "cannot be rebuilt in the parent" in str(info.value)


# --- chaos --------------------------------------------------------------------------------


def spin_briefly(x: int) -> tuple[int, int]:
    deadline = time.perf_counter() + 0.0002
    while time.perf_counter() < deadline:
        pass
    return x, os.getpid()


@pytest.mark.slow
def test_chaos_random_sigkills_lose_and_duplicate_nothing() -> None:
    """SIGKILL a random worker again and again: every item still arrives exactly once.

    A worker is only killed after it has delivered enough outputs to be past the retries of the
    previous kill (batches here hold at most a few items), so no item is hit three times.
    """
    n, kills = 2000, 8
    rng = random.Random(7)
    seen: collections.Counter[int] = collections.Counter()
    since: collections.Counter[int] = collections.Counter()
    killed = 0
    layer = proc_layer(spin_briefly, 2, maxsize=16, name="chaos")
    with af.open_stream(range(n), layer) as results:
        for x, pid in results:
            seen[x] += 1
            since[pid] += 1
            # Never near the end: the consumer lags the workers by up to the channels' bounds,
            # and a worker killed after its last batch is (rightly) not replaced.
            if killed < kills and x < n - 600 and (x + 1) % (n // (kills + 4)) == 0:
                ready = [pid for pid, count in since.items() if count >= 40]
                alive = {p.pid for p in _workers()}
                candidates = sorted(set(ready) & alive)
                if candidates:
                    os.kill(rng.choice(candidates), signal.SIGKILL)
                    killed += 1
                    since.clear()
    assert killed >= kills // 2
    assert sorted(seen) == list(range(n))
    assert set(seen.values()) == {1}
    stats = results.report.layer("chaos")
    assert stats.restarts == killed
    assert stats.emitted == n


# --- signals and orphans ------------------------------------------------------------------


def test_workers_ignore_sigint() -> None:
    out = []
    with af.open_stream(range(200), proc_layer(spin_briefly, 2, maxsize=8)) as results:
        for x, pid in results:
            if not out:
                os.kill(pid, signal.SIGINT)
            out.append(x)
    assert sorted(out) == list(range(200))
    assert results.report.layers[0].restarts == 0


def test_busy_workers_are_killed_when_the_run_fails() -> None:
    """Workers stuck in hour-long items: the run must still end at once (or the test times
    out), and the leak check proves they are gone."""

    def first_passes(x: int) -> int:
        if x != 0:
            time.sleep(3600)
        return x

    async def fail(x: int) -> int:
        raise RuntimeError("downstream failed")

    with pytest.raises(RuntimeError, match="downstream failed"):
        af.run(range(10), proc_layer(first_passes, 2), af.Layer(fail))


def test_cancelling_a_run_kills_busy_workers(tmp_path: Path) -> None:
    def sleep_forever(x: int) -> int:
        (tmp_path / f"{x}").touch()
        time.sleep(3600)
        return x

    async def main() -> None:
        task = asyncio.create_task(af.pipeline(range(10), proc_layer(sleep_forever, 2)))
        # Wait until both workers are inside an hour-long item.
        while len(list(tmp_path.iterdir())) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main())


_SCRIPT = """
import os, sys, time
sys.path.insert(0, {src!r})
import async_flow as af

def spin(x):
    os.write(1, b"spinning\\n")  # one write: the two workers' lines must not interleave
    while True:
        pass

try:
    # The first Ctrl-C drains; the workers never finish an item, so the drain times out.
    af.run(
        range(100),
        af.Layer(spin, 2, backend="process", options={{"start_method": {start!r}}}),
        drain_timeout=0.5,
    )
except KeyboardInterrupt:
    import psutil
    left = [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]
    print("interrupted; children left:", len(left), flush=True)
"""


def _start_script(start: str) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT.format(src=SRC, start=start))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        # Both workers are inside an endless item once each has printed its line.
        for _ in range(2):
            line = proc.stdout.readline()
            assert line == "spinning\n", (line, proc.poll())
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
    except BaseException:
        # Not started as expected: take the script and its workers down, or they spin on.
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()
        raise
    return proc, workers


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.slow
def test_workers_exit_when_the_parent_is_sigkilled(start: str) -> None:
    proc, workers = _start_script(start)
    try:
        proc.kill()
        proc.wait()
        # Workers poll for their parent every 0.2 s; 5 s is a generous bound on a loaded machine.
        assert wait_until(lambda: _gone(workers), 5.0), [p.pid for p in workers]
    finally:
        for p in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        assert proc.stdout is not None
        proc.stdout.close()


_BUSY_SCRIPT = """
import sys, time
sys.path.insert(0, {src!r})
import async_flow as af

def work(x):
    time.sleep(0.002)
    return x

def collect(x):
    if x == 50:
        print("ready", flush=True)

# Short items: when the parent dies the workers are about to write a result to it.
af.run(
    range(10**9),
    af.Layer(work, 2, backend="process", options={{"start_method": {start!r}}}),
    af.Layer(collect),
)
"""


@pytest.mark.slow
def test_workers_of_a_sigkilled_parent_exit_at_once_and_silently(
    start: str, tmp_path: Path
) -> None:
    """Workers writing results when their parent is SIGKILLed: they leave without a word.

    The workers share the parent's stderr (a file here), so anything they print on the way out
    (a ``BrokenPipeError`` traceback) lands in it. They die with the parent (PR_SET_PDEATHSIG on
    Linux, well within 0.5 s when measured); 5 s is only a generous bound for a loaded machine.
    """
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BUSY_SCRIPT.format(src=SRC, start=start)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    workers: list[psutil.Process] = []
    try:
        assert proc.stdout.readline() == "ready\n", proc.poll()
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        proc.kill()
        proc.wait()
        assert wait_until(lambda: _gone(workers), 5.0), [p.pid for p in workers]
    finally:
        for p in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.stdout.close()
    assert err_path.read_text() == ""


@pytest.mark.slow
def test_ctrl_c_in_the_parent_stops_every_worker_before_it_returns() -> None:
    proc, workers = _start_script("auto")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "interrupted; children left: 0" in out
    assert _gone(workers)


def _spin_2ms(x: int) -> int:
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass
    return x


def _spin_10ms(x: int) -> int:
    end = time.perf_counter() + 0.01
    while time.perf_counter() < end:
        pass
    return x


def test_busy_time_counts_each_worker_once_with_two_batches_in_flight() -> None:
    # Each worker has a second batch queued while it runs one; a worker is busy once, not twice.
    out, report = gather(range(300), proc_layer(_spin_2ms, 2))
    assert sorted(out) == list(range(300))
    stats = report.layers[0]
    assert stats.busy_seconds <= stats.workers * stats.elapsed * 1.01
    # The work itself (0.6 s of spinning) is inside the busy time.
    assert stats.busy_seconds >= 300 * 0.002
    assert stats.busy_workers == 0


def _inc(x: int) -> int:
    return x + 1


def test_tiny_items_widen_the_input_channel_and_slow_items_do_not() -> None:
    # Batches are cut from the channel: tiny items need a wider one to travel in large batches.
    out, report = gather(range(20_000), proc_layer(_inc, 2))
    assert sorted(out) == list(range(1, 20_001))
    assert 256 < report.layers[0].maxsize <= 2 * ProcessBackend.channel_room_per_worker
    # Slow items (10 ms, an eighth of a batch's target) travel a few at a time: the channel
    # keeps its default bound.
    out, report = gather(range(30), proc_layer(_spin_10ms, 2))
    assert sorted(out) == list(range(30))
    assert report.layers[0].maxsize == 256  # the default
    # A bound the user gave is kept.
    out, report = gather(range(20_000), proc_layer(_inc, 2, maxsize=64))
    assert len(out) == 20_000
    assert report.layers[0].maxsize == 64
