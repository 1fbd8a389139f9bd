"""Limits: starts per window and items at once, shared by layers, on every backend.

The bucket is checked on a manual clock (every start is recorded at the clock's instant, so the
bound is exact); the runs on real backends check the same bounds with room for one hop to a
worker, from timestamps the workers take themselves.
"""

from __future__ import annotations

import asyncio
import pickle
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import async_flow as af
from async_flow._autoscale import UP_AFTER, ManualClock
from async_flow._limit import Meter
from async_flow._progress import format_line
from async_flow._stats import LayerCounters
from tests.conftest import run_async

# --- helpers -----------------------------------------------------------------------------------


def worst_window(starts: list[float], window: float) -> int:
    """The most starts in any closed span of ``window`` seconds."""
    starts = sorted(starts)
    worst, j = 0, 0
    for i, s in enumerate(starts):
        while j < len(starts) and starts[j] <= s + window + 1e-9:
            j += 1
        worst = max(worst, j - i)
    return worst


def worst_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans running at once, checked at every start."""
    return max(sum(1 for s, e in spans if s <= start <= e) for start, _ in spans)


async def until(predicate: Callable[[], bool], what: str, attempts: int = 20_000) -> None:
    """Explicit sequencing: yield to the loop until ``predicate`` holds."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def hold(clock: ManualClock, seconds: float) -> None:
    """Sleep ``seconds`` of the manual clock."""
    done = asyncio.get_running_loop().create_future()
    clock.call_later(seconds, lambda: done.done() or done.set_result(None))
    await done


async def drive(clock: ManualClock, limit: af.Limit, tasks: list[asyncio.Task[None]]) -> None:
    """Run ``tasks`` to the end on ``clock``: whenever every task still going waits (on a timer
    or for a unit), move the clock to the next timer exactly."""

    def settled() -> bool:
        pending = sum(not t.done() for t in tasks)
        return len(clock._timers) + len(limit._waiters) == pending

    while not all(t.done() for t in tasks):
        await until(settled, "every task waiting")
        if all(t.done() for t in tasks):
            break
        due = min(t.due for t in clock._timers)
        clock.advance(due - clock.now())
    for t in tasks:
        t.result()


# --- declaring ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 0}, "rate must be a number > 0"),
        ({"rate": -5}, "rate must be a number > 0"),
        ({"rate": float("nan")}, "rate must be a number > 0"),
        ({"rate": float("inf")}, "rate must be a number > 0"),
        ({"rate": True}, "rate must be a number > 0"),
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": 2.5}, "concurrency must be an int >= 1"),
        ({"rate": 10, "burst": 0}, "burst must be an int >= 1"),
        ({"concurrency": 2, "burst": 3}, "burst needs a rate"),
        ({}, "give a rate"),
    ],
)
def test_bad_limits_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        af.Limit(**kwargs)


def test_a_layer_takes_a_limit_or_a_rate_not_both() -> None:
    api = af.Limit(rate=20, concurrency=8)
    assert (api.rate, api.concurrency, api.burst) == (20, 8, 20)
    assert af.Limit(rate=0.5).burst == 1  # one second's worth, at least one
    layer = af.Layer(str, 4, limit=api, name="fetch")
    assert layer.limit is api
    assert "limit=Limit(rate=20, concurrency=8, burst=20)" in repr(layer)
    own = af.Layer(str, 50, rate=100).limit
    assert own is not None
    assert (own.rate, own.concurrency, own.burst) == (100, None, 100)
    with pytest.raises(ValueError, match="'fetch': give limit= or rate="):
        af.Layer(str, limit=api, rate=5, name="fetch")
    with pytest.raises(ValueError, match="'fetch': Limit: rate must be a number > 0"):
        af.Layer(str, rate=0, name="fetch")
    with pytest.raises(TypeError, match=r"'fetch': limit must be an af\.Limit"):
        af.Layer(str, limit=20, name="fetch")  # type: ignore[arg-type]


def test_a_limit_stays_in_the_parent() -> None:
    api = af.Limit(rate=5)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(api)
    shipped = pickle.loads(pickle.dumps(af.Layer(str, limit=api)))
    assert shipped.limit is None


# --- the bucket, on a manual clock ------------------------------------------------------------


@pytest.mark.parametrize(("rate", "burst"), [(10.0, 1), (10.0, 4), (7.5, 10)])
def test_starts_per_window_never_exceed_rate_times_window_plus_burst(
    rate: float, burst: int
) -> None:
    clock = ManualClock()
    limit = af.Limit(rate=rate, burst=burst, clock=clock)
    meter = Meter(limit, LayerCounters(1))
    starts: list[float] = []

    async def item() -> None:
        await meter.enter(1)
        starts.append(clock.now())
        meter.exit(1)

    async def main() -> None:
        tasks = [asyncio.ensure_future(item()) for _ in range(60)]
        await drive(clock, limit, tasks)

    run_async(main())
    assert len(starts) == 60
    for window in (0.05, 0.1, 0.5, 1.0, 2.5):
        assert worst_window(starts, window) <= burst + rate * window, window
    # And no slower than the limit: the burst at once, then one start per interval.
    assert starts.count(0.0) == burst
    assert max(starts) == pytest.approx((60 - burst) / rate)


def test_items_of_a_batch_that_start_late_never_bunch_up() -> None:
    """Workers take batches and start every item but the first at the very end of the batch,
    the worst case the parent cannot see: the starts still keep ``burst + rate * t``."""
    clock = ManualClock()
    rate, burst = 10.0, 6
    limit = af.Limit(rate=rate, burst=burst, clock=clock)
    meter = Meter(limit, LayerCounters(4))
    starts: list[float] = []
    sizes: list[int] = []
    rng = random.Random(3)
    left = [120]

    async def worker() -> None:
        while left[0] > 0:
            k = min(left[0], meter.size(5))
            left[0] -= k
            sizes.append(k)
            await meter.enter(k)
            starts.append(clock.now())  # the first item starts as the batch is handed over
            await hold(clock, rng.uniform(0.05, 1.5))
            starts.extend([clock.now()] * (k - 1))  # the others at the end
            meter.exit(k)

    async def main() -> None:
        await drive(clock, limit, [asyncio.ensure_future(worker()) for _ in range(4)])

    run_async(main())
    assert len(starts) == 120
    assert max(sizes) > 1  # batches were handed out, not single items
    for window in (0.01, 0.1, 0.5, 1.0, 3.0):
        assert worst_window(starts, window) <= burst + rate * window, window


def test_two_layers_sharing_a_limit_keep_it_together() -> None:
    """Two meters (two layers of a run) on one limit: rate and concurrency hold for the sum."""
    clock = ManualClock()
    limit = af.Limit(rate=10, concurrency=4, burst=3, clock=clock)
    meters = [Meter(limit, LayerCounters(8)), Meter(limit, LayerCounters(8))]
    starts: list[float] = []
    running = 0
    worst = 0
    rng = random.Random(7)

    async def item(meter: Meter, seconds: float) -> None:
        nonlocal running, worst
        await meter.enter(1)
        running += 1
        worst = max(worst, running)  # checked at every start
        starts.append(clock.now())
        await hold(clock, seconds)
        running -= 1
        meter.exit(1)

    async def main() -> None:
        tasks = [
            asyncio.ensure_future(item(meters[i % 2], rng.uniform(0.05, 0.9))) for i in range(80)
        ]
        await drive(clock, limit, tasks)

    run_async(main())
    assert len(starts) == 80
    assert worst <= 4
    for window in (0.1, 1.0, 3.0):
        assert worst_window(starts, window) <= 3 + 10 * window, window
    waited = [m.counters.rate_wait_seconds + m.counters.concurrency_wait_seconds for m in meters]
    assert all(w > 0 for w in waited)  # both layers' waits are counted, each its own


def test_a_cancelled_wait_gives_back_its_unit_and_its_token() -> None:
    clock = ManualClock()
    limit = af.Limit(rate=1, burst=1, concurrency=1, clock=clock)
    meter = Meter(limit, LayerCounters(1))

    async def main() -> None:
        await meter.enter(1)  # holds the unit and the only token
        unit = asyncio.ensure_future(meter.enter(1))
        await until(lambda: len(limit._waiters) == 1, "a wait for the unit")
        unit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unit
        # Handed the unit, then cancelled before it could run: it passes the unit on.
        handed = asyncio.ensure_future(meter.enter(1))
        await until(lambda: len(limit._waiters) == 1, "a wait for the unit")
        meter.exit(1)
        handed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handed
        # The unit is free again; its token is not (one per second): the next start sleeps.
        token = asyncio.ensure_future(meter.enter(1))
        await until(lambda: len(clock._timers) == 1, "a wait for the token")
        token.cancel()
        with pytest.raises(asyncio.CancelledError):
            await token
        assert limit._running == 0
        assert not limit._waiters
        clock.advance(1.0)
        # The cancelled start gave its token back: one start is due now, not a second later.
        assert limit._try_start(1)

    run_async(main())


def test_runs_on_two_event_loops_share_one_concurrency_limit() -> None:
    limit = af.Limit(concurrency=2)
    lock = threading.Lock()
    running = 0
    worst = 0

    async def call(x: int) -> int:
        nonlocal running, worst
        with lock:
            running += 1
            worst = max(worst, running)
        await asyncio.sleep(0.002)
        with lock:
            running -= 1
        return x

    def one_run() -> None:
        af.run(range(60), af.Layer(call, 4, limit=limit))

    threads = [threading.Thread(target=one_run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert worst <= 2
    assert limit._running == 0


# --- retries ------------------------------------------------------------------------------------


def test_retry_uses_full_jitter_and_honours_retry_after() -> None:
    policy = af.Retry(5, backoff=0.1, factor=2, max_backoff=1.0)
    rng = random.Random(1234)
    for attempt, bound in ((1, 0.1), (2, 0.2), (4, 0.8), (5, 1.0)):
        delays = [policy.decide(OSError(), attempt, rng.random()).delay for _ in range(2000)]
        assert all(0 < d <= bound for d in delays)
        # Full jitter: the delays spread over the whole span, not its upper half.
        assert min(delays) < 0.05 * bound
        assert max(delays) > 0.95 * bound
    late = OSError("slow down")
    late.retry_after = 7  # type: ignore[attr-defined]
    assert policy.decide(late, 1, 0.5).delay == 7.0  # as the service said: no jitter, no cap
    for bad in (-1, "3", True, float("nan"), None):
        error = OSError()
        error.retry_after = bad  # type: ignore[attr-defined]
        assert policy.decide(error, 1, 0.0).delay == pytest.approx(0.1)


class Throttled(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry after {seconds}s")
        self.retry_after = seconds


def test_a_run_waits_retry_after_before_the_retry() -> None:
    attempts: list[float] = []

    def once_throttled(x: int) -> int:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise Throttled(0.3)
        return x

    report = af.run([1], af.Layer(once_throttled, on_error=af.Retry(2, backoff=0)))
    assert report.layers[0].retried == 1
    assert attempts[1] - attempts[0] >= 0.3


@pytest.mark.parametrize("backend", ["async", "thread"])
def test_retries_count_against_the_limit(backend: str) -> None:
    lock = threading.Lock()
    seen: dict[int, int] = {}
    starts: list[float] = []

    def flaky(x: int) -> int:
        with lock:
            starts.append(time.monotonic())
            seen[x] = seen.get(x, 0) + 1
            first = seen[x] == 1
        if first:
            raise OSError("first attempt fails")
        return x

    async def aflaky(x: int) -> int:
        return flaky(x)

    fn: Any = aflaky if backend == "async" else flaky
    limit = af.Limit(rate=40, burst=2)
    report = af.run(
        range(20),
        af.Layer(fn, 4, backend=backend, limit=limit, on_error=af.Retry(1, backoff=0)),
    )
    assert report.layers[0].retried == 20
    assert len(starts) == 40
    # 40 starts at 40/s with a burst of 2; room for the loop's and a thread hop's lag.
    assert worst_window(starts, 0.5) <= 2 + 40 * (0.5 + 0.05)
    assert max(starts) - min(starts) >= (40 - 2) / 40 * 0.9


def test_time_waited_on_the_limit_is_not_the_items_time(backend: str) -> None:
    limit = af.Limit(rate=5, burst=1)
    report = af.run(range(4), af.Layer(str, 4, backend=backend, limit=limit, timeout=0.2))
    # The last item waits 0.6 s for its start, three times the timeout, and is not late.
    stats = report.layers[0]
    assert (stats.emitted, stats.timeouts) == (4, 0)
    assert stats.rate_wait_seconds >= 0.6


# --- every backend, real clock ------------------------------------------------------------------

#: Room for the hop from the parent's metering to the worker's start (a fresh process or actor
#: makes its first call late; on a loaded machine a stalled loop or thread starts several
#: metered items together), in seconds. Unmetered, all 48 starts fall in one window, far above
#: any of these bounds.
HOP = {"async": 0.25, "thread": 0.25, "process": 0.25, "ray": 0.5}
RATE, BURST, CONCURRENCY, ITEMS = 20.0, 4, 3, 24


def stamp(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A call to a service: records when it ran, in the worker (monotonic: one clock per host)."""
    start = time.monotonic()
    time.sleep(0.04)
    return [*spans, (start, time.monotonic())]


async def astamp(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    start = time.monotonic()
    await asyncio.sleep(0.04)
    return [*spans, (start, time.monotonic())]


def check_shared_limit_on(backend: str) -> None:
    """Two layers share one limit; every start of both, taken in the workers, keeps it."""
    api = af.Limit(rate=RATE, concurrency=CONCURRENCY, burst=BURST)
    fn: Any = astamp if backend == "async" else stamp
    out: list[list[tuple[float, float]]] = []
    report = af.run(
        ([] for _ in range(ITEMS)),
        af.Layer(fn, 4, backend=backend, limit=api, name="first"),
        af.Layer(fn, 4, backend=backend, limit=api, name="second"),
        af.Layer(out.append),
    )
    spans = [span for item in out for span in item]
    assert len(spans) == 2 * ITEMS
    starts = [s for s, _ in spans]
    assert worst_overlap(spans) <= CONCURRENCY
    for window in (0.25, 1.0):
        assert worst_window(starts, window) <= BURST + RATE * (window + HOP[backend]), window
    assert max(starts) - min(starts) >= (2 * ITEMS - BURST) / RATE * 0.9
    # How long the layers waited on the limit depends on how fast workers start (slow actors on
    # a loaded machine leave the bucket full): the limit's wait is checked on a manual clock.
    first, second = report.layers[:2]
    assert first.limited
    assert second.limited


def test_a_shared_limit_holds_on_every_local_backend(backend: str) -> None:
    check_shared_limit_on(backend)


@pytest.mark.ray
@pytest.mark.usefixtures("ray_cluster")
def test_a_shared_limit_holds_on_ray() -> None:
    pytest.importorskip("ray")
    check_shared_limit_on("ray")


# --- what the user sees ------------------------------------------------------------------------


async def quick(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


async def slow(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


def test_the_diagnosis_names_a_rate_limit_and_progress_shows_the_wait() -> None:
    seen: list[af.ProgressSnapshot] = []
    report = af.run(
        range(30),
        af.Layer(quick, 4, limit=af.Limit(rate=50, burst=1), name="fetch_user"),
        af.Layer(str, name="save"),
        progress=af.CallbackProgress(seen.append, 0.1),
    )
    fetch = report.layer("fetch_user")
    assert fetch.limited
    assert fetch.rate_wait_seconds > fetch.concurrency_wait_seconds
    advice = report.bottleneck.advice if report.bottleneck else ""
    assert advice.startswith("'fetch_user' waited on its rate limit "), advice
    assert report.bottleneck is not None
    assert report.bottleneck.stage == "fetch_user"
    text = str(report)
    assert "limited" in text.splitlines()[1]
    assert text.splitlines()[3].rstrip().endswith("-")  # 'save' has no limit
    last = seen[-1].layers
    assert last[0].limit_seconds is not None
    assert last[0].limit_seconds > 0
    assert last[1].limit_seconds is None
    line = format_line(seen[-1])
    assert "fetch_user 30/30" in line, line
    assert " limit " in line, line


def test_the_diagnosis_names_a_concurrency_limit() -> None:
    report = af.run(range(40), af.Layer(slow, 4, limit=af.Limit(concurrency=1), name="db"))
    advice = report.bottleneck.advice if report.bottleneck else ""
    assert advice.startswith("'db' waited on its concurrency limit "), advice


@pytest.mark.slow
def test_the_autoscaler_adds_no_workers_to_a_layer_its_limit_holds_back() -> None:
    from tests.test_autoscale import changes, look, pressed, stats, until

    async def main() -> None:
        clock = ManualClock()
        layer = af.Layer(
            slow, af.Auto(max=8), maxsize=8, name="w", limit=af.Limit(rate=50, burst=1)
        )
        async with pressed(clock, layer) as stream:
            # Each look after a few items went through the limit (the time it held them back
            # is what the look sees).
            for _ in range(2 + 2 * UP_AFTER):
                start = stats(stream, "w").received  # type: ignore[union-attr]

                def through(start: int = start) -> bool:
                    now = stats(stream, "w")
                    return now is not None and now.received >= start + 5

                await until(through, "5 more items through 'w'", attempts=20_000)
                await look(clock)
            assert changes(stream, "w") == [], stream.report.scaling
            held = [e.reason for e in stream.report.scaling if e.reason.startswith("held")]
            assert held, stream.report.scaling
            assert "waiting on its limit" in held[0]

    run_async(main())
