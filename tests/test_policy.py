"""Error policies: each policy alone (no clock, no sleeping), then in real runs on every backend."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import async_flow as af
from async_flow._policy import Action
from tests.conftest import LOCAL_BACKENDS

# --- each policy alone -----------------------------------------------------------------------


def test_raise_is_the_default_and_always_raises() -> None:
    assert isinstance(af.Layer(str).on_error, af.Raise)
    assert af.Raise().decide(ValueError(), 5, 0.3).action is Action.RAISE


def test_skip_and_dead_letter_decide_without_delay() -> None:
    assert af.Skip().decide(ValueError(), 1, 0.9)[:2] == (Action.SKIP, 0.0)
    assert af.DeadLetter().decide(KeyError(), 1, 0.9)[:2] == (Action.DEAD_LETTER, 0.0)


def test_retry_backoff_is_exponential_capped_and_jittered() -> None:
    policy = af.Retry(10, backoff=0.5, factor=3, max_backoff=10, jitter=0.5)
    no_jitter = [policy.decide(OSError(), n, 0.0).delay for n in range(1, 6)]
    assert no_jitter == [0.5, 1.5, 4.5, 10.0, 10.0]
    # rand scales the delay down by at most `jitter`.
    assert policy.decide(OSError(), 2, 0.5).delay == pytest.approx(1.5 * 0.75)
    assert policy.decide(OSError(), 2, 0.999).delay == pytest.approx(1.5 * (1 - 0.4995))
    full = af.Retry(3, backoff=1, jitter=1)
    assert full.delay(1, 0.999) == pytest.approx(0.001)
    rng = random.Random(7)
    delays = [full.delay(2, rng.random()) for _ in range(200)]
    assert all(0 <= d <= 2 for d in delays)
    assert max(delays) - min(delays) > 1  # the jitter spreads retries out


def test_retry_counts_attempts_then_falls_through() -> None:
    policy = af.Retry(2, backoff=0, on=OSError, then=af.Skip())
    actions = [policy.decide(OSError(), n, 0.0).action for n in (1, 2, 3)]
    assert actions == [Action.RETRY, Action.RETRY, Action.SKIP]
    # Errors that are not `on` go to `then` at once; the default `then` raises.
    assert policy.decide(KeyError(), 1, 0.0).action is Action.SKIP
    assert af.Retry(2, on=(OSError,)).decide(KeyError(), 1, 0.0).action is Action.RAISE
    assert af.Retry(0).decide(OSError(), 1, 0.0).action is Action.RAISE
    # The terminal decision names the policy that holds the threshold.
    skip = af.Skip(max_failures=3)
    assert af.Retry(1, then=skip).decide(OSError(), 2, 0.0).policy is skip


def test_thresholds() -> None:
    by_count = af.Skip(max_failures=2)
    assert by_count.exceeded(2, 2) is None
    assert "3 items failed" in (by_count.exceeded(3, 1000) or "")
    by_share = af.DeadLetter(max_fraction=0.1, min_items=20)
    assert by_share.exceeded(5, 10) is None  # too few items to judge a share
    assert by_share.exceeded(2, 20) is None
    assert "3 of 20" in (by_share.exceeded(3, 20) or "")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: af.Retry(-1), "retries"),
        (lambda: af.Retry(2, backoff=-1), "backoff"),
        (lambda: af.Retry(2, factor=0.5), "factor"),
        (lambda: af.Retry(2, jitter=2), "jitter"),
        (lambda: af.Retry(2, on=int), "exception types"),
        (lambda: af.Retry(2, then=print), "then must be a policy"),
        (lambda: af.Skip(max_failures=-1), "max_failures"),
        (lambda: af.Skip(max_fraction=1.5), "max_fraction"),
        (lambda: af.DeadLetter(sink=3), "sink must be callable"),
        (lambda: af.Layer(str, on_error=af.Skip), "on_error must be a policy"),
        (lambda: af.Layer(str, timeout=0), "timeout must be a number > 0"),
    ],
)
def test_bad_policies_fail_at_construction(make: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        make()


# --- in real runs ----------------------------------------------------------------------------
# The functions keep their state in files, so that they behave the same in a worker process.


def fails_at(bad: frozenset[Any], x: Any) -> Any:
    if x in bad:
        raise ValueError(f"injected failure on {x!r}")
    return x


def fails_at_repr(bad: frozenset[str], x: Any) -> Any:
    if repr(x) in bad:
        raise ValueError(f"injected failure on {x!r}")
    return x


def fan_out_fails_at(bad: frozenset[int], x: int) -> Iterator[int]:
    yield x
    if x in bad:
        raise ValueError(f"injected failure on {x!r}")
    yield -x


def flaky(directory: str, fail_times: int, x: Any) -> Any:
    """Fails the first ``fail_times`` calls for each item, then returns it (attempts in a file)."""
    path = os.path.join(directory, f"{x!r}".replace("/", "_"))
    with open(path, "ab") as f:
        f.write(b".")
    if os.path.getsize(path) <= fail_times:
        raise OSError(f"transient failure {os.path.getsize(path)} on {x!r}")
    return x


def attempts(directory: Path, x: Any) -> int:
    return (directory / f"{x!r}".replace("/", "_")).stat().st_size


def collect(source: Any, *layers: af.Layer[Any, Any]) -> tuple[list[Any], af.Report]:
    with af.open_stream(source, *layers) as outputs:
        got = list(outputs)
    return got, outputs.report


def _injected(n: int, share: float, seed: int) -> frozenset[int]:
    rng = random.Random(seed)
    return frozenset(i for i in range(n) if rng.random() < share)


@pytest.mark.parametrize("seed", [1])
def test_skip_accounts_for_every_item(backend: str, seed: int) -> None:
    bad = _injected(300, 0.1, seed)
    # Items that pass the first layer and fail in the second, after yielding their first output.
    late = _injected(300, 0.1, seed + 100) - bad
    assert late
    got, report = collect(
        range(300),
        af.Layer(functools.partial(fails_at, bad), 3, backend=backend, on_error=af.Skip()),
        af.Layer(functools.partial(fan_out_fails_at, late), 2, on_error=af.Skip()),
    )
    first, second = report.layers
    assert first.received == 300
    assert first.skipped == len(bad)
    assert first.received == first.emitted + first.failed + first.skipped
    assert first.failed == 0
    # The generator layer yields two outputs per item that completes: fan-out 2. An item that
    # fails half-way is skipped whole: the output it yielded before failing is not kept.
    assert second.received == 300 - len(bad)
    assert (second.skipped, second.failed) == (len(late), 0)
    assert second.emitted == 2 * (second.received - second.skipped)
    kept = [x for x in range(300) if x not in bad | late]
    assert sorted(got) == sorted(y for x in kept for y in (x, -x))
    assert report.status == "completed"


@pytest.mark.parametrize("seed", [3])
def test_dead_letters_match_the_injected_failures_one_for_one(backend: str, seed: int) -> None:
    bad = _injected(300, 0.1, seed)
    letters: list[tuple[Any, af.Failure]] = []
    got, report = collect(
        range(300),
        af.Layer(
            functools.partial(fails_at, bad),
            3,
            backend=backend,
            name="check",
            on_error=af.DeadLetter(sink=lambda item, failure: letters.append((item, failure))),
        ),
    )
    stats = report.layer("check")
    assert stats.received == stats.emitted + stats.failed + stats.skipped
    assert stats.failed == stats.dead_letters == len(bad)
    assert sorted(got) == [x for x in range(300) if x not in bad]
    assert sorted(item for item, _ in letters) == sorted(bad)
    assert sorted(int(f.item) for f in report.failures) == sorted(bad)
    assert [f for _, f in letters] == list(report.failures)
    for f in report.failures:
        assert f.layer == "check"
        assert f.error_type == "ValueError"
        assert f.message == f"injected failure on {int(f.item)!r}"
        assert "fails_at" in f.traceback
    assert report.to_dict()["failures"][0]["layer"] == "check"


def test_retry_recovers_transient_failures_in_order(backend: str, tmp_path: Path) -> None:
    got, report = collect(
        range(60),
        af.Layer(
            functools.partial(flaky, str(tmp_path), 2),
            3,
            backend=backend,
            ordered=True,
            on_error=af.Retry(2, backoff=0.001, on=OSError),
        ),
    )
    assert got == list(range(60))
    stats = report.layers[0]
    assert stats.retried == 120
    assert (stats.emitted, stats.failed, stats.skipped) == (60, 0, 0)
    assert all(attempts(tmp_path, x) == 3 for x in range(60))


def test_retry_then_dead_letter_after_the_last_attempt(backend: str, tmp_path: Path) -> None:
    policy = af.Retry(1, backoff=0, on=OSError, then=af.DeadLetter())
    got, report = collect(
        range(20),
        af.Layer(functools.partial(flaky, str(tmp_path), 5), 2, backend=backend, on_error=policy),
    )
    assert got == []
    stats = report.layers[0]
    assert (stats.retried, stats.dead_letters, stats.failed) == (20, 20, 20)
    assert all(attempts(tmp_path, x) == 2 for x in range(20))
    assert {f.error_type for f in report.failures} == {"OSError"}


def test_retries_exhausted_reraise_the_error_with_notes(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="transient failure 3") as info:
        af.run(
            [5],
            af.Layer(
                functools.partial(flaky, str(tmp_path), 10),
                name="fetch",
                on_error=af.Retry(2, backoff=0, on=OSError),
            ),
        )
    notes = "\n".join(info.value.__notes__)
    assert "layer 'fetch'" in notes
    assert "on item 5" in notes
    assert "failed 3 times" in notes


def test_falsy_items_survive_every_policy(backend: str, tmp_path: Path) -> None:
    falsy = [None, 0, "", [], (), False]
    got, _ = collect(
        falsy,
        af.Layer(
            functools.partial(flaky, str(tmp_path), 1),
            backend=backend,
            ordered=True,
            on_error=af.Retry(1, backoff=0),
        ),
    )
    assert got == falsy
    letters: list[Any] = []
    bad = frozenset(["None", "0", "''"])
    got, report = collect(
        falsy,
        af.Layer(
            functools.partial(fails_at_repr, bad),
            backend=backend,
            ordered=True,
            on_error=af.DeadLetter(sink=lambda item, _f: letters.append(item)),
        ),
    )
    assert got == [[], (), False]
    assert letters == [None, 0, ""]
    assert [f.item for f in report.failures] == ["None", "0", "''"]
    got, report = collect(
        falsy,
        af.Layer(functools.partial(fails_at_repr, bad), backend=backend, on_error=af.Skip()),
    )
    assert sorted(map(repr, got)) == ["()", "False", "[]"]
    assert report.layers[0].skipped == 3


def test_a_threshold_stops_a_run_that_fails_everywhere(backend: str) -> None:
    bad = frozenset(range(0, 1000, 2))
    with pytest.raises(af.TooManyFailures, match=r"layer 'half'.*4 items failed") as info:
        af.run(
            range(1000),
            af.Layer(
                functools.partial(fails_at, bad),
                2,
                backend=backend,
                name="half",
                on_error=af.Skip(max_failures=3),
            ),
        )
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(af.TooManyFailures, match=r"max_fraction=0\.05"):
        af.run(
            range(1000),
            af.Layer(
                functools.partial(fails_at, bad),
                backend=backend,
                on_error=af.DeadLetter(max_fraction=0.05),
            ),
        )


def test_a_low_failure_rate_stays_under_the_threshold(backend: str) -> None:
    bad = frozenset(range(0, 1000, 50))  # 2%
    report = af.run(
        range(1000),
        af.Layer(
            functools.partial(fails_at, bad),
            2,
            backend=backend,
            on_error=af.Skip(max_fraction=0.05, min_items=20),
        ),
    )
    assert report.layers[0].skipped == 20


def test_a_failing_dead_letter_sink_fails_the_run() -> None:
    def sink(item: Any, failure: af.Failure) -> None:
        raise RuntimeError("sink is down")

    with pytest.raises(RuntimeError, match="sink is down") as info:
        af.run(
            range(10),
            af.Layer(functools.partial(fails_at, frozenset([4])), on_error=af.DeadLetter(sink)),
        )
    assert "dead-letter sink" in "\n".join(info.value.__notes__)


def test_an_async_dead_letter_sink_is_awaited() -> None:
    letters: list[Any] = []

    async def sink(item: Any, failure: af.Failure) -> None:
        letters.append(item)

    af.run(
        range(10),
        af.Layer(functools.partial(fails_at, frozenset([2, 4])), on_error=af.DeadLetter(sink)),
    )
    assert sorted(letters) == [2, 4]


def test_base_exceptions_bypass_the_policy() -> None:
    def exits(x: int) -> int:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        af.run(range(5), af.Layer(exits, on_error=af.Skip()))


def kill_own_process_on(bad: frozenset[int], x: int) -> int:
    if x in bad:
        os.kill(os.getpid(), 9)
    return x


@pytest.mark.slow
@pytest.mark.skipif("process" not in LOCAL_BACKENDS, reason="no process backend")
def test_a_worker_crash_goes_through_the_policy() -> None:
    got, report = collect(
        range(12),
        af.Layer(
            functools.partial(kill_own_process_on, frozenset([5])),
            2,
            backend="process",
            on_error=af.DeadLetter(),
        ),
    )
    assert sorted(got) == [x for x in range(12) if x != 5]
    (failure,) = report.failures
    assert (failure.item, failure.error_type) == ("5", "WorkerCrashed")
    stats = report.layers[0]
    assert stats.received == stats.emitted + stats.failed + stats.skipped


# --- property: under any failure pattern, an ordered layer equals the plain loop ---------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.integers(-50, 50), max_size=60),
    bad=st.frozensets(st.integers(-50, 50), max_size=15),
    workers=st.integers(1, 4),
    dead_letter=st.booleans(),
    backend=st.sampled_from(["async", "thread"]),
)
def test_ordered_layer_with_failures_equals_the_plain_loop(
    items: list[int], bad: frozenset[int], workers: int, dead_letter: bool, backend: str
) -> None:
    policy: af.Policy = af.DeadLetter() if dead_letter else af.Skip()
    got, report = collect(
        items,
        af.Layer(
            functools.partial(fails_at, bad),
            workers,
            backend=backend,
            ordered=True,
            on_error=policy,
        ),
    )
    assert got == [x for x in items if x not in bad]
    failed = [x for x in items if x in bad]
    stats = report.layers[0]
    assert stats.received == len(items) == stats.emitted + stats.failed + stats.skipped
    if dead_letter:
        assert sorted(int(f.item) for f in report.failures) == sorted(failed)
    else:
        assert stats.skipped == len(failed)
