"""Per-item timeouts on the Ray backend, and layers whose actors no node can host.

A late item has its actor killed (the slot gets a fresh one) and fails with ItemTimeout under the
layer's error policy; the items around it are processed exactly once. Runs against the session's
local Ray (see conftest); after each test no actor of the run is alive.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import async_flow as af

# The shared test, collected again here with backend="ray" (see the fixture below).
from tests.test_timeout import test_items_within_their_timeout_are_untouched  # noqa: F401

ray = pytest.importorskip("ray")

from tests.test_ray import DriverRefuses, unwrap  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]

STUCK = 3


@pytest.fixture
def backend() -> str:
    """Overrides the shared fixture: the imported shared test runs on Ray."""
    return "ray"


# --- what the actors run -------------------------------------------------------------------


def spin_on_stuck(x: int) -> int:
    """A CPU loop that never returns and checks nothing of the library's."""
    if x == STUCK:
        while True:
            pass
    return x


def sleep_on_stuck(x: int) -> int:
    if x == STUCK:
        time.sleep(60)
    return x


STUCK_KINDS = [pytest.param(spin_on_stuck, id="cpu-loop"), pytest.param(sleep_on_stuck, id="sleep")]


def collect(source: Any, *layers: af.Layer[Any, Any]) -> tuple[list[Any], af.Report]:
    with af.open_stream(source, *layers) as outputs:
        got = list(outputs)
    return got, outputs.report


# --- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("stuck", STUCK_KINDS)
def test_a_stuck_item_fails_the_run_naming_it(stuck: Callable[[int], int]) -> None:
    started = time.monotonic()
    with pytest.raises(af.ItemTimeout, match=r"layer 'stuck'.*timeout of 1s") as info:
        af.run(range(8), af.Layer(stuck, 1, backend="ray", name="stuck", timeout=1))
    # Generous: actor start-up is seconds on a small machine; the stuck item alone would be 60 s.
    assert time.monotonic() - started < 30
    notes = "\n".join(info.value.__notes__)
    assert "layer 'stuck'" in notes
    assert "on item 3" in notes


@pytest.mark.parametrize("stuck", STUCK_KINDS)
def test_a_stuck_item_is_skipped_and_its_actor_replaced(stuck: Callable[[int], int]) -> None:
    """One actor, so the items after the stuck one need its replacement; batches hold several
    items, so the outputs before the late item in its batch must be kept, and the items after it
    run on the fresh actor."""
    got, report = collect(
        range(40), af.Layer(stuck, 1, backend="ray", name="cpu", timeout=1, on_error=af.Skip())
    )
    counts = Counter(got)
    assert sorted(counts) == [x for x in range(40) if x != STUCK]
    assert set(counts.values()) == {1}, "an item arrived more than once"
    stats = report.layer("cpu")
    assert (stats.timeouts, stats.skipped, stats.failed) == (1, 1, 0)
    assert stats.restarts >= 1


def stuck_first_time(x: int, marks: str) -> int:
    """Item STUCK hangs on its first try only (the mark survives the actor that is killed)."""
    mark = Path(marks) / str(x)
    if x == STUCK and not mark.exists():
        mark.touch()
        time.sleep(60)
    return x


def test_a_late_item_retried_runs_on_the_fresh_actor(tmp_path: Path) -> None:
    fn = functools.partial(stuck_first_time, marks=str(tmp_path))
    got, report = collect(
        range(10),
        af.Layer(
            fn,
            2,
            backend="ray",
            timeout=1,
            ordered=True,
            on_error=af.Retry(2, backoff=0, on=af.ItemTimeout),
        ),
    )
    assert got == list(range(10))
    stats = report.layers[0]
    assert (stats.timeouts, stats.retried, stats.failed) == (1, 1, 0)
    assert stats.restarts >= 1


async def never_on_stuck(x: int) -> int:
    if x == STUCK:
        await asyncio.Event().wait()
    return x


def test_an_async_item_is_cancelled_in_its_actor_which_lives_on() -> None:
    got, report = collect(
        range(10),
        af.Layer(never_on_stuck, 1, backend="ray", timeout=0.5, on_error=af.DeadLetter()),
    )
    assert sorted(got) == [x for x in range(10) if x != STUCK]
    stats = report.layers[0]
    assert (stats.timeouts, stats.dead_letters, stats.restarts) == (1, 1, 0)
    assert report.failures[0].error_type == "ItemTimeout"


class SlowToBuild:
    """Each actor takes longer to build than the timeout allows an item."""

    def __init__(self) -> None:
        time.sleep(2)

    def __call__(self, x: int) -> int:
        return x


def test_building_the_actor_does_not_count_against_the_first_item() -> None:
    got, report = collect(range(10), af.Layer(SlowToBuild, 1, backend="ray", timeout=1))
    assert sorted(got) == list(range(10))
    assert report.layers[0].timeouts == 0


def wrap_or_hang(x: int, driver_pid: int) -> DriverRefuses:
    if x == STUCK:
        time.sleep(60)
    return DriverRefuses(x, driver_pid)


def test_consecutive_ray_layers_with_timeouts_still_pass_references() -> None:
    """The middle values cannot be unpickled in this process: they must go actor to actor, also
    when each item is reported on its own and one of them times out."""
    wrap_here = functools.partial(wrap_or_hang, driver_pid=os.getpid())
    got, report = collect(
        range(30),
        af.Layer(wrap_here, 2, backend="ray", timeout=1, name="wrap", on_error=af.Skip()),
        af.Layer(unwrap, 2, backend="ray", timeout=30, name="unwrap"),
    )
    assert sorted(got) == [2 * x for x in range(30) if x != STUCK]
    assert report.layer("wrap").timeouts == 1
    assert report.layer("unwrap").timeouts == 0


def test_leaving_the_stream_with_an_item_stuck_stops_at_once() -> None:
    """The consumer leaves while an actor is stuck on an item, long before its timeout: the run
    ends without waiting for the item, and the fixture checks that no actor is left."""
    started = time.monotonic()
    with af.open_stream(
        range(100), af.Layer(sleep_on_stuck, 2, backend="ray", timeout=50), maxsize=4
    ) as out:
        for value in out:
            if value > STUCK:
                break
    assert time.monotonic() - started < 30


# --- resources no node has -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_gpus": 1}, "num_gpus=1"),
        ({"num_cpus": 64}, "num_cpus=64"),
        ({"num_cpus": 1, "resources": {"tpu": 2}}, "resources={'tpu': 2}"),
    ],
)
def test_resources_no_node_has_fail_at_start(options: dict[str, Any], named: str) -> None:
    read = []

    def source() -> Iterator[int]:
        read.append(1)
        yield 1

    started = time.monotonic()
    with pytest.raises(ValueError, match=r"layer 'big': no node of the Ray cluster") as info:
        af.run(source(), af.Layer(abs, 2, backend="ray", name="big", options=options))
    assert time.monotonic() - started < 30
    assert named in str(info.value)
    assert read == []


@pytest.mark.slow
def test_resources_that_no_single_node_has_fail_at_start(ray_cluster: Any) -> None:
    """The cluster as a whole has 3 CPUs and a GPU, but no node has 2 CPUs and a GPU."""
    node = ray_cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        ray_cluster.wait_for_nodes()
        with pytest.raises(ValueError, match=r"layer 'both'.*no single node has all of"):
            af.run(
                [1],
                af.Layer(abs, backend="ray", name="both", options={"num_cpus": 2, "num_gpus": 1}),
            )
        # Either alone fits somewhere: the layer runs.
        report = af.run([1, -2], af.Layer(abs, backend="ray", options={"num_gpus": 1}))
        assert report.layers[0].emitted == 2
    finally:
        ray_cluster.remove_node(node)
