"""What a per-item timeout costs trivial work: the same layer with and without ``timeout=``.

    python benchmarks/timeout_overhead.py [items] [rounds]

A timeout is for items that may hang (a network call, a heavy parse), where a few microseconds per
item do not show; this measures the worst case, items that do nothing. Rounds alternate between
the two settings so that a busy machine slows both alike; medians are printed.
"""

from __future__ import annotations

import statistics
import sys
import time

import async_flow as af
from _harness import MIN_REPEAT, spread


async def apassthrough(x: int) -> int:
    return x


def passthrough(x: int) -> int:
    return x


def once(backend: str, timeout: float | None, items: int) -> float:
    fn = apassthrough if backend == "async" else passthrough
    start = time.perf_counter()
    af.run(range(items), af.Layer(fn, 4, backend=backend, timeout=timeout), progress=False)
    return time.perf_counter() - start


def main() -> None:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    if rounds < MIN_REPEAT:
        raise SystemExit(f"rounds must be at least {MIN_REPEAT} (figures are medians)")
    print(f"{items:,} items, {rounds} rounds each (median items/s)")
    for backend in ("async", "thread"):
        plain: list[float] = []
        timed: list[float] = []
        for _ in range(rounds):
            plain.append(once(backend, None, items))
            timed.append(once(backend, 60.0, items))
        a, b = statistics.median(plain), statistics.median(timed)
        print(
            f"  {backend:6}  no timeout {items / a:>10,.0f}   timeout=60 {items / b:>10,.0f}"
            f"   (+{(b - a) / items * 1e6:.1f} us/item; spread {spread(plain)} and {spread(timed)})"
        )


if __name__ == "__main__":
    main()
