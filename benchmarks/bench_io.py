"""IO-bound: 2,000 items each awaiting 10 ms, 100 workers. The ideal is 2000 * 0.01 / 100 = 0.2 s.

Run: ``python benchmarks/bench_io.py``. Ratios are to the ideal time. The "on uvloop" rows need
the ``uvloop`` extra and are left out (with a note) without it. Each contender runs in a child
process of its own, so that one that hangs (pypeln.task does, now and then) is reported as timed
out instead of stalling the table.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import async_flow as af
from _harness import Result, child_main, measure_isolated, table

N, WORKERS, DELAY = 2_000, 100, 0.010
IDEAL = N * DELAY / WORKERS


async def io(x: int) -> int:
    await asyncio.sleep(DELAY)
    return x


try:
    import uvloop
except ModuleNotFoundError:  # pragma: no cover - the bench extra installs it
    uvloop = None

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


def flow(loop_factory: LoopFactory = None) -> None:
    report = af.run(
        range(N), af.Layer(io, WORKERS), af.Layer(lambda x: x), loop_factory=loop_factory
    )
    assert report.layers[0].emitted == N


def flow_on_uvloop() -> None:
    flow(uvloop.new_event_loop)


def bare_floor(loop_factory: LoopFactory = None) -> None:
    """What asyncio's timers allow: 100 tasks, each awaiting its 20 sleeps one after the other.

    One ``asyncio.sleep(0.01)`` takes a little longer than 10 ms (the loop wakes after the
    deadline), so no scheduler of these items reaches the ideal; this row shows how close the
    event loop itself gets, with no queue and no pipeline at all.
    """

    async def chain() -> None:
        for _ in range(N // WORKERS):
            await asyncio.sleep(DELAY)

    async def main() -> None:
        await asyncio.gather(*(chain() for _ in range(WORKERS)))

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def bare_floor_on_uvloop() -> None:
    """The same chains on uvloop, whose timers wake closer to their deadline."""
    bare_floor(uvloop.new_event_loop)


def semaphore_gather() -> None:
    """The hand-written reference: gather under a semaphore."""

    async def main() -> None:
        sem = asyncio.Semaphore(WORKERS)

        async def one(x: int) -> int:
            async with sem:
                return await io(x)

        await asyncio.gather(*(one(i) for i in range(N)))

    asyncio.run(main())


def aiostream_run() -> None:
    from aiostream import pipe, stream

    async def main() -> None:
        xs = stream.iterate(range(N)) | pipe.map(io, task_limit=WORKERS)
        async with xs.stream() as it:
            async for _ in it:
                pass

    asyncio.run(main())


def pypeln_task() -> None:
    import pypeln as pl

    async def source():
        for i in range(N):
            yield i

    list(pl.task.map(io, source(), workers=WORKERS, maxsize=WORKERS))


def contenders() -> dict[str, Callable[[], None]]:
    found: dict[str, Callable[[], None]] = {
        "bare asyncio: 100 tasks x 20 sleeps": bare_floor,
        "async_flow": flow,
    }
    if uvloop is not None:
        found["bare asyncio chain on uvloop"] = bare_floor_on_uvloop
        found["async_flow on uvloop"] = flow_on_uvloop
    found["gather + semaphore"] = semaphore_gather
    found["aiostream"] = aiostream_run
    found["pypeln.task"] = pypeln_task
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per contender")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, contenders()[args.child], N, args.repeat)
        return
    results = [Result("ideal", IDEAL, N)]
    for name in contenders():
        results.append(measure_isolated(__file__, name, N, args.repeat, args.timeout))
    print(table(f"{N:,} items x {DELAY * 1000:.0f} ms IO, {WORKERS} workers", results, "ideal"))
    if uvloop is None:
        print("uvloop is not installed: the 'on uvloop' rows are left out (pip install uvloop)")


if __name__ == "__main__":
    main()
