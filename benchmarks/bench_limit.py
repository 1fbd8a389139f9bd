"""Rate limits: 2,000 calls to a local service at 500 calls/s, and what an unused limit costs.

Run: ``python benchmarks/bench_limit.py`` (aiolimiter from ``pip install -e ".[bench]"``).

1. **Metered calls.** The service is an asyncio TCP echo server on 127.0.0.1; each call opens
   nothing new, it writes a line on one of 16 pooled connections and reads it back. 2,000 calls
   at 500/s with no burst take 4 s at best (3,998 intervals of 2 ms, as one start is free): the
   table shows each contender's wall time against that ideal. Contenders: ``af.Layer(call, 16,
   rate=...)`` and aiolimiter's ``AsyncLimiter`` used by hand with a semaphore of 16 and one
   task per call. Each also runs with the default burst (one second's worth, 500 calls at once,
   then 500/s: 3 s at best).
2. **An unused limit.** The overhead benchmark's shape (three trivial async layers over 200,000
   ints, into a collector) with and without ``limit=af.Limit(rate=1e9)`` on each layer: the
   ratio is what checking a limit that never binds costs per item.

Median of ``--repeat`` runs (default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import async_flow as af
from _harness import add_repeat

CALLS = 2_000
RATE = 500.0
POOL = 16


class Echo:
    """A TCP echo server on 127.0.0.1 and a pool of connections to it."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def __aenter__(self) -> Echo:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        for _ in range(POOL):
            self.pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.pool.empty():
            _, writer = self.pool.get_nowait()
            writer.close()
            await writer.wait_closed()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def call(self, x: int) -> int:
        reader, writer = await self.pool.get()
        try:
            writer.write(b"%d\n" % x)
            await writer.drain()
            return int(await reader.readline())
        finally:
            self.pool.put_nowait((reader, writer))


async def flow(burst: int | None) -> float:
    async with Echo() as echo:
        total = 0

        def add(x: int) -> None:
            nonlocal total
            total += x

        start = time.perf_counter()
        await af.pipeline(
            range(CALLS),
            af.Layer(echo.call, POOL, limit=af.Limit(rate=RATE, burst=burst)),
            af.Layer(add, backend="async"),
            progress=False,
        )
        elapsed = time.perf_counter() - start
        assert total == sum(range(CALLS)), total
        return elapsed


async def by_hand(burst: int | None) -> float:
    from aiolimiter import AsyncLimiter

    # aiolimiter's bucket holds max_rate drops and leaks max_rate per time_period: a bucket of
    # one drop leaking every 2 ms is 500/s with no burst.
    size = burst if burst is not None else RATE
    limiter = AsyncLimiter(size, size / RATE)
    gate = asyncio.Semaphore(POOL)
    async with Echo() as echo:
        results: list[int] = []

        async def one(x: int) -> None:
            async with gate, limiter:
                results.append(await echo.call(x))

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for x in range(CALLS):
                tg.create_task(one(x))
        elapsed = time.perf_counter() - start
        assert sum(results) == sum(range(CALLS))
        return elapsed


N = 200_000


async def a1(x: int) -> int:
    return x + 1


async def a2(x: int) -> int:
    return x * 2


async def a3(x: int) -> int:
    return x - 1


def overhead(limited: bool) -> float:
    total = 0

    async def collect(x: int) -> None:
        nonlocal total
        total += x

    limit = {"limit": af.Limit(rate=1e9)} if limited else {}
    start = time.perf_counter()
    af.run(
        range(N),
        af.Layer(a1, **limit),
        af.Layer(a2, **limit),
        af.Layer(a3, **limit),
        af.Layer(collect),
        progress=False,
    )
    elapsed = time.perf_counter() - start
    assert total == sum((x + 1) * 2 - 1 for x in range(N))
    return elapsed


def median(fn: Callable[[], float], repeat: int) -> tuple[float, list[float]]:
    runs = [fn() for _ in range(repeat)]
    return statistics.median(runs), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_repeat(parser)
    parser.add_argument("--overhead-only", action="store_true", help="only the unused limit")
    args = parser.parse_args()
    if not args.overhead_only:
        metered(args.repeat)
    unused(args.repeat)


def metered(repeat: int) -> None:
    print(f"{CALLS:,} calls to a TCP echo on 127.0.0.1 at {RATE:g}/s, {POOL} at once")
    print(f"{'contender':<46}{'median s':>10}{'ideal s':>9}{'ratio':>8}   runs")
    for burst, ideal in ((1, (CALLS - 1) / RATE), (None, (CALLS - RATE) / RATE)):
        label = "no burst" if burst == 1 else "default burst"
        for name, fn in (("async_flow rate=", flow), ("aiolimiter + Semaphore by hand", by_hand)):
            med, runs = median(lambda fn=fn, burst=burst: asyncio.run(fn(burst)), repeat)  # type: ignore[misc]
            shown = ", ".join(f"{r:.3f}" for r in runs)
            row = f"{name + ' (' + label + ')':<46}{med:>10.3f}{ideal:>9.3f}"
            print(f"{row}{med / ideal:>8.3f}x  {shown}")
    print()


def unused(repeat: int) -> None:
    print(f"unused limit: 3 trivial async layers over {N:,} ints, into a collector")
    # Interleaved, so that a machine busy for a while slows both alike.
    base_runs, lim_runs = [], []
    for _ in range(repeat):
        base_runs.append(overhead(False))
        lim_runs.append(overhead(True))
    base, lim = statistics.median(base_runs), statistics.median(lim_runs)
    print(f"{'no limit':<46}{base:>10.3f}   " + ", ".join(f"{r:.3f}" for r in base_runs))
    print(
        f"{'limit=af.Limit(rate=1e9) on each layer':<46}{lim:>10.3f}   "
        + ", ".join(f"{r:.3f}" for r in lim_runs)
    )
    print(f"ratio {lim / base:.3f}x")


if __name__ == "__main__":
    main()
