"""What watching a run costs: the same pipeline with no progress view and with a view redrawn
100 times a second (the run's sampler, which reads the counters every 0.1 s, runs in both).

    python benchmarks/progress_overhead.py [items] [rounds]

Rounds alternate between the two so that a busy machine slows both alike; the medians and their
ratio are printed (1.00 = no measurable cost).
"""

from __future__ import annotations

import statistics
import sys
import time

import async_flow as af


async def passthrough(x: int) -> int:
    return x


def double(x: int) -> int:
    return 2 * x


def once(progress: af.ProgressView | bool, items: int) -> float:
    start = time.perf_counter()
    af.run(
        range(items),
        af.Layer(passthrough, 8),
        af.Layer(double, 2),
        af.Layer(passthrough),
        progress=progress,
    )
    return time.perf_counter() - start


def main() -> None:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    snapshots: list[af.ProgressSnapshot] = []
    plain: list[float] = []
    watched: list[float] = []
    for _ in range(rounds):
        plain.append(once(False, items))
        snapshots.clear()
        watched.append(once(af.CallbackProgress(snapshots.append, interval=0.01), items))
    a, b = statistics.median(plain), statistics.median(watched)
    print(f"{items:,} items, {rounds} rounds each (median)")
    print(f"  no progress view          {a:.3f}s  {items / a:,.0f} items/s")
    print(f"  view updated every 10 ms  {b:.3f}s  {items / b:,.0f} items/s")
    print(f"  ratio watched/plain       {b / a:.2f}  ({len(snapshots)} snapshots in the last run)")


if __name__ == "__main__":
    main()
