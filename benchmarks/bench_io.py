"""IO-bound: 2,000 items each awaiting 10 ms, 100 workers. The ideal is 2000 * 0.01 / 100 = 0.2 s.

Run: ``python benchmarks/bench_io.py``. Ratios are to the ideal time. The "on uvloop" rows need
the ``uvloop`` extra and are left out (with a note) without it. Each contender runs in a child
process of its own, so that one that hangs is reported as timed out instead of stalling the
table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import async_flow as af
from _harness import Result, add_repeat, child_main, measure_isolated, spread, table

N, WORKERS, DELAY = 2_000, 100, 0.010
SLEEPS = N // WORKERS  # each worker's share of the items, one after the other
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


def chains(tasks: int, sleeps: int, loop_factory: LoopFactory = None) -> float:
    """Seconds for ``tasks`` tasks each awaiting ``sleeps`` sleeps of DELAY one after the other."""

    async def chain() -> None:
        for _ in range(sleeps):
            await asyncio.sleep(DELAY)

    async def main() -> None:
        await asyncio.gather(*(chain() for _ in range(tasks)))

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        start = time.perf_counter()
        runner.run(main())
        return time.perf_counter() - start


def bare_floor(loop_factory: LoopFactory = None) -> None:
    """The floor the event loop sets: 100 tasks, each awaiting its 20 sleeps one after the other.

    No queue and no pipeline: the loop still runs the tasks one round wakes one after another,
    so each round ends a little after its 10 ms (see :func:`per_sleep_table`), and no scheduler
    of these items gets closer to the ideal than this row.
    """
    chains(WORKERS, SLEEPS, loop_factory)


def bare_floor_on_uvloop() -> None:
    """The same chains on uvloop, whose timers wake closer to their deadline."""
    bare_floor(uvloop.new_event_loop)


def per_sleep_table(repeat: int) -> str:
    """How long one sleep of a chain takes, by how many tasks sleep at once, on each loop.

    The loop runs the tasks that one round wakes one after another, so the more tasks, the later
    the last of them starts its next sleep: what a loop spends per task shows up here.
    """
    loops: dict[str, LoopFactory] = {"asyncio": None}
    if uvloop is not None:
        loops["uvloop"] = uvloop.new_event_loop
    lines = [f"ms per {DELAY * 1000:.0f} ms sleep, median of {repeat}, {SLEEPS} sleeps per task"]
    lines.append("tasks  " + "  ".join(f"{name:>26}" for name in loops))
    for tasks in (1, 10, 100, 300):
        cells = []
        for factory in loops.values():
            runs = [chains(tasks, SLEEPS, factory) / SLEEPS for _ in range(repeat)]
            cells.append(f"{statistics.median(runs) * 1000:8.2f} ({spread(runs, '', 1000, 2)})")
        lines.append(f"{tasks:5d}  " + "  ".join(cells))
    return "\n".join(lines)


def queue_pool() -> None:
    """A hand-written pool: WORKERS tasks taking items from one bounded ``asyncio.Queue``."""

    async def main() -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue(256)

        async def feed() -> None:
            for i in range(N):
                await queue.put(i)
            for _ in range(WORKERS):
                await queue.put(None)

        async def worker() -> None:
            while (x := await queue.get()) is not None:
                await io(x)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed())
            for _ in range(WORKERS):
                tg.create_task(worker())

    asyncio.run(main())


def cpu_table(repeat: int) -> str:
    """CPU time per item (``time.process_time``, every thread) on asyncio's own loop."""
    rows = {"bare asyncio chain": bare_floor, "asyncio.Queue pool": queue_pool, "async_flow": flow}
    lines = [f"CPU per item on asyncio's loop, median of {repeat}"]
    for name, fn in rows.items():
        runs = []
        for _ in range(repeat):
            start = time.process_time()
            fn()
            runs.append(time.process_time() - start)
        lines.append(
            f"{name:20s} {statistics.median(runs) / N * 1e6:6.1f} us"
            f" ({spread(runs, ' us', 1e6 / N, 1)})"
        )
    return "\n".join(lines)


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

    # pypeln 0.4.9 never finishes when its source is an async generator; a plain one works.
    list(pl.task.map(io, range(N), workers=WORKERS, maxsize=WORKERS))


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
    add_repeat(parser)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per contender")
    parser.add_argument(
        "--per-sleep",
        action="store_true",
        help="also time one sleep by how many tasks sleep, and the CPU each item costs",
    )
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
    if args.per_sleep:
        print()
        print(per_sleep_table(args.repeat))
        print()
        print(cpu_table(args.repeat))


if __name__ == "__main__":
    main()
