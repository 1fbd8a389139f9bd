"""Fail-fast errors and cancellation: re-raised as themselves, nothing hangs, nothing leaks."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

import async_flow as af
from tests.conftest import LOCAL_BACKENDS, run_async


def fail_on_7(x: int) -> int:
    if x == 7:
        raise ValueError("seven is bad")
    return x


async def afail_on_7(x: int) -> int:
    await asyncio.sleep(0)
    return fail_on_7(x)


def identity(x: int) -> int:
    return x


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def test_layer_error_is_reraised_as_itself_with_a_note(backend: str) -> None:
    fn = afail_on_7 if backend == "async" else fail_on_7
    with pytest.raises(ValueError, match="seven is bad") as info:
        af.run(range(100), af.Layer(identity, 2), af.Layer(fn, 3, backend=backend, name="check"))
    notes = _notes(info.value)
    assert "layer 'check'" in notes
    assert "on item 7" in notes


def test_source_error_is_reraised_with_a_note() -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("source broke")

    with pytest.raises(KeyError, match="source broke") as info:
        af.run(broken(), af.Layer(identity))
    assert "raised by the source" in _notes(info.value)


def test_async_source_error() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        af.run(broken(), af.Layer(identity))


def test_error_under_full_channels_does_not_hang(backend: str) -> None:
    """An endless fast source, tiny channels everywhere, and the collector fails: every blocked
    sender must be cancelled (the failure mode where peers hang forever)."""
    fn = afail_on_7 if backend == "async" else fail_on_7
    with pytest.raises(ValueError, match="seven"):
        af.run(
            itertools.count(),
            af.Layer(identity, 2, maxsize=1),
            af.Layer(identity, 2, maxsize=1, backend=backend),
            af.Layer(fn, 1, maxsize=1, backend=backend),
        )


def test_error_in_an_upstream_layer_while_downstream_is_slow(backend: str) -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    with pytest.raises(ValueError, match="seven"):
        af.run(range(1000), af.Layer(fail_on_7, 2, backend=backend), af.Layer(slow, maxsize=1))


def test_cancelling_the_awaiting_task_stops_everything(backend: str) -> None:
    started = asyncio.Event()

    async def main() -> None:
        async def mark(x: int) -> int:
            started.set()
            return x

        task = asyncio.create_task(
            af.pipeline(
                itertools.count(),
                af.Layer(mark),
                af.Layer(identity, 2, backend=backend, maxsize=2),
            )
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main())


def test_no_unretrieved_exception_reports() -> None:
    """Several workers fail at once: one error is raised, and the loop reports nothing else."""
    reported: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))

        async def always(x: int) -> int:
            raise RuntimeError(f"fail {x}")

        with pytest.raises(RuntimeError, match="fail"):
            await af.pipeline(range(50), af.Layer(always, 8))

    run_async(main())
    assert reported == []


def test_base_exceptions_propagate() -> None:
    def exits(x: int) -> int:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        af.run(range(5), af.Layer(exits))


@pytest.mark.skipif("process" not in LOCAL_BACKENDS, reason="no process backend")
def test_a_layer_that_cannot_start_fails_the_stream_instead_of_hanging_its_reader() -> None:
    """The reader of an ``async with af.open_stream`` gets the start-up error (here a function
    that cannot be pickled for a worker process), rather than waiting for items forever."""
    lock = threading.Lock()

    def holds_a_lock(x: int) -> int:
        with lock:
            return x

    async def main() -> None:
        stream = af.open_stream(range(3), af.Layer(holds_a_lock, backend="process", name="bad"))
        with pytest.raises(af.SerializationError, match="layer 'bad'"):
            async with stream:
                await asyncio.wait_for(anext(stream), 30)

    run_async(main())
