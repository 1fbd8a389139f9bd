"""Autoscaled Ray layers against the session's real local Ray (2 CPUs, see conftest).

The controller runs on a manual clock: each test polls the run's counters and Ray's state API
until the actors are where it wants them (never waiting a fixed time), then lets the controller
take its looks one at a time and checks each decision. Actors are counted with Ray's state API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import async_flow as af
from async_flow import _autoscale
from async_flow._autoscale import DOWN_AFTER, UP_AFTER, Autoscaler, ManualClock, use_clock
from tests._ray_workers import Gated, slow_square
from tests.conftest import run_async, wait_until
from tests.test_autoscale import _lines, changes, double, look, queue_source, stats, until

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster", "two_cpus")]

#: Polls (a millisecond apart, plus the work of each check) allowed for actors to start or stop:
#: a Ray actor takes a second or more to start on a busy 2-core machine.
SLOW = 30_000


@pytest.fixture
def two_cpus() -> None:
    """The session's Ray has its 2 CPUs (a node another test added is gone)."""
    assert wait_until(lambda: ray.cluster_resources().get("CPU") == 2, 20.0)


def live_actors() -> list[Any]:
    """The workers' actors of this session's Ray job that are not dead (pending ones count).

    The state API is given this Ray's address: left to find one, it picks the newest Ray on the
    machine, which may be another test session's.
    """
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    actors = list_actors(
        address=context.gcs_address,
        filters=[("class_name", "=", "_RayWorker"), ("job_id", "=", context.get_job_id())],
        limit=1000,
    )
    return [a for a in actors if a.state != "DEAD"]


async def until_actors(count: int, what: str) -> None:
    """Poll Ray's state API (between turns of the loop) until ``count`` actors are alive; the
    time bound only turns a broken retirement into a failure instead of a hang."""
    deadline = asyncio.get_running_loop().time() + 20.0
    while (alive := len(live_actors())) != count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what} ({alive} alive)")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def no_actor_left() -> Iterator[None]:
    """After each test, every actor the run created is dead."""
    yield
    assert wait_until(lambda: not live_actors(), 20.0), f"actors left: {live_actors()}"


def gated_layer(
    name: str, workers: af.Auto, num_cpus: float, *gate_files: Path, maxsize: int | None = None
) -> af.Layer[Any, Any]:
    """A Ray layer of :class:`Gated` actors (logging their life to the first file, waiting for
    the second to exist before each item, if given)."""
    return af.Layer(
        Gated,
        workers,
        backend="ray",
        options={"num_cpus": num_cpus},
        maxsize=maxsize,
        name=name,
        args=tuple(str(f) for f in gate_files),
    )


def saturated(stream: Any, layer: str, workers: int, maxsize: int) -> Callable[[], bool]:
    """``workers`` actors up and busy (a worker counts once, whatever it holds in flight), and
    the input channel full."""

    def check() -> bool:
        s = stats(stream, layer)
        return (
            s is not None
            and s.workers == workers
            and s.busy_workers == workers
            and s.queued == maxsize
        )

    return check


# --- the budget --------------------------------------------------------------------------------


def _runs(*layers: af.Layer[Any, Any]) -> list[Any]:
    from async_flow._channel import open_channel
    from async_flow._runtime import LayerRun

    runs = []
    for layer in layers:
        _, receive = open_channel(4)
        runs.append(LayerRun(0, layer, receive, None))
    return runs


def test_ray_layers_have_the_clusters_budget_apart_from_the_processes() -> None:
    async def main() -> None:
        runs = _runs(
            af.Layer(double, 4, backend="ray", options={"num_cpus": 1}),
            af.Layer(double, af.Auto(), backend="ray", options={"num_cpus": 2}),
            af.Layer(double, af.Auto(), backend="ray", options={"num_cpus": 0.25}),
            af.Layer(double, 1, backend="process"),
            af.Layer(double, af.Auto(), backend="process"),
        )
        scaler = Autoscaler(runs, cpus=4, ray_cpus=16)
        # Fixed layers hold their share of their own backend's budget only.
        assert scaler.budgets == {"process": 3, "ray": 12}
        # A Ray layer may grow past the driver's cores: its max is the cluster's CPUs left
        # divided by its num_cpus.
        assert [m.high for m in scaler._managed] == [6, 48, 3]
        # Read from the cluster when not given: the session's Ray has 2 CPUs, which the fixed
        # layer's 4 actors would more than take.
        assert Autoscaler(runs, cpus=4).budgets == {"process": 3, "ray": 0}
        assert Autoscaler(runs[1:], cpus=4).budgets == {"process": 3, "ray": 2}

    run_async(main())


def test_the_cluster_is_not_asked_without_an_autoscaled_ray_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse() -> float:
        raise AssertionError("the Ray cluster was asked for its CPUs")

    monkeypatch.setattr(_autoscale, "ray_cluster_cpus", refuse)

    async def main() -> None:
        runs = _runs(
            af.Layer(double, 2, backend="ray"),
            af.Layer(double, af.Auto(), backend="process"),
            af.Layer(double, af.Auto(), backend="ray", options={"num_cpus": 0}),
        )
        assert Autoscaler(runs, cpus=2).budgets["ray"] == 0

    run_async(main())


# --- growing -----------------------------------------------------------------------------------


def test_grows_under_a_full_channel_never_past_max_and_loses_nothing(tmp_path: Path) -> None:
    log, gate = tmp_path / "actors.log", tmp_path / "open"
    maxsize, n = 4, 40

    async def main() -> list[int]:
        # The cluster would allow 4 actors of half a CPU: max holds it at 3.
        layer = gated_layer("held", af.Auto(min=1, max=3), 0.5, log, gate, maxsize=maxsize)
        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(range(n), layer)
        try:
            async with stream:
                await until(saturated(stream, "held", 1, maxsize), "one actor busy", SLOW)
                await look(clock, UP_AFTER)  # a first look, then short but not long enough
                assert changes(stream, "held") == []
                await look(clock)
                assert changes(stream, "held") == [2]
                # The new slot is an actor of its own, built once.
                await until(saturated(stream, "held", 2, maxsize), "two actors busy", SLOW)
                assert _lines(log, "open") == 2
                await look(clock, 1 + UP_AFTER)  # one look sat out after the change
                assert changes(stream, "held") == [2, 3]
                await until(saturated(stream, "held", 3, maxsize), "three actors busy", SLOW)
                await look(clock, 3 * UP_AFTER)
                assert changes(stream, "held") == [2, 3]  # max holds
                assert len(live_actors()) == 3
                gate.touch()
                return [x async for x in stream]
        finally:
            gate.touch()

    outputs = run_async(main())
    assert sorted(outputs) == list(range(n))
    # Three actors, each built once and closed once.
    assert _lines(log, "open") == _lines(log, "close") == 3
    assert wait_until(lambda: not live_actors(), 20.0), live_actors()


@pytest.mark.parametrize(
    ("driver_cpus", "most"),
    [(8, None), (1, 4)],
    ids=["max-None-on-an-8-core-driver", "max-4-on-a-1-core-driver"],
)
def test_grows_to_the_clusters_cpus_and_no_further(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver_cpus: int, most: int | None
) -> None:
    """num_cpus=1 on the 2-CPU Ray: two actors at most, whatever the driver's cores (a third
    could not even be placed: Ray would hold it pending, and the run with it), and two even if
    the driver has a single core."""
    monkeypatch.setattr(_autoscale, "available_cpus", lambda: driver_cpus)
    log, gate = tmp_path / "actors.log", tmp_path / "open"
    maxsize, n = 4, 30

    async def main() -> list[int]:
        layer = gated_layer("cpu", af.Auto(max=most), 1, log, gate, maxsize=maxsize)
        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(range(n), layer)
        try:
            async with stream:
                await until(saturated(stream, "cpu", 1, maxsize), "one actor busy", SLOW)
                await look(clock, 1 + UP_AFTER)
                assert changes(stream, "cpu") == [2]
                await until(saturated(stream, "cpu", 2, maxsize), "two actors busy", SLOW)
                await look(clock, 3 * (1 + UP_AFTER))
                assert changes(stream, "cpu") == [2]
                held = [e.reason for e in stream.report.scaling if e.reason.startswith("held")]
                # With max=None the layer's max is the budget; a larger max is held by it.
                spent = (
                    "held: Ray CPU budget spent (2 of the cluster's 2 CPUs for autoscaled"
                    " layers); input 100% full, workers 100% busy, 0% blocked on output"
                )
                assert held == ([] if most is None else [spent])
                assert len(live_actors()) == 2
                gate.touch()
                return [x async for x in stream]
        finally:
            gate.touch()

    outputs = run_async(main())
    assert sorted(outputs) == list(range(n))
    assert _lines(log, "open") == _lines(log, "close") == 2


# --- shrinking ---------------------------------------------------------------------------------


def test_a_starved_layer_kills_its_retired_actors_between_items(tmp_path: Path) -> None:
    log = tmp_path / "actors.log"

    async def main() -> list[int]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        layer = gated_layer("idle", af.Auto(min=1, max=4, start=4), 0.5, log)
        clock = ManualClock()
        with use_clock(clock):
            stream = af.open_stream(queue_source(queue), layer)
        async with stream:
            for i in range(20):
                queue.put_nowait(i)
            outputs = [await anext(stream) for _ in range(20)]
            await until(lambda: _lines(log, "open") == 4, "four actors built", SLOW)
            assert len(live_actors()) == 4
            await look(clock, DOWN_AFTER)  # a first look, then starving but not long enough
            assert changes(stream, "idle") == []
            await look(clock)
            # Idle: half the actors go at once, down to what the (zero) load needs.
            assert changes(stream, "idle") == [2]
            # Closed and killed now, not at the end of the run.
            await until(lambda: _lines(log, "close") == 2, "two retired actors closed", SLOW)
            await until_actors(2, "two actors left alive")
            await look(clock, 1 + DOWN_AFTER)
            assert changes(stream, "idle") == [2, 1]
            await until_actors(1, "one actor left alive")
            await look(clock, 2 * DOWN_AFTER)
            assert changes(stream, "idle") == [2, 1]  # min holds
            for i in range(20, 50):
                queue.put_nowait(i)
            queue.put_nowait(None)
            outputs += [x async for x in stream]
        return outputs

    outputs = run_async(main())
    assert sorted(outputs) == list(range(50))
    assert _lines(log, "open") == _lines(log, "close") == 4
    # No actor of the run is left.
    assert wait_until(lambda: not live_actors(), 20.0), live_actors()


def test_real_clock_ray_layer_grows_and_every_item_arrives_once() -> None:
    """End to end on the event loop's clock, generous: it grew at some point, within 2 CPUs."""
    n = 200
    got: list[int] = []
    with af.open_stream(
        range(n),
        af.Layer(
            slow_square,
            af.Auto(),
            backend="ray",
            options={"num_cpus": 0.5},
            maxsize=16,  # the default (256) would hold the whole source: no pressure
            name="sq",
        ),
    ) as out:
        got = list(out)
    assert sorted(got) == [x * x for x in range(n)]
    steps = out.report.workers_over_time("sq")
    assert steps[0][1] == 1
    assert 1 < max(k for _, k in steps) <= 4, out.report.scaling
