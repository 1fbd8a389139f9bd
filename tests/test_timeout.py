"""Per-item timeouts: async work is cancelled, a stuck thread is abandoned and replaced."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import async_flow as af
from tests.conftest import LOCAL_BACKENDS, wait_until

STUCK = 3


class Spin:
    """Makes the call on item ``STUCK`` spin in a CPU loop that checks nothing of the library's."""

    def __init__(self) -> None:
        self.release = False
        self.entered = threading.Event()

    def __call__(self, x: int) -> int:
        if x == STUCK:
            self.entered.set()
            n = 0
            while not self.release:
                n += 1
        return x


@pytest.fixture
def spin() -> Iterator[Spin]:
    s = Spin()
    yield s
    s.release = True  # whatever happened, let an abandoned thread finish
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.endswith(":abandoned")])


def _abandoned() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(":abandoned") and t.is_alive()]


async def never_on_stuck(x: int) -> int:
    if x == STUCK:
        await asyncio.Event().wait()
    return x


def collect(source: Any, *layers: af.Layer[Any, Any]) -> tuple[list[Any], af.Report]:
    with af.open_stream(source, *layers) as outputs:
        got = list(outputs)
    return got, outputs.report


def test_async_item_is_cancelled_and_dead_lettered() -> None:
    got, report = collect(
        range(10),
        af.Layer(
            never_on_stuck, 2, name="fetch", timeout=0.2, ordered=True, on_error=af.DeadLetter()
        ),
    )
    assert got == [x for x in range(10) if x != STUCK]
    stats = report.layer("fetch")
    assert (stats.timeouts, stats.failed, stats.restarts) == (1, 1, 0)
    (failure,) = report.failures
    assert (failure.item, failure.error_type) == ("3", "ItemTimeout")
    assert "timeout of 0.2s" in failure.message


def test_a_stuck_thread_is_abandoned_and_replaced(spin: Spin) -> None:
    built: list[Worker] = []
    closed: list[Worker] = []

    class Worker:
        """One instance per thread: the replacement thread builds its own."""

        def __init__(self) -> None:
            built.append(self)

        def __call__(self, x: int) -> int:
            return spin(x)

        def close(self) -> None:
            closed.append(self)

    got, report = collect(
        range(10),
        af.Layer(Worker, name="cpu", backend="thread", timeout=0.3, on_error=af.DeadLetter()),
    )
    assert spin.entered.is_set()
    assert sorted(got) == [x for x in range(10) if x != STUCK]
    stats = report.layer("cpu")
    assert (stats.timeouts, stats.restarts, stats.dead_letters) == (1, 1, 1)
    assert report.failures[0].item == "3"
    assert len(built) == 2
    # The run is over; the abandoned thread is still spinning on the item, holding its instance.
    assert closed == [built[1]]
    assert len(_abandoned()) == 1
    spin.release = True
    assert wait_until(lambda: not _abandoned())
    assert closed == [built[1], built[0]]


def test_a_late_result_from_an_abandoned_thread_is_discarded() -> None:
    gate = threading.Event()

    def late_on_stuck(x: int) -> Any:
        if x == STUCK:
            gate.wait()
            return "late"
        if x == 7:
            gate.set()  # runs on the fresh thread, after item 3 was given up
        return x

    got, report = collect(
        range(12), af.Layer(late_on_stuck, backend="thread", timeout=0.3, on_error=af.Skip())
    )
    assert got == [x for x in range(12) if x != STUCK]
    assert report.layers[0].skipped == 1
    assert wait_until(lambda: not _abandoned())


def test_timeouts_follow_the_policy_and_can_be_retried() -> None:
    calls: dict[int, int] = {}

    async def slow_once(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if calls[x] == 1 and x % 4 == 0:
            await asyncio.sleep(3600)
        return x

    got, report = collect(
        range(12),
        af.Layer(
            slow_once,
            3,
            timeout=0.1,
            ordered=True,
            on_error=af.Retry(1, backoff=0, on=af.ItemTimeout),
        ),
    )
    assert got == list(range(12))
    stats = report.layers[0]
    assert (stats.timeouts, stats.retried, stats.failed) == (3, 3, 0)


def test_a_thread_timed_out_then_retried_runs_on_the_fresh_thread(spin: Spin) -> None:
    threads: dict[int, str] = {}

    def record(x: int) -> int:
        threads[x] = threading.current_thread().name
        if x == STUCK and not spin.entered.is_set():
            return spin(x)
        return x

    got, report = collect(
        range(6),
        af.Layer(record, backend="thread", timeout=0.3, on_error=af.Retry(2, backoff=0)),
    )
    assert sorted(got) == list(range(6))
    stats = report.layers[0]
    assert (stats.timeouts, stats.retried, stats.restarts) == (1, 1, 1)
    assert not threads[STUCK].endswith(":abandoned")


def test_timeout_under_the_default_policy_fails_the_run(spin: Spin) -> None:
    with pytest.raises(af.ItemTimeout) as info:
        af.run(range(10), af.Layer(spin, name="cpu", backend="thread", timeout=0.2))
    assert isinstance(info.value, TimeoutError)
    notes = "\n".join(info.value.__notes__)
    assert "layer 'cpu'" in notes
    assert "on item 3" in notes


def test_a_coroutine_on_the_thread_backend_is_cancelled_not_abandoned() -> None:
    got, report = collect(
        range(6),
        af.Layer(never_on_stuck, backend="thread", timeout=0.2, on_error=af.Skip()),
    )
    assert sorted(got) == [0, 1, 2, 4, 5]
    stats = report.layers[0]
    assert (stats.timeouts, stats.skipped, stats.restarts) == (1, 1, 0)


def test_a_users_own_timeout_error_is_not_an_item_timeout() -> None:
    async def own(x: int) -> int:
        raise TimeoutError("the remote end timed out")

    _, report = collect([1], af.Layer(own, timeout=30, on_error=af.DeadLetter()))
    assert report.failures[0].error_type == "TimeoutError"
    assert report.layers[0].timeouts == 0


def twice(x: int) -> Iterator[int]:
    yield x
    yield x


def test_items_within_their_timeout_are_untouched(backend: str) -> None:
    got, report = collect(range(50), af.Layer(twice, 3, backend=backend, timeout=30))
    assert sorted(got) == sorted(list(range(50)) * 2)
    assert report.layers[0].timeouts == 0


def spin_forever_on_stuck(x: int) -> int:
    if x == STUCK:
        while True:
            pass
    return x


@pytest.mark.skipif("process" not in LOCAL_BACKENDS, reason="no process backend")
def test_a_stuck_worker_process_is_killed_and_replaced() -> None:
    got, report = collect(
        range(8),
        af.Layer(
            spin_forever_on_stuck,
            1,  # one worker, so the items after the stuck one need its replacement
            backend="process",
            timeout=1.0,
            on_error=af.DeadLetter(),
        ),
    )
    assert sorted(got) == [x for x in range(8) if x != STUCK]
    stats = report.layers[0]
    assert (stats.timeouts, stats.dead_letters) == (1, 1)
    assert stats.restarts == 1
    assert report.failures[0].item == "3"
    assert report.failures[0].error_type == "ItemTimeout"


def fail_on_stuck(x: int) -> int:
    if x == STUCK:
        raise ValueError("stuck")
    return x


@pytest.mark.skipif("process" not in LOCAL_BACKENDS, reason="no process backend")
def test_a_process_layer_with_an_unpicklable_dead_letter_sink() -> None:
    lock = threading.Lock()  # cannot be pickled: the policy must stay in this process
    letters: list[Any] = []

    def sink(item: Any, failure: af.Failure) -> None:
        with lock:
            letters.append(item)

    report = af.run(
        range(8), af.Layer(fail_on_stuck, backend="process", on_error=af.DeadLetter(sink))
    )
    assert letters == [STUCK]
    assert report.layers[0].emitted == 7


def test_a_plain_function_on_the_event_loop_is_not_timed() -> None:
    """On the async backend a plain function runs on the loop, where nothing can interrupt it:
    it is not timed, so an item that takes longer than the timeout still completes. (A
    coroutine of the same layer would be cancelled; see the test above.)"""
    timeout = 0.01

    def slow(x: int) -> int:
        time.sleep(3 * timeout)  # sleeps at least that long: always past the timeout
        return x

    report = af.run(range(5), af.Layer(slow, backend="async", timeout=timeout, name="slow"))
    stats = report.layer("slow")
    assert (stats.emitted, stats.timeouts, stats.failed, stats.restarts) == (5, 0, 0, 0)
