"""Memory under back-pressure: 10 KB items, a collector slower than the source.

Each contender runs in a fresh subprocess for 5,000 and for 50,000 items (``--sizes``); the
table shows the peak RSS of each (the median of ``--repeat`` fresh runs, with their spread) and
the growth between the two. A flat pipeline grows by almost nothing; a submit-everything
ThreadPoolExecutor holds every pending item. The bounded peers are what a careful user writes
instead: an executor whose submissions wait on a semaphore of :data:`BOUND` slots, and
``pypeln.thread`` stages with ``maxsize``.
Run: ``python benchmarks/bench_memory.py`` (``--repeat N``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator

from _harness import add_repeat, median, spread

ITEM = 10_000
BOUND = 64  # items in flight for the bounded peers (async_flow's channels hold about as many)


def source(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield i.to_bytes(4, "little") * (ITEM // 4)


def slow_collect(item: bytes) -> None:
    for _ in range(3):
        item = hashlib.sha256(item).digest() + item[32:]


def run_async_flow(n: int) -> None:
    import async_flow as af

    af.run(source(n), af.Layer(lambda b: b, 4), af.Layer(slow_collect))


def run_executor(n: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(slow_collect, b) for b in source(n)]
        for f in futures:
            f.result()


def run_bounded_executor(n: int) -> None:
    """Submissions wait for one of ``BOUND`` slots, freed when a task is done."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    slots = threading.BoundedSemaphore(BOUND)
    with ThreadPoolExecutor(1) as pool:
        for b in source(n):
            slots.acquire()
            future = pool.submit(slow_collect, b)
            future.add_done_callback(lambda f: (slots.release(), f.result()))


def run_pypeln(n: int) -> None:
    """The same two stages as async_flow's run, each queue bounded by ``maxsize``."""
    import pypeln as pl

    stage = pl.thread.map(lambda b: b, source(n), workers=4, maxsize=BOUND)
    pl.thread.run(pl.thread.each(slow_collect, stage, workers=1, maxsize=BOUND))


CONTENDERS: dict[str, Callable[[int], None]] = {
    "async_flow": run_async_flow,
    "ThreadPoolExecutor.submit": run_executor,
    "executor + semaphore": run_bounded_executor,
    "pypeln.thread maxsize": run_pypeln,
}


def child(name: str, n: int) -> None:
    CONTENDERS[name](n)
    print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def peak_mb(name: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_kb"]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs=2, type=int, default=[5_000, 50_000], help="item counts")
    add_repeat(parser, what="fresh runs per contender and size, the median reported (>= 3)")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    sizes = tuple(args.sizes)
    peaks: dict[str, dict[int, list[float]]] = {name: {n: [] for n in sizes} for name in CONTENDERS}
    # Round by round, every contender and size once per round (a machine whose load changes
    # moves every median alike).
    for _ in range(args.repeat):
        for name in CONTENDERS:
            for n in sizes:
                peaks[name][n].append(peak_mb(name, n))
    print(
        f"peak RSS with {ITEM // 1000} KB items, collector slower than the source"
        f" (median of {args.repeat} fresh runs, spread in brackets)"
    )
    heads = [f"{n:,} items" for n in sizes]
    print(f"{'contender':26} {heads[0]:>26} {heads[1]:>28} {'growth':>9}")
    for name, by_size in peaks.items():
        small, large = median(by_size[sizes[0]]), median(by_size[sizes[1]])
        print(
            f"{name:26} {small:7.1f}MB ({spread(by_size[sizes[0]], '', digits=1)})"
            f" {large:8.1f}MB ({spread(by_size[sizes[1]], '', digits=1)})"
            f" {large - small:7.1f}MB"
        )


if __name__ == "__main__":
    main()
