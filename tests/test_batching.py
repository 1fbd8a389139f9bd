"""Batch sizing: cheap items travel in large batches through wider channels; slow items, and
cheap items held back by a slow layer below, keep the declared bound."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

import async_flow as af
from async_flow import _pipeline as af_pipeline
from async_flow._calls import StopFlag, _Stopped, run_batch_sync
from async_flow._layer import DEFAULT_MAXSIZE, Kind
from async_flow._pipeline import STREAM_ROOM


def _inc(x: int) -> int:
    return x + 1


def _double(x: int) -> int:
    return 2 * x


def _slow_1ms(x: int) -> int:
    time.sleep(0.001)  # the work itself: this layer is slow, nothing waits on it
    return x


def test_cheap_thread_layers_widen_their_channels_and_keep_every_item() -> None:
    total = 0

    def collect(x: int) -> None:
        nonlocal total
        total += x

    n = 50_000
    report = af.run(range(n), af.Layer(_inc), af.Layer(_double), af.Layer(collect))
    assert total == sum(2 * (x + 1) for x in range(n))
    for stats in report.layers:
        assert DEFAULT_MAXSIZE < stats.maxsize <= 4096, stats


def test_a_declared_maxsize_is_kept_for_cheap_items() -> None:
    report = af.run(range(20_000), af.Layer(_inc, maxsize=64), af.Layer(_double, maxsize=32))
    assert [s.maxsize for s in report.layers] == [64, 32]


def test_slow_thread_items_keep_the_declared_bound() -> None:
    report = af.run(range(100), af.Layer(_slow_1ms))
    assert report.layers[0].maxsize == DEFAULT_MAXSIZE


def test_cheap_layers_ahead_of_a_slow_one_do_not_widen_their_channels() -> None:
    # The cheap layers could use large batches, but wider channels in front of them would only
    # fill up while the slow layer below holds everything back: memory must stay as flat as
    # with the declared bounds. Read at every item that comes out, so timing does not matter.
    widest = [0, 0]
    layers = [af.Layer(_inc), af.Layer(_double), af.Layer(_slow_1ms)]
    with af.open_stream(itertools.count(), *layers) as out:
        for i, _ in enumerate(out):
            stats = out.report.layers
            widest = [max(w, s.maxsize) for w, s in zip(widest, stats, strict=False)]
            if i == 500:
                break
    assert widest == [DEFAULT_MAXSIZE, DEFAULT_MAXSIZE]


def test_cheap_layers_ahead_of_a_cheap_collector_widen_their_channels() -> None:
    total = 0

    async def collect(x: int) -> None:  # on the event loop: no batches of its own to size
        nonlocal total
        total += x

    report = af.run(range(50_000), af.Layer(_inc), af.Layer(_double), af.Layer(collect))
    assert total == sum(2 * (x + 1) for x in range(50_000))
    assert all(s.maxsize > DEFAULT_MAXSIZE for s in report.layers[:2]), report.layers


def _until_full(channel: Any, enough: int) -> None:
    """Explicit sequencing: wait until ``channel`` is full (or holds the ``enough`` items left)."""
    for _ in range(20_000):
        if len(channel) >= min(channel.maxsize, enough):
            return
        time.sleep(0.001)
    raise AssertionError("the caller's channel never filled up")


def test_a_caller_that_falls_behind_bounds_the_channels_above_it() -> None:
    # A caller that takes items only once its channel is full never waits for them: the layers'
    # channels grow no wider than its channel, however cheap their items.
    n = 20_000
    with af.open_stream(range(n), af.Layer(_inc), af.Layer(_double)) as out:
        channel = out._receive
        assert channel is not None
        _until_full(channel, n)
        total = 0
        for i, x in enumerate(out):
            total += x
            if i % DEFAULT_MAXSIZE == 0:  # what the stream took last time is through
                assert [s.maxsize for s in out.report.layers] == [DEFAULT_MAXSIZE] * 2
                _until_full(channel, n - i - 1 - len(out._buffer))
    assert total == sum(2 * (x + 1) for x in range(n))


def test_a_caller_that_keeps_up_lets_the_channels_above_it_widen() -> None:
    # A caller that reads as fast as items come keeps finding its channel empty: it takes in
    # whatever comes, like a cheap layer, so the cheap layers above it may use large batches.
    async def main() -> tuple[int, list[int]]:
        total = 0
        async with af.open_stream(range(50_000), af.Layer(_inc), af.Layer(_double)) as out:
            async for x in out:
                total += x
        return total, [s.maxsize for s in out.report.layers]

    total, widths = asyncio.run(main())
    assert total == sum(2 * (x + 1) for x in range(50_000))
    assert all(DEFAULT_MAXSIZE < w <= 4096 for w in widths), widths


def test_a_stream_without_maxsize_widens_while_its_reader_keeps_up() -> None:
    # A reader that keeps finding the stream empty takes the items in ever larger batches (each
    # a hop between threads in the sync form).
    # Two layers ahead of a reader that sums in C: the reader is the faster side.
    n = 50_000
    with af.open_stream(range(n), af.Layer(_inc), af.Layer(_double)) as out:
        channel = out._receive
        assert channel is not None
        total = sum(out)
    assert total == sum(2 * (x + 1) for x in range(n))
    assert 4 * DEFAULT_MAXSIZE <= channel.maxsize <= STREAM_ROOM, channel.maxsize


def test_a_stream_with_a_maxsize_keeps_it() -> None:
    n = 20_000
    with af.open_stream(range(n), af.Layer(_inc), maxsize=300) as out:
        channel = out._receive
        assert channel is not None
        seen = {channel.maxsize for _ in out}
    assert seen == {300}


def test_a_stream_reader_that_falls_behind_puts_the_bound_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        async def source() -> Any:
            while (x := await queue.get()) is not None:
                yield x

        async with af.open_stream(source()) as out:
            channel = out._receive
            assert channel is not None
            items = aiter(out)
            for i in range(8):  # each read finds the stream empty: the reader keeps up
                queue.put_nowait(i)
                assert await anext(items) == i
            widened = channel.maxsize
            assert widened > DEFAULT_MAXSIZE
            for i in range(8, 2008):
                queue.put_nowait(i)
            queue.put_nowait(None)
            for _ in range(20_000):  # explicit sequencing: until the run has filled the stream
                if len(channel) == 2000:
                    break
                await asyncio.sleep(0.001)
            assert len(channel) == 2000
            # The reader has not waited since: it counts as fallen behind at once.
            monkeypatch.setattr(af_pipeline, "CALLER_WINDOW", 0.0)
            assert await anext(items) == 8
            assert channel.maxsize == DEFAULT_MAXSIZE
            rest = [x async for x in items]
        assert rest == list(range(9, 2008))

    asyncio.run(main())


def test_a_channel_narrows_again_when_its_items_turn_slow() -> None:
    slow = threading.Event()

    def sometimes_slow(x: int) -> int:
        if slow.is_set():
            time.sleep(0.0001)
        return x

    widened = narrowed = 0
    layers = [af.Layer(sometimes_slow), af.Layer(_inc)]
    # A wide output channel: the caller's channel bounds how wide the layers' channels grow.
    with af.open_stream(itertools.count(), *layers, maxsize=8192) as out:
        for i, _ in enumerate(out):
            maxsize = out.report.layers[0].maxsize
            if i == 20_000:
                widened = maxsize
                slow.set()
            elif slow.is_set() and maxsize <= DEFAULT_MAXSIZE:
                narrowed = maxsize
                break
    assert widened > DEFAULT_MAXSIZE
    assert narrowed == DEFAULT_MAXSIZE


def test_the_stop_flag_is_read_within_a_batch_of_cheap_items() -> None:
    stop = StopFlag()
    items = list(range(4096))

    def call(x: int) -> int:
        if x == 1000:
            stop.stopped = True
        return -x

    result = run_batch_sync(call, Kind.MAP, items, stop)
    assert isinstance(result.error, _Stopped)
    # Read between chunks of 64 items or 1/32 of the batch, whichever is more.
    assert 1000 < result.done <= 1001 + len(items) // 32
    assert result.outputs == [-x for x in items[: result.done]]
    # A small batch (slower items) reads it before every item.
    stop.stopped = False
    result = run_batch_sync(call, Kind.MAP, items[990:1020], stop)
    assert isinstance(result.error, _Stopped)
    assert result.outputs == [-x for x in range(990, 1001)]


def test_a_failing_item_is_named_and_the_outputs_before_it_kept() -> None:
    def call(x: int) -> int:
        if x == 2345:
            raise ValueError(x)
        return x + 1

    # A large batch (chunks), a middle one and a small one (item by item); with and without a
    # stop flag.
    for start, end in ((0, 4096), (2300, 2400), (2340, 2350)):
        batch = list(range(start, end))
        for stop in (None, StopFlag()):
            began = time.perf_counter()
            result = run_batch_sync(call, Kind.MAP, batch, stop)
            took = time.perf_counter() - began
            assert isinstance(result.error, ValueError)
            assert result.done == 2345 - start
            assert result.outputs == [x + 1 for x in range(start, 2345)]
            # The batch's own time, measured inside the call that ran it.
            assert result.seconds is not None
            assert 0 <= result.seconds <= took


def test_skipped_items_leave_cheap_batches_in_order() -> None:
    def picky(x: int) -> int:
        if x % 97 == 5:
            raise ValueError(x)
        return x

    out: list[Any] = []
    with af.open_stream(range(30_000), af.Layer(picky, ordered=True, on_error=af.Skip())) as stream:
        out.extend(stream)
    assert out == [x for x in range(30_000) if x % 97 != 5]
    assert stream.report.layers[0].skipped == len(range(5, 30_000, 97))


def test_a_helper_layer_passes_on_the_limit_of_the_layers_below() -> None:
    # af.batch sizes no batches of its own: what limits the cheap layer above it is the
    # collector below, a cheap one here.
    groups: list[list[int]] = []
    report = af.run(range(50_000), af.Layer(_inc), af.batch(100), af.Layer(groups.append))
    assert sum(map(len, groups)) == 50_000
    assert report.layers[0].maxsize > DEFAULT_MAXSIZE
