"""Per-item overhead: three trivial layers over 200,000 ints, side by side with the peers.

Run: ``python benchmarks/bench_overhead.py`` (peers from ``pip install -e ".[bench]"``).
Ratios are to two hand-written pipelines of ``asyncio.Queue`` stages, one task each: one that
moves one item per ``put``/``get`` (what one writes first), and one that moves lists of
:data:`BATCH` items (what async_flow's channels do with tiny items), so that the batching is not
what the figures credit to the library.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import async_flow as af
from _harness import Result, add_repeat, child_main, measure_isolated, table

N = 200_000
BATCH = 1024  # items per put/get in the batched hand-written pipeline


async def a1(x: int) -> int:
    return x + 1


async def a2(x: int) -> int:
    return x * 2


async def a3(x: int) -> int:
    return x - 1


def s1(x: int) -> int:
    return x + 1


def s2(x: int) -> int:
    return x * 2


def s3(x: int) -> int:
    return x - 1


EXPECTED = sum((x + 1) * 2 - 1 for x in range(N))


def check(total: int) -> None:
    if total != EXPECTED:
        raise AssertionError(f"wrong result {total} != {EXPECTED}")


def hand_written() -> None:
    """The baseline: what one writes by hand with asyncio.Queue and a None sentinel."""

    async def stage(fn: Callable[[int], object], q_in: asyncio.Queue, q_out: asyncio.Queue) -> None:
        while (x := await q_in.get()) is not None:
            await q_out.put(await fn(x))  # type: ignore[misc]
        await q_out.put(None)

    async def main() -> int:
        qs: list[asyncio.Queue] = [asyncio.Queue(256) for _ in range(4)]

        async def feed() -> None:
            for i in range(N):
                await qs[0].put(i)
            await qs[0].put(None)

        async def sink() -> int:
            total = 0
            while (x := await qs[3].get()) is not None:
                total += x
            return total

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed())
            for i, fn in enumerate((a1, a2, a3)):
                tg.create_task(stage(fn, qs[i], qs[i + 1]))
            result = tg.create_task(sink())
        return result.result()

    check(asyncio.run(main()))


def hand_written_batched() -> None:
    """The same pipeline by hand, each queue carrying lists of ``BATCH`` items."""

    async def stage(fn: Callable[[int], object], q_in: asyncio.Queue, q_out: asyncio.Queue) -> None:
        while (batch := await q_in.get()) is not None:
            await q_out.put([await fn(x) for x in batch])  # type: ignore[misc]
        await q_out.put(None)

    async def main() -> int:
        qs: list[asyncio.Queue] = [asyncio.Queue(4) for _ in range(4)]

        async def feed() -> None:
            for i in range(0, N, BATCH):
                await qs[0].put(range(i, min(i + BATCH, N)))
            await qs[0].put(None)

        async def sink() -> int:
            total = 0
            while (batch := await qs[3].get()) is not None:
                total += sum(batch)
            return total

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed())
            for i, fn in enumerate((a1, a2, a3)):
                tg.create_task(stage(fn, qs[i], qs[i + 1]))
            result = tg.create_task(sink())
        return result.result()

    check(asyncio.run(main()))


def flow_async() -> None:
    async def main() -> int:
        total = 0
        async with af.open_stream(range(N), af.Layer(a1), af.Layer(a2), af.Layer(a3)) as out:
            async for x in out:
                total += x
        return total

    check(asyncio.run(main()))


def flow_async_collector() -> None:
    total = 0

    async def collect(x: int) -> None:
        nonlocal total
        total += x

    af.run(range(N), af.Layer(a1), af.Layer(a2), af.Layer(a3), af.Layer(collect))
    check(total)


def flow_sync_collector() -> None:
    total = 0

    def collect(x: int) -> None:
        nonlocal total
        total += x

    af.run(range(N), af.Layer(s1), af.Layer(s2), af.Layer(s3), af.Layer(collect))
    check(total)


def flow_sync_stream() -> None:
    with af.open_stream(range(N), af.Layer(s1), af.Layer(s2), af.Layer(s3)) as out:
        check(sum(out))


def aiostream_run() -> None:
    from aiostream import pipe, stream

    async def main() -> int:
        xs = (
            stream.iterate(range(N))
            | pipe.map(a1, task_limit=1)
            | pipe.map(a2, task_limit=1)
            | pipe.map(a3, task_limit=1)
        )
        total = 0
        async with xs.stream() as it:
            async for x in it:
                total += x
        return total

    check(asyncio.run(main()))


def pypeln_task() -> None:
    import pypeln as pl

    # pypeln 0.4.9 never finishes when its source is an async generator; a plain one works.
    stage = pl.task.map(a1, range(N), workers=1, maxsize=256)
    stage = pl.task.map(a2, stage, workers=1, maxsize=256)
    stage = pl.task.map(a3, stage, workers=1, maxsize=256)
    check(sum(stage))


def pypeln_thread() -> None:
    import pypeln as pl

    stage = pl.thread.map(s1, range(N), workers=1, maxsize=256)
    stage = pl.thread.map(s2, stage, workers=1, maxsize=256)
    stage = pl.thread.map(s3, stage, workers=1, maxsize=256)
    check(sum(stage))


def streamable_async() -> None:
    from streamable import stream

    async def main() -> int:
        total = 0
        async for x in stream(range(N)).map(a1).map(a2).map(a3):
            total += x
        return total

    check(asyncio.run(main()))


def streamable_plain() -> None:
    """Plain functions chained as iterators in the consumer's thread: nothing runs concurrently."""
    from streamable import stream

    check(sum(stream(range(N)).map(s1).map(s2).map(s3)))


def nested_maps() -> None:
    """No pipeline at all: the three calls per item as nested C ``map``s in this thread.

    This is what the interpreter itself needs for the plain rows (the GIL runs the calls one at a
    time, whatever the threads): no runtime that calls these functions can go faster.
    """
    check(sum(map(s3, map(s2, map(s1, range(N))))))


def spdl_run() -> None:
    from spdl.pipeline import PipelineBuilder

    pipeline = (
        PipelineBuilder()
        .add_source(range(N))
        .pipe(a1)
        .pipe(a2)
        .pipe(a3)
        .add_sink(256)
        .build(num_threads=1)
    )
    with pipeline.auto_stop():
        check(sum(pipeline))


CONTENDERS: dict[str, Callable[[], None]] = {
    "asyncio.Queue by hand": hand_written,
    "asyncio.Queue by hand, batched": hand_written_batched,
    "async_flow (async fns)": flow_async,
    "async_flow (async fns, collector)": flow_async_collector,
    "async_flow (plain fns, collector)": flow_sync_collector,
    "async_flow (plain fns, sync for)": flow_sync_stream,
    "aiostream": aiostream_run,
    "pypeln.task": pypeln_task,
    "pypeln.thread": pypeln_thread,
    "streamable (async fns)": streamable_async,
    "streamable (plain fns, sequential)": streamable_plain,
    "floor: nested map() in one thread": nested_maps,
    "spdl": spdl_run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_repeat(parser)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per contender")
    parser.add_argument("--only", nargs="*", help="substrings of contender names to run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, CONTENDERS[args.child], N, args.repeat)
        return
    results: list[Result] = []
    for name in CONTENDERS:
        baseline = name.startswith("asyncio.Queue by hand")
        if args.only and not baseline and not any(o in name for o in args.only):
            continue
        results.append(measure_isolated(__file__, name, N, args.repeat, args.timeout))
    bases = ["asyncio.Queue by hand", "asyncio.Queue by hand, batched"]
    print(table(f"3 trivial layers over {N:,} ints", results, bases))


if __name__ == "__main__":
    main()
