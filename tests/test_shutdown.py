"""Graceful shutdown: real signals, in this process and to a pipeline run as a program."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import async_flow as af
from tests.conftest import LOCAL_BACKENDS, run_async

SCRIPT = Path(__file__).with_name("signal_pipeline.py")


def signal_at(n: int, signum: int = signal.SIGINT) -> Any:
    """A layer function that sends this process ``signum`` when it sees item ``n``."""

    def fn(x: int) -> int:
        if x == n:
            os.kill(os.getpid(), signum)
        return x

    return fn


def test_first_signal_drains_and_everything_read_is_collected() -> None:
    collected: list[int] = []
    yielded: list[int] = []

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            yielded.append(i)
            yield i

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(af.Interrupted) as info:
        af.run(
            numbers(),
            af.Layer(signal_at(50), 3, maxsize=16),
            af.Layer(collected.append, maxsize=16),
        )
    stop = info.value
    assert (stop.signum, stop.exit_code, stop.drained) == (signal.SIGINT, 130, True)
    report = stop.report
    assert report.status == "interrupted"
    assert not report.source.exhausted
    # Every item that left the generator went all the way through (counted where it was
    # yielded: the report cannot see an item dropped before the pipeline had it).
    assert sorted(collected) == yielded
    assert report.source.produced == len(yielded)
    assert report.layers[-1].received == len(yielded)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class _CountedList(list[int]):
    """A plain list whose iteration records each item it hands out."""

    def __init__(self, items: Iterable[int], handed_out: list[int]) -> None:
        super().__init__(items)
        self.handed_out = handed_out

    def __iter__(self) -> Iterator[int]:
        for item in super().__iter__():
            self.handed_out.append(item)
            yield item


def _counted_source(kind: str, yielded: list[int]) -> Any:
    """An endless (or long) source of ``kind`` that appends each item it yields to ``yielded``."""

    def numbers(start: int = 0, step: int = 1) -> Iterator[int]:
        for i in itertools.count(start, step):
            yielded.append(i)
            yield i

    async def anumbers(start: int = 0, step: int = 1) -> AsyncIterator[int]:
        for i in itertools.count(start, step):
            yielded.append(i)
            yield i
            if i % 8 == 0:
                await asyncio.sleep(0)  # a source that waits now and then, as one reading I/O

    if kind == "generator":
        return numbers()
    if kind == "async generator":
        return anumbers()
    if kind == "merge":
        return af.merge(numbers(0, 2), anumbers(1, 2))
    return _CountedList(range(200_000), yielded)


@pytest.mark.parametrize("kind", ["generator", "async generator", "merge", "list"])
def test_the_drain_finishes_every_item_the_source_yielded(kind: str, backend: str) -> None:
    """One SIGINT: every item that left the user's iterator is collected, none twice.

    The collector is the slow stage, so when the signal comes the source is held back with items
    in every hand-off: in the thread reading a generator, in a send suspended on a full channel,
    in a chunk read from a list.
    """
    yielded: list[int] = []
    collected: list[int] = []

    def collect(x: int) -> None:
        collected.append(x)
        if len(collected) == 300:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.0002)

    with pytest.raises(af.Interrupted) as info:
        af.run(
            _counted_source(kind, yielded),
            af.Layer(abs, 4, backend=backend, maxsize=16),
            af.Layer(collect, maxsize=16),
        )
    assert info.value.drained is True
    assert len(yielded) > 300
    assert len(collected) == len(set(collected))
    assert sorted(collected) == sorted(yielded), (
        f"{len(set(yielded) - set(collected))} yielded item(s) lost"
    )
    assert info.value.report.source.produced == len(yielded)


def test_sigterm_drains_too_and_maps_to_143() -> None:
    async def main() -> None:
        with pytest.raises(af.Interrupted) as info:
            await af.pipeline(itertools.count(), af.Layer(signal_at(10, signal.SIGTERM)))
        assert info.value.exit_code == 143
        assert info.value.report.status == "interrupted"

    run_async(main())


def test_the_drain_timeout_aborts_a_drain_that_hangs() -> None:
    release = asyncio.Event()

    async def hang_after_signal(x: int) -> int:
        if x == 5:
            os.kill(os.getpid(), signal.SIGINT)
        if x >= 5:
            await release.wait()  # never set: only the abort ends this
        return x

    with pytest.raises(af.Interrupted) as info:
        af.run(range(100), af.Layer(hang_after_signal, 2), drain_timeout=0.2)
    assert info.value.drained is False
    assert info.value.report.status == "interrupted"


def ctrl_c_without_signal_handling(
    collect: Callable[[Any], Any], loop_factory: Callable[[], Any] | None = None
) -> KeyboardInterrupt:
    """Run an endless pipeline with ``handle_signals=False`` that sends itself a SIGINT; return
    what it raised."""
    # What Ctrl-C does here is up to the process's own handler: make it Python's default, as in
    # a plain script (a test session may have another one in place, which asyncio then keeps).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            af.run(
                itertools.count(),
                af.Layer(signal_at(20), maxsize=4),
                af.Layer(collect, maxsize=4),
                handle_signals=False,
                loop_factory=loop_factory,
            )
    finally:
        signal.signal(signal.SIGINT, before)
    return info.value


def test_without_signal_handling_ctrl_c_is_a_plain_keyboard_interrupt() -> None:
    collected: list[int] = []
    error = ctrl_c_without_signal_handling(collected.append)
    assert not isinstance(error, af.Interrupted)
    assert collected  # it ran until the signal


def test_off_the_main_thread_signals_are_not_touched() -> None:
    seen: list[Any] = []
    before = signal.getsignal(signal.SIGINT)

    def look(x: int) -> int:
        seen.append(signal.getsignal(signal.SIGINT))
        return x

    thread = threading.Thread(target=af.run, args=(range(2), af.Layer(look)))
    thread.start()
    thread.join()
    assert seen == [before] * 2


async def program_handling_sigterm_on_its_loop() -> None:
    """A program with its own SIGTERM handler on the loop runs a pipeline that sends a SIGTERM:
    the program's handler gets it, the run completes, and the handler is still in place."""
    loop = asyncio.get_running_loop()
    got: list[int] = []
    loop.add_signal_handler(signal.SIGTERM, got.append, 1)
    try:
        report = await af.pipeline(range(20), af.Layer(signal_at(5, signal.SIGTERM)))
        assert report.status == "completed"
        assert report.layers[0].emitted == 20
        assert got == [1]
    finally:
        assert loop.remove_signal_handler(signal.SIGTERM)


def test_a_signal_the_program_handles_on_its_loop_is_left_to_it() -> None:
    run_async(program_handling_sigterm_on_its_loop())


def test_bad_drain_timeout() -> None:
    with pytest.raises(ValueError, match="drain_timeout"):
        af.run(range(2), af.Layer(str), drain_timeout=-1)


# --- a real program, real signals -------------------------------------------------------------


def _start(
    tmp_path: Path,
    delay: float,
    drain_timeout: float,
    backend: str,
    loop: str = "asyncio",
    mode: str = "caught",
    stderr: Any = None,
) -> Any:
    out = tmp_path / "collected.txt"
    env = dict(os.environ)
    src = str(Path(af.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(SCRIPT.parents[1])])
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            str(out),
            str(delay),
            str(drain_timeout),
            backend,
            loop,
            mode,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc, out


def _finish(proc: Any, timeout: float) -> dict[str, Any]:
    stdout, _ = proc.communicate(timeout=timeout)
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ctrl_c_twice(proc: Any) -> None:
    """Two SIGINTs, as a person pressing Ctrl-C twice: the second once the first one's drain
    has begun (the program says so), since two signals sent together may merge into one."""
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "source closed"
    proc.send_signal(signal.SIGINT)


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
def test_sigint_once_drains_and_exits_130(tmp_path: Path, backend: str) -> None:
    proc, out = _start(tmp_path, 0.01, 30, backend)
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    result = _finish(proc, 30)
    assert proc.returncode == 130
    report = result["report"]
    assert result["drained"] is True
    assert report["status"] == "interrupted"
    # Counted where the generator yielded them, not from the report.
    yielded = [int(line) for line in Path(f"{out}.yielded").read_text().split()]
    collected = [int(line) for line in out.read_text().split()]
    assert sorted(collected) == yielded
    assert report["source"]["produced"] == len(yielded)
    assert _gone(workers)


@pytest.mark.slow
@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
def test_sigint_twice_aborts_at_once(tmp_path: Path, backend: str) -> None:
    # 0.5 s per item, 4 workers, 64 items buffered: draining would take several seconds.
    proc, out = _start(tmp_path, 0.5, 60, backend)
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    ctrl_c_twice(proc)
    result = _finish(proc, 30)
    assert proc.returncode == 130
    # Aborted, not drained: the items inside were dropped (a drain of them would take seconds;
    # how long the abort took is not measured, as it depends on the machine's load).
    assert result["drained"] is False
    report = result["report"]
    assert report["status"] == "interrupted"
    collected = out.read_text().split()
    assert len(collected) < report["source"]["produced"]  # the abort dropped items inside
    assert _gone(workers)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_an_uncaught_interrupted_ends_the_program_like_the_signal(
    tmp_path: Path, signum: int, status: int
) -> None:
    """A program that does not catch af.Interrupted dies by the signal (as Python programs do
    on Ctrl-C), after printing the report and one line, with no traceback, and after its atexit
    handlers ran."""
    proc, out = _start(tmp_path, 0.01, 30, "thread", mode="uncaught", stderr=subprocess.PIPE)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode in (-signum, status), (proc.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    said = [line for line in stderr.splitlines() if line.startswith("async_flow: ")]
    again = "Ctrl-C" if signum == signal.SIGINT else name
    # The drain announced itself when the signal came, and one line said how the run ended.
    assert re.fullmatch(
        rf"async_flow: {name}: draining \d+ items in flight; {again} again to abort", said[0]
    ), said
    assert said[1:] == [
        f"async_flow: run interrupted by {name} (drained): {_read(out)} source items read"
    ]
    assert "async_flow run interrupted in" in stderr  # the report's first line
    assert stdout.splitlines()[-1] == "atexit ran"
    # The drain still finished what the source yielded.
    assert sorted(_numbers(out)) == _numbers(Path(f"{out}.yielded"))


def _numbers(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def _read(out: Path) -> int:
    return len(_numbers(Path(f"{out}.yielded")))


class _SkippingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test can move forward (timers follow it)."""

    skipped = 0.0

    def time(self) -> float:
        return super().time() + self.skipped


def test_the_drain_timeout_defaults_to_30_seconds() -> None:
    """The drain hangs; the loop's clock is moved forward: the run is still draining at 29.5 s
    and aborted once 30 s are past."""
    loops: list[_SkippingLoop] = []
    seen: list[str] = []

    def make_loop() -> asyncio.AbstractEventLoop:
        loops.append(_SkippingLoop())
        return loops[-1]

    async def turns(n: int = 100) -> None:
        for _ in range(n):  # a signal's handler runs within a few turns of the loop
            await asyncio.sleep(0)

    async def hang_after_signal(x: int) -> int:
        if x == 5:
            os.kill(os.getpid(), signal.SIGINT)
            try:
                await turns()
                loops[0].skipped += 29.5
                await turns()
                seen.append("draining at 29.5s")
                loops[0].skipped += 1.0
                await turns()
                seen.append("draining at 30.5s")
            except asyncio.CancelledError:
                seen.append("aborted")
                raise
        return x

    with pytest.raises(af.Interrupted) as info:
        af.run(range(6), af.Layer(hang_after_signal), loop_factory=make_loop)
    assert seen == ["draining at 29.5s", "aborted"]
    assert info.value.drained is False


@pytest.mark.slow
@pytest.mark.skipif("process" not in LOCAL_BACKENDS, reason="no process backend")
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_terminals_ctrl_c_reaches_only_the_parent(tmp_path: Path, start: str) -> None:
    """A terminal sends Ctrl-C to its whole foreground process group. The program runs in a
    group of its own (as a shell's job would) and the signal goes to that group: the workers,
    in groups of their own and ignoring SIGINT, do not see it, and the run drains once. Both
    ways of starting workers: forked from the program, and fresh interpreters."""
    out = tmp_path / "collected.txt"
    env = dict(os.environ)
    src = str(Path(af.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(SCRIPT.parents[1])])
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), "0.01", "30", "process", "asyncio", "caught"]
        + ([] if start == "fork" else [start]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own session and process group, like a terminal's job
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        group = os.getpgid(proc.pid)
        assert group == proc.pid
        workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert workers
        assert all(os.getpgid(pid) != group for pid in workers)
        os.killpg(group, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["drained"] is True
    report = result["report"]
    assert report["status"] == "interrupted"
    assert all(layer["restarts"] == 0 for layer in report["layers"])  # no worker was lost
    assert "Traceback" not in stderr, stderr
    assert sorted(_numbers(out)) == _numbers(Path(f"{out}.yielded"))  # every item, once
    assert _gone(workers)
