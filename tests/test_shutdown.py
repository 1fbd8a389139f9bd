"""Graceful shutdown: real signals, in this process and to a pipeline run as a program."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
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
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(af.Interrupted) as info:
        af.run(
            itertools.count(),
            af.Layer(signal_at(50), 3, maxsize=16),
            af.Layer(collected.append, maxsize=16),
        )
    stop = info.value
    assert (stop.signum, stop.exit_code, stop.drained) == (signal.SIGINT, 130, True)
    report = stop.report
    assert report.status == "interrupted"
    assert not report.source.exhausted
    # Every item the source produced went all the way through.
    assert sorted(collected) == list(range(report.source.produced))
    assert report.layers[-1].received == report.source.produced
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


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
    tmp_path: Path, delay: float, drain_timeout: float, backend: str, loop: str = "asyncio"
) -> Any:
    out = tmp_path / "collected.txt"
    env = dict(os.environ)
    src = str(Path(af.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(SCRIPT.parents[1])])
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(delay), str(drain_timeout), backend, loop],
        stdout=subprocess.PIPE,
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
    produced = report["source"]["produced"]
    collected = [int(line) for line in out.read_text().split()]
    assert sorted(collected) == list(range(produced))
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
