"""The core runtime, on every local backend: function kinds, sources, ordering, streams, errors."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import async_flow as af
from tests.conftest import run_async

# --- functions at module level, so that every backend (processes too) can run them ----------


def double(x: int) -> int:
    return 2 * x


async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def twice(x: int) -> Iterator[int]:
    yield x
    yield x


def evens(x: int) -> Iterator[int]:
    if x % 2 == 0:
        yield x


async def atwice(x: int) -> AsyncIterator[int]:
    yield x
    await asyncio.sleep(0)
    yield x


def fail_on_7(x: int) -> int:
    if x == 7:
        raise ValueError("seven is bad")
    return x


class Scaler:
    """A stateful worker: built once per worker, closed at the end.

    With ``log``, each instance appends ``open <token>`` and ``close <token>`` to that file, so
    that a test sees the life of instances that live in other processes (process and Ray
    workers) too; ``token`` is unique across processes.
    """

    def __init__(self, factor: int, log: str | None = None) -> None:
        self.factor = factor
        self.closed = False
        self.log = log
        self.token = uuid.uuid4().hex
        self._write("open")

    def _write(self, word: str) -> None:
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{word} {self.token}\n")

    def __call__(self, x: int) -> tuple[int, str]:
        assert not self.closed
        return (x * self.factor, self.token)

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True
        self._write("close")


class CountingCM:
    """A context-manager worker: entered before the first item, exited after the last."""

    entered = 0
    exited = 0
    lock = threading.Lock()

    def __enter__(self) -> CountingCM:
        with CountingCM.lock:
            CountingCM.entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with CountingCM.lock:
            CountingCM.exited += 1

    def __call__(self, x: int) -> int:
        return x + 1


def collect(source: Any, *layers: af.Layer[Any, Any]) -> list[Any]:
    with af.open_stream(source, *layers) as results:
        return list(results)


# --- declaring layers -------------------------------------------------------------------


def test_default_backend_follows_the_function_kind() -> None:
    assert af.Layer(double).backend == "thread"
    assert af.Layer(twice).backend == "thread"
    assert af.Layer(adouble).backend == "async"
    assert af.Layer(atwice).backend == "async"
    assert af.Layer(Scaler, args=(2,)).backend == "thread"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"fn": 42}, TypeError, "must be callable"),
        ({"fn": double, "workers": 0}, ValueError, "workers must be >= 1"),
        ({"fn": double, "workers": 1.5}, TypeError, "workers must be an int"),
        ({"fn": double, "backend": "gpu"}, ValueError, "'async', 'thread', 'process', 'ray'"),
        ({"fn": double, "maxsize": 0}, ValueError, "maxsize must be >= 1"),
        ({"fn": double, "args": (1,)}, TypeError, "args/kwargs are for a class"),
    ],
)
def test_bad_declarations_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        af.Layer(**kwargs)
    assert "Layer" in str(info.value)


def test_a_class_without_call_is_called_per_item() -> None:
    class Box:
        def __init__(self, value: int) -> None:
            self.value = value

    assert [b.value for b in collect([1, 2], af.Layer(Box, ordered=True))] == [1, 2]
    assert collect(["1", "2"], af.Layer(int, ordered=True)) == [1, 2]
    with pytest.raises(TypeError, match="args/kwargs are for a class with __call__"):
        af.Layer(Box, args=(1,))


def test_pipeline_rejects_non_layers_and_non_iterables() -> None:
    with pytest.raises(TypeError, match=r"must be an async_flow\.Layer"):
        af.run(range(3), double)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        af.run(42, af.Layer(double))  # type: ignore[arg-type]


# --- every function kind on every backend ------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (double, [2 * x for x in range(50)]),
        (adouble, [2 * x for x in range(50)]),
        (twice, [x for x in range(50) for _ in range(2)]),
        (atwice, [x for x in range(50) for _ in range(2)]),
        (evens, [x for x in range(50) if x % 2 == 0]),
    ],
)
def test_function_kinds(backend: str, fn: Any, expected: list[int]) -> None:
    got = collect(range(50), af.Layer(fn, 3, backend=backend))
    assert sorted(got) == sorted(expected)


def test_class_workers_build_one_instance_each_and_close(backend: str, tmp_path: Path) -> None:
    log = tmp_path / "instances.log"
    got = collect(range(200), af.Layer(Scaler, 3, backend=backend, args=(3, str(log))))
    assert sorted(v for v, _ in got) == [3 * x for x in range(200)]
    lines = [line.split() for line in log.read_text().splitlines()]
    opened = [token for word, token in lines if word == "open"]
    closed = [token for word, token in lines if word == "close"]
    # One instance per worker, each closed once by the end of the run; every output came from
    # one of them.
    assert len(opened) == len(set(opened)) == 3
    assert sorted(closed) == sorted(opened)
    assert {token for _, token in got} <= set(opened)


def test_context_manager_workers_are_entered_and_exited() -> None:
    CountingCM.entered = CountingCM.exited = 0
    report = af.run(range(100), af.Layer(CountingCM, 4))
    assert report.layers[0].emitted == 100
    assert CountingCM.entered == CountingCM.exited == 4


def test_falsy_items_survive(backend: str) -> None:
    items: list[Any] = [None, 0, "", [], (), False, 0.0]
    got = collect(items, af.Layer(identity, 2, backend=backend, ordered=True))
    assert got == items


def identity(x: Any) -> Any:
    return x


def test_ordered_layers_keep_input_order(backend: str) -> None:
    def jitter(x: int) -> int:
        # Items finish out of order: later items are cheaper.
        total = 0
        for i in range((200 - x) * 50):
            total += i
        return x

    fn = jitter if backend != "async" else adouble
    got = collect(range(200), af.Layer(fn, 4, backend=backend, ordered=True, maxsize=8))
    expected = list(range(200)) if fn is jitter else [2 * x for x in range(200)]
    assert got == expected


# --- sources ---------------------------------------------------------------------------


def test_sources_of_every_shape() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    def gen() -> Iterator[int]:
        yield from range(5)

    for source in ([0, 1, 2, 3, 4], range(5), gen(), agen(), iter(range(5)), {0, 1, 2, 3, 4}):
        assert sorted(collect(source, af.Layer(identity))) == [0, 1, 2, 3, 4]


def test_merge_reads_every_source() -> None:
    async def agen() -> AsyncIterator[str]:
        for c in "abc":
            yield c

    got = collect(af.merge(range(3), agen(), (x for x in [10, 11])), af.Layer(identity, 2))
    assert sorted(map(str, got)) == sorted(map(str, [0, 1, 2, "a", "b", "c", 10, 11]))
    with pytest.raises(ValueError, match="at least one"):
        af.merge()


def test_a_blocking_generator_does_not_block_the_loop() -> None:
    """The generator waits for an event that only the event loop can set: if the generator ran
    on the loop, this would deadlock (and the per-test timeout would fail it)."""
    released = threading.Event()

    def blocking() -> Iterator[int]:
        yield 1
        released.wait()
        yield 2

    async def main() -> list[int]:
        async with af.open_stream(blocking(), af.Layer(adouble)) as results:
            out = []
            async for x in results:
                out.append(x)
                # The loop is free while the generator blocks: it can set the event.
                released.set()
            return out

    assert run_async(main()) == [2, 4]


def test_generator_source_is_closed_when_the_run_stops() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    with af.open_stream(endless(), af.Layer(identity)) as results:
        assert next(results) == 0
    assert closed.is_set()


# --- running forms ----------------------------------------------------------------------


def test_await_pipeline_returns_a_report(backend: str) -> None:
    report = run_async(af.pipeline(range(100), af.Layer(double, 4, backend=backend, name="d")))
    assert report.status == "completed"
    stats = report.layer("d")
    assert (stats.received, stats.emitted, stats.failed) == (100, 100, 0)
    assert stats.busy_seconds > 0
    assert report.source.produced == 100
    assert report.source.exhausted


def test_run_refuses_a_running_loop() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"await af\.pipeline"):
            af.run(range(3), af.Layer(double))

    run_async(main())


def test_async_stream_yields_outputs_and_sets_report() -> None:
    async def main() -> tuple[list[int], af.Report]:
        async with af.open_stream(range(10), af.Layer(adouble, ordered=True)) as results:
            got = [x async for x in results]
        return got, results.report

    got, report = run_async(main())
    assert got == [2 * x for x in range(10)]
    assert report.status == "completed"


def test_leaving_a_stream_early_cancels_the_run(backend: str) -> None:
    with af.open_stream(itertools.count(), af.Layer(double, 2, backend=backend)) as results:
        first = [next(results) for _ in range(5)]
    # Five doubles of five distinct items, then the run stopped with the source still open.
    assert len(set(first)) == 5
    assert all(x % 2 == 0 and x >= 0 for x in first)
    assert results.report.status == "cancelled"
    assert not results.report.source.exhausted

    async def main() -> af.Report:
        async with af.open_stream(itertools.count(), af.Layer(adouble, 2)) as results:
            async for _ in results:
                break
        return results.report

    assert run_async(main()).status == "cancelled"


def test_a_stream_read_in_parts_loses_and_repeats_nothing() -> None:
    # for loops that stop early, next() calls and a last for loop share what the stream holds.
    n = 5000
    with af.open_stream(range(n), af.Layer(double, ordered=True)) as results:
        got = list(itertools.islice(results, 10))
        got.append(next(results))
        for x in results:
            got.append(x)
            if len(got) == 3000:
                break
        got += list(results)
    assert got == [2 * x for x in range(n)]

    async def main() -> list[int]:
        async with af.open_stream(range(n), af.Layer(adouble, ordered=True)) as results:
            got = [x async for x in aislice(results, 10)]
            got.append(await anext(results))
            got += [x async for x in results]
        return got

    assert run_async(main()) == [2 * x for x in range(n)]


async def aislice(stream: AsyncIterable[int], count: int) -> AsyncIterator[int]:
    """The first ``count`` items of ``stream``, taking no more than that from it."""
    if count <= 0:
        return
    async for x in stream:
        yield x
        count -= 1
        if count == 0:
            return


def test_no_layers_passes_the_source_through() -> None:
    assert collect(range(5)) == [0, 1, 2, 3, 4]
    assert af.run(range(5)).source.produced == 5


# --- helpers ----------------------------------------------------------------------------


def test_batch_groups_by_size_and_flatten_undoes_it() -> None:
    assert collect(range(7), af.batch(3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert collect(range(7), af.batch(3), af.flatten()) == list(range(7))
    with pytest.raises(ValueError, match="batch size"):
        af.batch(0)
    with pytest.raises(ValueError, match="timeout"):
        af.batch(3, timeout=0)


def test_batch_timeout_flushes_a_partial_batch() -> None:
    """A trickle of items: the batch goes on when the timeout passes, not when it is full."""

    async def main() -> list[list[int]]:
        second = asyncio.Event()

        async def trickle() -> AsyncIterator[int]:
            yield 1
            yield 2
            await second.wait()  # held back until the first partial batch has come out
            yield 3

        out = []
        async with af.open_stream(trickle(), af.batch(100, timeout=0.05)) as groups:
            async for group in groups:
                out.append(group)
                second.set()
        return out

    assert run_async(main()) == [[1, 2], [3]]


class _FailsToBuild:
    def __init__(self) -> None:
        raise LookupError("no model file")

    def __call__(self, x: int) -> int:
        return x


class _FailsToClose:
    def __call__(self, x: int) -> int:
        return x

    def close(self) -> None:
        raise OSError("flush failed")


@pytest.mark.parametrize(
    ("cls", "error", "when"),
    [
        (_FailsToBuild, LookupError, "starting"),
        (_FailsToClose, OSError, "closing"),
    ],
)
def test_worker_build_and_close_errors_name_the_layer(
    backend: str, cls: type, error: type[Exception], when: str
) -> None:
    with pytest.raises(error) as info:
        af.run(range(5), af.Layer(cls, 2, backend=backend, name="model"))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"raised while {when} worker" in notes
    assert "of layer 'model' (#0)" in notes
