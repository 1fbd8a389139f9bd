"""Back-pressure: a fast source against a slow collector holds a bounded number of items."""

from __future__ import annotations

import asyncio

import psutil
import pytest

import async_flow as af
from tests.conftest import worst_in_flight


def test_in_flight_items_stay_bounded_for_an_endless_source(backend: str) -> None:
    """The invariant is checked at every item the collector sees, so it does not depend on
    timing: produced - collected can never exceed the channels' bounds plus what workers hold."""
    sizes = [4, 8, 4]
    workers = [2, 3, 1]
    layers = [
        af.Layer(_pass, workers[0], maxsize=sizes[0], backend=backend),
        af.Layer(_pass, workers[1], maxsize=sizes[1], backend=backend, ordered=True),
    ]
    # Each worker holds at most one batch, and a batch is at most a channel's bound; the source
    # hands over at most one chunk (the first channel's bound) beyond the channel itself; the
    # ordered layer parks at most 2 * workers batches.
    bound = sizes[0] + sum(s + w * s for s, w in zip(sizes, workers, strict=True))
    bound += 2 * workers[1] * sizes[1]
    worst = worst_in_flight([*layers, af.Layer(_slow, maxsize=sizes[2])], collect=3000)
    assert 0 < worst <= bound, (worst, bound)


def _pass(x: int) -> int:
    return x


async def _slow(x: int) -> int:
    for _ in range(3):
        await asyncio.sleep(0)
    return x


def test_widening_a_channel_releases_a_blocked_sender_and_never_narrows() -> None:
    from async_flow._channel import open_channel

    async def main() -> None:
        send, receive = open_channel(2)
        sender = asyncio.get_running_loop().create_task(send.send_batch([1, 2, 3, 4]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sender.done()
        assert len(receive) == 2
        receive.widen(4)
        await sender
        assert len(receive) == 4
        assert receive.maxsize == 4
        receive.widen(3)
        assert receive.maxsize == 4
        send.close()
        assert await receive.receive_batch(10) == [1, 2, 3, 4]

    asyncio.run(main())


def test_narrowing_a_channel_keeps_its_items_and_holds_senders_until_it_drains() -> None:
    from async_flow._channel import open_channel

    async def main() -> None:
        send, receive = open_channel(8)
        await send.send_batch(list(range(6)))
        receive.narrow(2)
        assert receive.maxsize == 2
        assert len(receive) == 6  # nothing buffered is dropped
        sender = asyncio.get_running_loop().create_task(send.send_batch([6]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sender.done()  # 6 items held against a bound of 2
        assert await receive.receive_batch(5) == [0, 1, 2, 3, 4]
        await sender
        receive.narrow(0)
        assert receive.maxsize == 1  # never below one item
        send.close()
        assert await receive.receive_batch(10) == [5, 6]

    asyncio.run(main())


def test_the_last_items_of_a_closed_channel_are_shared_between_receivers() -> None:
    """The tail of a run: the source has finished and the channel holds what is left. With
    ``spread`` receivers, each batch takes at most its share of what remains (never the whole
    rest for the first receiver), so the batches shrink and workers finish together."""
    from async_flow._channel import EndOfChannel, open_channel

    async def main() -> list[int]:
        send, receive = open_channel(100)
        await send.send_batch(list(range(100)))
        send.close()
        sizes: list[int] = []
        taken: list[int] = []
        while True:
            try:
                batch = await receive.receive_batch(40, spread=4)
            except EndOfChannel:
                break
            sizes.append(len(batch))
            taken.extend(batch)
        assert taken == list(range(100))
        return sizes

    sizes = asyncio.run(main())
    # 25 of 100, then a quarter of what is left each time, down to single items.
    assert sizes[:4] == [25, 19, 14, 11]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-4:] == [1, 1, 1, 1]


def test_the_waits_of_concurrent_senders_and_receivers_all_count() -> None:
    """Two senders suspended on a full channel at once were each suspended for the whole pause
    below, so the channel's blocked time is at least twice the pause; likewise two receivers on
    an empty one. (A total read before the wait and written after it kept only one of them.)"""
    from async_flow._channel import open_channel

    pause = 0.05

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        send, receive = open_channel(1)
        await send.send_batch([0])
        senders = [loop.create_task(send.send_batch([i])) for i in (1, 2)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert send.statistics().waiting_senders == 2
        await asyncio.sleep(pause)
        assert await receive.receive_batch(1) == [0]
        assert await receive.receive_batch(1) == [1]
        await asyncio.gather(*senders)
        assert await receive.receive_batch(1) == [2]

        receivers = [loop.create_task(receive.receive_batch(1)) for _ in range(2)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert receive.statistics().waiting_receivers == 2
        await asyncio.sleep(pause)
        await send.send_batch([3, 4])
        assert sorted(x for batch in await asyncio.gather(*receivers) for x in batch) == [3, 4]
        return send.blocked_seconds, receive.wait_seconds

    blocked, waited = asyncio.run(main())
    assert blocked >= 2 * pause
    assert waited >= 2 * pause


@pytest.mark.slow
def test_memory_stays_flat_over_200k_items() -> None:
    """200,000 items of 4 KB (800 MB in all) from a source that could be read at once, made
    faster than the collector takes them: the process's RSS, measured after a warm-up run,
    grows by far less than what the run moved. With unbounded channels the items the collector
    has not taken yet pile up (about 60 MB here); bounded, they stay at the channels' size."""
    process = psutil.Process()
    peak = 0
    taken = 0

    def make(i: int) -> bytes:
        return bytes(4096)

    def collect(item: bytes) -> None:
        nonlocal peak, taken
        sum(item[:1024])  # the collector is the slow end
        taken += 1
        if taken % 5000 == 0:
            peak = max(peak, process.memory_info().rss)

    layers = (af.Layer(make, 2), af.Layer(collect))
    af.run(range(20_000), *layers)  # warm-up: allocator pools, code paths, caches
    before = process.memory_info().rss
    peak = 0
    report = af.run(range(200_000), *layers)
    assert report.layers[-1].received == 200_000
    assert peak - before < 40 * 2**20, f"RSS grew by {(peak - before) / 2**20:.0f} MB"
