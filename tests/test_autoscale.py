"""Autoscaling: Auto bounds, the controller on a manual clock, workers coming and going safely."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import async_flow as af
from async_flow import _autoscale
from async_flow._autoscale import (
    DOWN_AFTER,
    GROWTH,
    INTERVAL,
    UP_AFTER,
    Autoscaler,
    ManualClock,
    available_cpus,
    use_clock,
)
from async_flow._pipeline import Stream
from tests.conftest import _children, run_async

# --- module-level functions and classes, so that every backend (processes too) can run them ---


def double(x: int) -> int:
    return 2 * x


class Recorder:
    """A stateful worker that logs ``open``/``close`` lines to a file (works across processes)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._write("open")

    def _write(self, word: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{word} {id(self)}\n")

    def __call__(self, x: int) -> int:
        return x

    def close(self) -> None:
        self._write("close")


def _lines(path: Path, word: str) -> int:
    if not path.exists():
        return 0
    return sum(line.startswith(word + " ") for line in path.read_text().splitlines())


async def until(predicate: Callable[[], bool], what: str, attempts: int = 5000) -> None:
    """Explicit sequencing: yield to the loop (and the workers) until ``predicate`` holds."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def look(clock: ManualClock, looks: int = 1) -> None:
    """Let the controller take ``looks`` looks: advance the clock, wait until it sleeps again."""
    for _ in range(looks):
        await clock.wait_for_timers()
        clock.advance(INTERVAL)
        await clock.wait_for_timers()


def stats(stream: Stream[Any], layer: str) -> af.LayerStats | None:
    """The layer's live stats, or None before the run has built its layers."""
    return next((s for s in stream.report.layers if s.name == layer), None)


def changes(stream: Stream[Any], layer: str) -> list[int]:
    return [e.workers for e in stream.report.scaling if e.layer == layer and e.change]


async def queue_source(queue: asyncio.Queue[int | None]) -> AsyncIterator[int]:
    while (item := await queue.get()) is not None:
        yield item


# --- declaring -------------------------------------------------------------------------------


def test_auto_starts_at_min_or_start_and_keeps_its_bounds() -> None:
    layer = af.Layer(double, af.Auto(min=2, max=8))
    assert (layer.workers, layer.autoscale) == (2, af.Auto(2, 8))
    assert af.Layer(double, af.Auto(1, 8, start=5)).workers == 5
    assert af.Layer(double, 3).autoscale is None
    assert "Auto(min=2, max=8" in repr(layer)
    # The channel is sized for the most workers the layer may have.
    assert af.Layer(double, af.Auto(max=500)).maxsize == 1000
    assert not af.Layer(double, af.Auto(max=3), backend="process").fixed_maxsize
    assert af.Layer(double, 2, backend="process", maxsize=10).fixed_maxsize


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min": 0}, ValueError, "min must be >= 1"),
        ({"min": 3, "max": 2}, ValueError, r"max \(2\) must be >= min \(3\)"),
        ({"min": 2, "max": 4, "start": 5}, ValueError, "start"),
        ({"min": 1.5}, TypeError, "min must be an int"),
        ({"max": True}, TypeError, "max must be an int"),
    ],
)
def test_bad_bounds_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        af.Auto(**kwargs)


def test_available_cpus_respects_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "50000 100000\n"}, 0.5),  # cgroup v2: half a CPU
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_available_cpus_honours_a_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], quota: float | None
) -> None:
    """A fake cgroup hierarchy: the quota caps the affinity mask (rounded up, at least one), and
    an autoscaled process layer's max follows it."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(_autoscale, "CGROUP_ROOT", str(tmp_path))
    mask = len(os.sched_getaffinity(0))
    expected = mask if quota is None else min(mask, max(1, math.ceil(quota)))
    assert available_cpus() == expected

    async def main() -> None:
        from async_flow._channel import open_channel
        from async_flow._runtime import LayerRun

        _, receive = open_channel(4)
        run = LayerRun(0, af.Layer(double, af.Auto(), backend="process"), receive, None)
        scaler = Autoscaler([run])  # no cpus given: it reads them itself
        assert scaler.budgets["process"] == expected
        assert [m.high for m in scaler._managed] == [expected]

    run_async(main())


def test_default_max_depends_on_the_backend() -> None:
    async def main() -> None:
        from async_flow._channel import open_channel
        from async_flow._runtime import LayerRun

        def make(layer: af.Layer[Any, Any]) -> LayerRun:
            _, receive = open_channel(4)
            return LayerRun(0, layer, receive, None)

        runs = [make(af.Layer(double, af.Auto())), make(af.Layer(adouble, af.Auto()))]
        scaler = Autoscaler(runs, cpus=2)
        assert [m.high for m in scaler._managed] == [64, 256]
        assert not Autoscaler([make(af.Layer(double, 4))]).active

    run_async(main())


async def adouble(x: int) -> int:
    return 2 * x


# --- the controller, one look at a time ----------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_scales_up_under_a_full_channel_and_never_past_max(kind: str) -> None:
    async def main() -> None:
        aevent, tevent = asyncio.Event(), threading.Event()

        async def aheld(x: int) -> int:
            await aevent.wait()
            return x

        def theld(x: int) -> int:
            tevent.wait()
            return x

        fn: Any = aheld if kind == "async" else theld
        layer = af.Layer(fn, af.Auto(min=1, max=3), backend=kind, maxsize=4, name="held")
        clock = ManualClock()
        outputs: list[int] = []
        try:
            with use_clock(clock):
                stream = af.open_stream(range(40), layer)
            async with stream:

                def saturated(workers: int) -> Callable[[], bool]:
                    def check() -> bool:
                        s = stats(stream, "held")
                        return (
                            s is not None
                            and s.workers == s.busy_workers == workers
                            and s.queued == 4
                        )

                    return check

                await until(saturated(1), "one busy worker, full channel")
                await look(clock, 1 + UP_AFTER - 1)  # a first look, then short but not yet long
                assert changes(stream, "held") == []
                await look(clock)
                # Growing fourfold would give 4: max holds it at 3.
                assert changes(stream, "held") == [3]
                assert stream.report.layer("held").workers == 3
                await until(saturated(3), "three busy workers, full channel")
                await look(clock, 1 + 3 * UP_AFTER)  # one look sat out after the change
                assert changes(stream, "held") == [3]
                assert max(n for _, n in stream.report.workers_over_time("held")) == 3
                reasons = [e.reason for e in stream.report.scaling if e.change]
                assert all("input 100% full, workers 100% busy" in r for r in reasons), reasons
                aevent.set()
                tevent.set()
                outputs = [x async for x in stream]
        finally:
            aevent.set()
            tevent.set()
        assert sorted(outputs) == list(range(40))
        assert stream.report.workers_over_time("held") == [
            (pytest.approx(0.0), 1),
            (pytest.approx(3 * INTERVAL), 3),
        ]

    run_async(main())


def test_scales_down_while_starved_and_never_below_min(backend: str, tmp_path: Path) -> None:
    log = tmp_path / "workers.log"

    async def main() -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        layer = af.Layer(
            Recorder,
            af.Auto(min=1, max=6, start=4),
            backend=backend,
            name="rec",
            args=(str(log),),
        )
        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(queue_source(queue), layer)
        async with stream:
            for i in range(20):
                queue.put_nowait(i)
            first = [await anext(stream) for _ in range(20)]
            assert sorted(first) == list(range(20))
            await until(lambda: _lines(log, "open") == 4, "four workers opened")
            await look(clock, 1 + DOWN_AFTER - 1)
            assert changes(stream, "rec") == []
            await look(clock)
            # Idle: half the workers go at once, down to what the (zero) load needs.
            assert changes(stream, "rec") == [2]
            assert stream.report.layer("rec").workers == 2
            # Retired workers close their instance now, not at the end of the run.
            await until(lambda: _lines(log, "close") == 2, "two retired workers closed")
            await look(clock, 1 + DOWN_AFTER)
            assert changes(stream, "rec") == [2, 1]
            await until(lambda: _lines(log, "close") == 3, "a third worker closed")
            await look(clock, 3 * DOWN_AFTER)
            assert changes(stream, "rec") == [2, 1]  # min holds
            # The one that is left still works.
            for i in range(20, 50):
                queue.put_nowait(i)
            queue.put_nowait(None)
            rest = [x async for x in stream]
        assert sorted(first + rest) == list(range(50))
        assert stream.report.layer("rec").workers == 1
        assert "autoscaled rec: 4 -> 1 workers" in str(stream.report)
        # Each instance was built once and closed once.
        assert _lines(log, "open") == _lines(log, "close") == 4

    run_async(main())


def test_a_layer_blocked_on_output_does_not_grow() -> None:
    """A full input is not enough: if the layer below is full, more workers would not help."""

    async def main() -> None:
        release = asyncio.Event()

        async def slow_sink(x: int) -> int:
            await release.wait()
            return x

        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(
                range(100),
                af.Layer(adouble, af.Auto(max=8), maxsize=4, name="upper"),
                af.Layer(slow_sink, 1, maxsize=4, name="sink"),
            )
        try:
            async with stream:

                def sink_full() -> bool:
                    s = stats(stream, "sink")
                    return s is not None and s.queued == 4

                def upper_blocked() -> bool:
                    # Its one worker has nowhere to put its output: both channels are full.
                    s = stats(stream, "upper")
                    return s is not None and s.queued == 4 and sink_full()

                await until(sink_full, "sink channel full")
                await look(clock, 2 * UP_AFTER + 2)
                await until(upper_blocked, "upper blocked on output")
                await look(clock, 2 * UP_AFTER + 2)
                assert changes(stream, "upper") == []
                release.set()
                outputs = [x async for x in stream]
        finally:
            release.set()
        assert sorted(outputs) == [2 * x for x in range(100)]

    run_async(main())


def test_an_empty_source_ends_the_controller_with_the_run(backend: str) -> None:
    report = af.run([], af.Layer(double, af.Auto(), backend=backend, name="d"))
    assert report.layer("d").received == 0
    assert [(e.workers, e.reason) for e in report.scaling] == [(1, "start")]


def test_real_clock_run_grows_a_slow_layer_and_reports_it() -> None:
    """End to end on the event loop's clock (generous: only "it grew at some point")."""

    async def slow(x: int) -> int:
        await asyncio.sleep(0.005)
        return x

    report = af.run(range(400), af.Layer(slow, af.Auto(max=16), name="slow"))
    assert report.layer("slow").emitted == 400
    steps = report.workers_over_time("slow")
    assert steps[0][1] == 1
    assert max(n for _, n in steps) > 1
    assert report.to_dict()["scaling"][0]["reason"] == "start"


def fail_on_77(x: int) -> int:
    if x == 77:
        raise ValueError("77 is bad")
    return x


def _task_names() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks()}


def test_an_error_in_an_autoscaled_layer_stops_the_controller_too(backend: str) -> None:
    async def main() -> None:
        seen: set[str] = set()

        async def spy(x: int) -> int:
            seen.update(_task_names())
            return x

        with pytest.raises(ValueError, match="77 is bad") as info:
            await af.pipeline(
                range(200),
                af.Layer(spy),
                af.Layer(fail_on_77, af.Auto(max=4), backend=backend, name="f"),
            )
        assert any("layer 'f'" in note for note in info.value.__notes__)
        # The controller ran during the run, and ended with it (run_async also checks that no
        # task at all is left).
        assert "async_flow:autoscale" in seen
        assert "async_flow:autoscale" not in _task_names()

    run_async(main())


def test_cancelling_a_run_stops_the_controller_and_the_added_workers() -> None:
    async def main() -> None:
        clock = ManualClock()
        never = asyncio.Event()
        holding = 0

        async def held(x: int) -> int:
            nonlocal holding
            holding += 1
            try:
                await never.wait()
            finally:
                holding -= 1
            return x

        with use_clock(clock):
            task = asyncio.ensure_future(
                af.pipeline(range(100), af.Layer(held, af.Auto(max=8), maxsize=4, name="h"))
            )
        await until(lambda: holding == 1, "the first worker holds an item")
        # Looks until the controller grows the layer (its input is full, its worker busy): an
        # async layer grows fourfold, and each added worker takes an item and holds it.
        for _ in range(10 * UP_AFTER):
            await look(clock)
            if holding > 1:
                break
        await until(lambda: holding == GROWTH, f"{GROWTH} workers holding an item")
        assert "async_flow:autoscale" in _task_names()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Every worker, the added ones too, was cancelled out of its item; the controller ended.
        assert holding == 0
        assert "async_flow:autoscale" not in _task_names()

    run_async(main())


async def sleepy(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


# --- throughput verdicts, on the manual clock --------------------------------------------------
#
# The controller measures throughput on its clock. Here the work is paced by that clock too: a
# ``Paced`` service completes a call only with a token, and the test hands out a look's worth of
# tokens before each look (in rounds, each round as many tokens as the service serves at once), so
# the throughput every look measures is set by the test, whatever the machine's speed.

#: Rounds of calls a service serves between two looks (each round: one call per slot in use).
ROUNDS = 30


class Paced:
    """A service that serves ``slots`` calls at a time (None: one per caller), at the pace the
    test sets with tokens. Its calls work from worker threads and on the event loop."""

    def __init__(self, slots: int | None) -> None:
        self.slots = slots
        self.tokens = 0
        self.served = 0
        self.opened = False
        self._cond = threading.Condition()
        self._acond: asyncio.Condition | None = None

    def call(self, x: int) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.tokens > 0 or self.opened)
            self.tokens -= 1
            self.served += 1
        return x

    async def acall(self, x: int) -> int:
        if self._acond is None:
            self._acond = asyncio.Condition()
        async with self._acond:
            await self._acond.wait_for(lambda: self.tokens > 0 or self.opened)
            with self._cond:
                self.tokens -= 1
                self.served += 1
        return x

    def round(self, workers: int) -> int:
        """The calls served in one round by ``workers`` workers."""
        return workers if self.slots is None else min(self.slots, workers)

    async def grant(self, n: int) -> None:
        with self._cond:
            self.tokens += n
            self._cond.notify_all()
        if self._acond is not None:
            async with self._acond:
                self._acond.notify_all()

    def reset(self) -> None:
        """Capacity not used by a look is lost, as time is."""
        with self._cond:
            self.tokens = max(0, self.tokens) if self.opened else 0

    async def open(self) -> None:
        """Serve every call at once from now on (so that the run can end)."""
        self.opened = True
        await self.grant(0)


class Pace:
    """One paced layer of a stream: its service, rounds per look, and when it cannot go on."""

    def __init__(
        self,
        stream: Stream[Any],
        layer: str,
        service: Paced,
        rounds: int = ROUNDS,
        stuck: Callable[[], bool] = lambda: False,
    ) -> None:
        self.stream, self.layer, self.service, self.rounds = stream, layer, service, rounds
        self.stuck = stuck

    def workers(self) -> int:
        s = stats(self.stream, self.layer)
        return s.workers if s is not None else 1

    def quiet(self) -> bool:
        """This round's tokens are used, or the layer cannot use them (held up elsewhere)."""
        return self.service.tokens == 0 or self.stuck()


async def paced_looks(clock: ManualClock, looks: int, *paces: Pace) -> None:
    """``looks`` looks, each after a look's worth of rounds of every paced service."""
    for _ in range(looks):
        for i in range(max(p.rounds for p in paces)):
            for p in paces:
                if i < p.rounds:
                    await p.service.grant(p.service.round(p.workers()))
            await until(lambda: all(p.quiet() for p in paces), "a round served")
        for p in paces:
            p.service.reset()
        await look(clock)


async def drain(stream: Stream[Any]) -> None:
    async for _ in stream:
        pass


@contextlib.asynccontextmanager
async def pressed(
    clock: ManualClock, *layers: af.Layer[Any, Any], services: tuple[Paced, ...] = ()
) -> AsyncIterator[Stream[Any]]:
    """An endless run of ``layers`` on ``clock``, read as fast as it goes, the first layer's
    input full. The paced ``services`` serve freely once the block is left, so that it ends."""
    with use_clock(clock):
        stream = af.open_stream(range(10**9), *layers)
    async with stream:
        reader = asyncio.ensure_future(drain(stream))
        try:
            name = layers[0].name
            await until(lambda: (s := stats(stream, name)) is not None and s.queued >= 4, "full")
            yield stream
        finally:
            for service in services:
                await service.open()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@pytest.mark.parametrize(
    ("slots", "backend", "kept"),
    [(1, "thread", False), (None, "async", True)],
    ids=["one-call-at-a-time", "one-call-per-worker"],
)
def test_a_growth_that_does_not_raise_throughput_is_undone(
    slots: int | None, backend: str, kept: bool
) -> None:
    async def main() -> None:
        clock = ManualClock()
        service = Paced(slots)
        fn: Any = service.acall if backend == "async" else service.call
        layer = af.Layer(fn, af.Auto(max=2), backend=backend, maxsize=8, name="w")
        async with pressed(clock, layer, services=(service,)) as stream:
            pace = Pace(stream, "w", service)
            await paced_looks(clock, 1 + UP_AFTER, pace)
            assert changes(stream, "w") == [2]
            # A look sat out, then the verdict after UP_AFTER measured looks.
            await paced_looks(clock, 1 + UP_AFTER, pace)
            if kept:
                assert changes(stream, "w") == [2], stream.report.scaling
            else:
                assert changes(stream, "w") == [2, 1], stream.report.scaling
                assert "did not raise throughput" in stream.report.scaling[-1].reason
                await paced_looks(clock, 1 + UP_AFTER, pace)
                assert changes(stream, "w") == [2, 1]  # no new growth for a while

    run_async(main())


def test_a_growth_that_raised_throughput_by_less_than_its_size_is_trimmed() -> None:
    async def main() -> None:
        clock = ManualClock()
        service = Paced(2)  # past two workers, more cannot help
        layer = af.Layer(service.call, af.Auto(max=4), backend="thread", maxsize=8, name="w")
        async with pressed(clock, layer, services=(service,)) as stream:
            pace = Pace(stream, "w", service)
            await paced_looks(clock, 1 + UP_AFTER, pace)
            assert changes(stream, "w") == [4]
            # Four threads do the work of two: throughput doubled, which pays for at most three
            # (each kept worker must add half the throughput one worker had), not for four.
            await paced_looks(clock, 1 + UP_AFTER, pace)
            history = changes(stream, "w")
            assert len(history) == 2, stream.report.scaling
            # Three when the measured gain is the full twofold, two when a batch taken just
            # before a look makes it seem a shade less.
            assert history[1] in (2, 3), stream.report.scaling
            assert "did not raise throughput in proportion" in stream.report.scaling[-1].reason
            await paced_looks(clock, 1 + UP_AFTER, pace)
            assert changes(stream, "w") == history  # no new growth for a while

    run_async(main())


def test_a_growth_held_up_by_the_layer_below_is_kept() -> None:
    """Two workers would double the layer's throughput, but the layer below caps the gain at
    about a quarter: the growth met the demand (the limit is now below), so it stays."""

    async def main() -> None:
        clock = ManualClock()
        upper, lower = Paced(None), Paced(1)
        # "below" serves a quarter more than one worker of "w", half of what two of them do.
        below_rounds = ROUNDS * 5 // 4
        w = af.Layer(upper.acall, af.Auto(max=2), maxsize=8, name="w")
        below = af.Layer(lower.call, 1, backend="thread", maxsize=2, name="below")
        async with pressed(clock, w, below, services=(upper, lower)) as stream:
            below_input = stream._run.layer_runs[1].inbox
            paces = (
                # "w" cannot go on while a worker of it waits to hand "below" an output.
                Pace(
                    stream, "w", upper, stuck=lambda: below_input.statistics().waiting_senders > 0
                ),
                # "below" cannot go on with nothing to work on.
                Pace(stream, "below", lower, below_rounds, stuck=lambda: not below_input),
            )
            await paced_looks(clock, 1 + UP_AFTER, *paces)
            assert changes(stream, "w") == [2]
            # A look sat out, then the verdict: throughput rose by far less than the growth
            # promised, but only because "below" is now the bottleneck.
            await paced_looks(clock, 2 + UP_AFTER, *paces)
            assert changes(stream, "w") == [2], stream.report.scaling
            assert stream.report.layer("w").workers == 2

    run_async(main())


def test_a_growth_that_paid_grows_again_at_its_verdict_while_still_short() -> None:
    async def main() -> None:
        clock = ManualClock()
        service = Paced(None)  # one call per worker at a time: throughput grows with workers
        layer = af.Layer(service.acall, af.Auto(max=8), maxsize=8, name="w")
        async with pressed(clock, layer, services=(service,)) as stream:
            pace = Pace(stream, "w", service)
            await paced_looks(clock, 1 + UP_AFTER, pace)
            assert changes(stream, "w") == [4]
            # The verdict comes after a look sat out and UP_AFTER measured looks; the layer was
            # short all along, so it grows again at the verdict, not UP_AFTER looks later.
            await paced_looks(clock, 1 + UP_AFTER, pace)
            assert changes(stream, "w") == [4, 8], stream.report.scaling

    run_async(main())


def test_the_plot_draws_an_autoscaled_layers_worker_count(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from async_flow._plot import worker_steps

    report = af.run(range(300), af.Layer(sleepy, af.Auto(max=8), name="s"))
    times, counts = worker_steps(report, "s", report.elapsed)
    assert counts[0] == 1
    assert max(counts) > 1
    assert times == sorted(times)
    assert times[-1] == max(report.elapsed, times[-2])  # the last count holds to the end
    assert counts[-1] == report.layer("s").workers
    assert worker_steps(report, "missing", 1.0) == ([], [])
    report.plot(tmp_path / "run.png")
    assert (tmp_path / "run.png").stat().st_size > 0


# --- workers coming and going: nothing lost, nothing twice ------------------------------------


class Tagged:
    """A stateful worker that records its life in a shared list (async and thread backends)."""

    def __init__(self, book: list[Tagged]) -> None:
        self.closed = False
        book.append(self)

    def __call__(self, x: int) -> int:
        assert not self.closed, "called after close"
        return x

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


ops = st.lists(
    st.tuples(st.integers(0, 59), st.integers(-4, 4).filter(bool)), min_size=1, max_size=12
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops, start=st.integers(1, 4), ordered=st.booleans(), maxsize=st.integers(1, 8))
def test_random_scaling_loses_and_duplicates_nothing(
    local_backend: str, ops: list[tuple[int, int]], start: int, ordered: bool, maxsize: int
) -> None:
    """Random adds and retirements at random points, against the plain sequential result."""
    n = 60

    async def main() -> list[int]:
        book: list[Tagged] = []
        layer = af.Layer(
            Tagged, start, backend=local_backend, ordered=ordered, maxsize=maxsize, args=(book,)
        )
        plan = sorted(ops)
        live = total = start
        outputs: list[int] = []
        async with af.open_stream(range(n), layer, maxsize=2) as stream:
            async for x in stream:
                outputs.append(x)
                lr = stream._run.layer_runs[0]
                while plan and plan[0][0] <= len(outputs):
                    _, delta = plan.pop(0)
                    if delta > 0:
                        added = lr.add_workers(delta)
                        assert added in (0, delta)
                        live += added
                        total += added
                    else:
                        retired = lr.retire_workers(-delta)
                        assert 0 <= retired <= min(-delta, live - 1)
                        live -= retired
                    assert lr.counters.workers == live >= 1
        # Every worker ever started built its instance once, and closed it once.
        assert len(book) == total
        assert all(t.closed for t in book)
        return outputs

    outputs = run_async(main())
    expected = list(range(n))
    assert (outputs if ordered else sorted(outputs)) == expected


@pytest.fixture(params=["async", "thread"])
def local_backend(request: pytest.FixtureRequest) -> str:
    """In-process backends (the property test shares a Python list with its workers)."""
    return str(request.param)


# --- the CPU budget (process backend) ----------------------------------------------------------


def wait_for_file(path: str) -> Callable[[int], int]:
    """A per-item function that holds its worker until ``path`` exists (works across processes)."""

    def held(x: int) -> int:
        while not os.path.exists(path):
            time.sleep(0.005)
        return x

    return held


def test_fixed_cpu_layers_hold_their_share_of_the_budget() -> None:
    async def main() -> None:
        from async_flow._channel import open_channel
        from async_flow._runtime import LayerRun

        def make(layer: af.Layer[Any, Any]) -> LayerRun:
            _, receive = open_channel(4)
            return LayerRun(0, layer, receive, None)

        runs = [
            make(af.Layer(double, 3, backend="process")),
            make(af.Layer(double, af.Auto(), backend="process")),
            make(af.Layer(double, af.Auto(min=2), backend="process")),
        ]
        scaler = Autoscaler(runs, cpus=8)
        assert scaler.budgets["process"] == 5
        assert [m.high for m in scaler._managed] == [5, 5]  # a shared budget, not 5 each
        # Never below min, even on a machine with fewer cores than min asks for.
        assert [m.high for m in Autoscaler(runs, cpus=2)._managed] == [1, 2]

    run_async(main())


@pytest.mark.slow
def test_process_layers_never_grow_past_the_cores(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    cpus = available_cpus()

    async def main() -> None:
        layer = af.Layer(
            wait_for_file(str(gate)),
            af.Auto(min=1, max=cpus + 4),
            backend="process",
            maxsize=4,
            name="cpu",
        )
        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(range(30), layer)
        try:
            async with stream:

                def saturated() -> bool:
                    s = stats(stream, "cpu")
                    return s is not None and s.busy_workers >= s.workers and s.queued == 4

                for _ in range(cpus + 2):
                    await until(saturated, "every worker busy, full channel")
                    await look(clock, 1 + UP_AFTER)
                held = [e for e in stream.report.scaling if "CPU budget" in e.reason]
                assert held, stream.report.scaling
                assert stream.report.layer("cpu").workers == cpus
                assert max(n for _, n in stream.report.workers_over_time("cpu")) == cpus
                gate.touch()
                outputs = [x async for x in stream]
        finally:
            gate.touch()
        assert sorted(outputs) == list(range(30))

    run_async(main())


def pid_once_file_exists(path: str) -> Callable[[int], int]:
    """A per-item function that holds its worker until ``path`` exists, then gives its pid."""

    def held(x: int) -> int:
        while not os.path.exists(path):
            time.sleep(0.005)
        return os.getpid()

    return held


def test_an_autoscaled_process_layer_grows_onto_a_worker_started_ahead(tmp_path: Path) -> None:
    gate = tmp_path / "open"

    async def main() -> None:
        layer = af.Layer(
            pid_once_file_exists(str(gate)),
            af.Auto(min=1, max=2),
            backend="process",
            maxsize=4,
            name="cpu",
        )
        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(range(20), layer)
        try:
            async with stream:

                def saturated(workers: int) -> Callable[[], bool]:
                    def check() -> bool:
                        s = stats(stream, "cpu")
                        return s is not None and s.busy_workers == s.workers == workers

                    return check

                def processes() -> set[int]:
                    return {p.pid for p in _children()}

                await until(saturated(1), "one busy worker")
                # The worker, and a spare started ahead while the layer has room to grow.
                await until(lambda: len(processes()) == 2, "a spare process", attempts=20_000)
                started = processes()
                await until(
                    lambda: (s := stats(stream, "cpu")) is not None and s.queued == 4, "full"
                )
                await look(clock, 1 + UP_AFTER)
                assert changes(stream, "cpu") == [2]
                await until(saturated(2), "two busy workers")
                # The growth took the spare; at max, no new spare is started.
                assert processes() == started
                gate.touch()
                pids = [x async for x in stream]
        finally:
            gate.touch()
        assert len(pids) == 20
        assert set(pids) == started

    run_async(main())


def gate_after(k: int, path: str) -> Callable[[int], int]:
    """A per-item function that passes the first ``k`` items and holds the rest until ``path``
    exists (works across processes)."""

    def held(x: int) -> int:
        while x >= k and not os.path.exists(path):
            time.sleep(0.005)
        return x

    return held


def by_token(tokens: str, gate: str) -> Callable[[int], int]:
    """A per-item function that takes one token file from the ``tokens`` folder for each item
    (removing a file is atomic: two processes never take the same one), or passes every item
    once ``gate`` exists."""

    def held(x: int) -> int:
        while not os.path.exists(gate):
            for name in os.listdir(tokens):
                try:
                    os.remove(os.path.join(tokens, name))
                except FileNotFoundError:
                    continue  # another worker took it
                return x
            time.sleep(0.005)
        return x

    return held
