"""Runs on uvloop (``loop_factory=uvloop.new_event_loop``): the same runtime, another event loop.

Every test checks that the run really happened on uvloop (a layer or the collector looks at the
running loop), so that a ``loop_factory`` quietly ignored fails here.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import async_flow as af
from tests.conftest import LOCAL_BACKENDS, run_async
from tests.test_core import adouble, double, fail_on_7
from tests.test_process import dies_once_at
from tests.test_shutdown import (
    _finish,
    _gone,
    _start,
    ctrl_c_twice,
    ctrl_c_without_signal_handling,
    program_handling_sigterm_on_its_loop,
    signal_at,
)

uvloop = pytest.importorskip("uvloop")

T = TypeVar("T")


class LoopSeen:
    """A layer (or collector) that keeps each item and the type of the loop it was called on,
    and passes the item on."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.loops: set[type] = set()

    async def __call__(self, x: Any) -> Any:
        self.loops.add(type(asyncio.get_running_loop()))
        self.items.append(x)
        return x


def on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh uvloop and check it left no task behind."""

    async def checked() -> T:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return await coro

    return run_async(checked(), loop_factory=uvloop.new_event_loop)


# --- af.run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [double, adouble])
def test_run_on_uvloop_every_backend(backend: str, fn: Any) -> None:
    seen = LoopSeen()
    report = af.run(
        range(300),
        af.Layer(fn, 3, backend=backend, name="double"),
        af.Layer(seen),
        loop_factory=uvloop.new_event_loop,
    )
    assert seen.loops == {uvloop.Loop}
    assert sorted(seen.items) == [2 * x for x in range(300)]
    assert report.status == "completed"
    assert (report.layer("double").received, report.layer("double").emitted) == (300, 300)


def test_the_default_loop_is_asyncio_s_own() -> None:
    seen = LoopSeen()
    af.run(range(3), af.Layer(seen))
    assert seen.loops
    assert not any(issubclass(t, uvloop.Loop) for t in seen.loops)


def test_async_and_thread_layers_chained_many_short_awaits() -> None:
    async def io(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    # The 50-worker layer is unordered: its outputs come in whatever order its timers fire (on
    # uvloop, timers due in the same millisecond fire in no set order). One worker then numbers
    # them as they arrive, and the ordered layers after it must keep that numbering.
    arrival = itertools.count()

    async def number(x: int) -> tuple[int, int]:
        return next(arrival), x

    def double_value(pair: tuple[int, int]) -> tuple[int, int]:
        return pair[0], 2 * pair[1]

    async def adouble_value(pair: tuple[int, int]) -> tuple[int, int]:
        await asyncio.sleep(0)
        return pair[0], 2 * pair[1]

    seen = LoopSeen()
    report = af.run(
        range(500),
        af.Layer(io, 50),
        af.Layer(number, 1),
        af.Layer(double_value, 4, backend="thread", ordered=True),
        af.Layer(adouble_value, 8, ordered=True),
        af.Layer(seen),
        loop_factory=uvloop.new_event_loop,
    )
    assert seen.loops == {uvloop.Loop}
    assert [n for n, _ in seen.items] == list(range(500))  # the ordered layers kept the order
    assert sorted(v for _, v in seen.items) == [4 * x for x in range(500)]  # every item, once
    assert report.source.exhausted


def test_a_layer_error_is_reraised_as_itself_with_its_note(backend: str) -> None:
    # The layer in front sees every item up to 7 at least, on the run's loop.
    seen = LoopSeen()
    with pytest.raises(ValueError, match="seven is bad") as info:
        af.run(
            range(100),
            af.Layer(seen),
            af.Layer(fail_on_7, 3, backend=backend, name="check"),
            loop_factory=uvloop.new_event_loop,
        )
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "layer 'check'" in notes
    assert "on item 7" in notes
    assert seen.loops == {uvloop.Loop}


def test_a_worker_process_that_dies_is_replaced_and_its_items_retried(tmp_path: Path) -> None:
    once = dies_once_at(30, tmp_path / "crashed")
    seen = LoopSeen()
    report = af.run(
        range(100),
        af.Layer(once, 2, backend="process", name="once"),
        af.Layer(seen),
        loop_factory=uvloop.new_event_loop,
    )
    assert seen.loops == {uvloop.Loop}
    assert sorted(seen.items) == list(range(100))
    stats = report.layer("once")
    assert stats.restarts == 1
    assert (stats.received, stats.emitted, stats.failed) == (100, 100, 0)


def test_a_bad_loop_factory_fails_at_the_call() -> None:
    with pytest.raises(TypeError, match="loop_factory must be a callable"):
        af.run(range(3), af.Layer(double), loop_factory="uvloop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loop_factory must be a callable"):
        af.open_stream(range(3), loop_factory=uvloop)


# --- signals -----------------------------------------------------------------------------------


def test_first_signal_drains_and_everything_read_is_collected() -> None:
    seen = LoopSeen()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(af.Interrupted) as info:
        af.run(
            itertools.count(),
            af.Layer(signal_at(50), 3, maxsize=16),
            af.Layer(seen, maxsize=16),
            loop_factory=uvloop.new_event_loop,
        )
    stop = info.value
    assert (stop.signum, stop.exit_code, stop.drained) == (signal.SIGINT, 130, True)
    assert stop.report.status == "interrupted"
    assert seen.loops == {uvloop.Loop}
    assert sorted(seen.items) == list(range(stop.report.source.produced))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_drains_too_and_maps_to_143() -> None:
    seen = LoopSeen()
    with pytest.raises(af.Interrupted) as info:
        af.run(
            itertools.count(),
            af.Layer(signal_at(10, signal.SIGTERM)),
            af.Layer(seen),
            loop_factory=uvloop.new_event_loop,
        )
    assert seen.loops == {uvloop.Loop}
    assert info.value.exit_code == 143
    assert info.value.report.status == "interrupted"


def test_without_signal_handling_ctrl_c_is_a_plain_keyboard_interrupt() -> None:
    seen = LoopSeen()
    error = ctrl_c_without_signal_handling(seen, loop_factory=uvloop.new_event_loop)
    assert not isinstance(error, af.Interrupted)
    assert seen.loops == {uvloop.Loop}


def test_a_signal_the_program_handles_on_its_uvloop_is_left_to_it() -> None:
    on_uvloop(program_handling_sigterm_on_its_loop())


@pytest.mark.slow
@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
def test_a_program_on_uvloop_drains_on_sigint_and_exits_130(tmp_path: Path, backend: str) -> None:
    import psutil

    proc, out = _start(tmp_path, 0.01, 30, backend, loop="uvloop")
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    result = _finish(proc, 30)
    assert proc.returncode == 130
    assert result["loops"] == ["uvloop"]
    assert result["drained"] is True
    report = result["report"]
    assert report["status"] == "interrupted"
    collected = [int(line) for line in out.read_text().split()]
    assert sorted(collected) == list(range(report["source"]["produced"]))
    assert _gone(workers)


@pytest.mark.slow
def test_a_program_on_uvloop_aborts_on_a_second_sigint(tmp_path: Path) -> None:
    import psutil

    proc, out = _start(tmp_path, 0.5, 60, "process", loop="uvloop")
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    ctrl_c_twice(proc)
    result = _finish(proc, 30)
    assert proc.returncode == 130
    assert result["loops"] == ["uvloop"]
    assert result["drained"] is False
    assert result["report"]["status"] == "interrupted"
    assert len(out.read_text().split()) < result["report"]["source"]["produced"]
    assert _gone(workers)


# --- open_stream -------------------------------------------------------------------------------


def test_sync_stream_on_uvloop(backend: str) -> None:
    loops: list[type] = []

    async def look(x: int) -> int:
        loops.append(type(asyncio.get_running_loop()))
        return x

    layers = (af.Layer(double, 2, backend=backend), af.Layer(look, ordered=True))
    with af.open_stream(range(200), *layers, loop_factory=uvloop.new_event_loop) as results:
        got = list(results)
    assert sorted(got) == [2 * x for x in range(200)]
    assert set(loops) == {uvloop.Loop}
    assert results.report.status == "completed"


def test_leaving_a_sync_stream_on_uvloop_early_cancels_the_run() -> None:
    seen = LoopSeen()
    with af.open_stream(
        itertools.count(), af.Layer(double, 2), af.Layer(seen), loop_factory=uvloop.new_event_loop
    ) as results:
        first = [next(results) for _ in range(5)]
    # Five doubles of five distinct items, then the run stopped with the source still open.
    assert len(set(first)) == 5
    assert all(x % 2 == 0 and x >= 0 for x in first)
    assert seen.loops == {uvloop.Loop}
    assert results.report.status == "cancelled"
    assert not results.report.source.exhausted


def test_a_sync_stream_on_uvloop_reraises_a_layer_error() -> None:
    seen = LoopSeen()
    layers = (af.Layer(seen), af.Layer(fail_on_7))
    with (
        pytest.raises(ValueError, match="seven is bad"),
        af.open_stream(range(20), *layers, loop_factory=uvloop.new_event_loop) as r,
    ):
        list(r)
    assert seen.loops == {uvloop.Loop}


def test_a_loop_factory_that_fails_fails_the_with() -> None:
    def broken() -> asyncio.AbstractEventLoop:
        raise OSError("no loop today")

    with (
        pytest.raises(OSError, match="no loop today"),
        af.open_stream(range(3), af.Layer(double), loop_factory=broken),
    ):
        raise AssertionError("entered a stream without a loop")


def test_async_with_refuses_a_loop_factory() -> None:
    async def main() -> None:
        stream = af.open_stream(range(3), af.Layer(double), loop_factory=uvloop.new_event_loop)
        with pytest.raises(RuntimeError, match="loop_factory is for 'with"):
            async with stream:
                raise AssertionError("entered")

    on_uvloop(main())


def test_async_stream_inside_a_uvloop_needs_no_factory() -> None:
    async def main() -> list[int]:
        async with af.open_stream(range(50), af.Layer(adouble, 4, ordered=True)) as results:
            return [x async for x in results]

    assert on_uvloop(main()) == [2 * x for x in range(50)]
