"""Memory under back-pressure: 10 KB items, a collector slower than the source.

Each contender runs in a fresh subprocess for 10,000 and for 100,000 items; the table shows the
peak RSS of each and the growth between the two. A flat pipeline grows by almost nothing; a
submit-everything ThreadPoolExecutor holds every pending item.
Run: ``python benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
from collections.abc import Iterator

ITEM = 10_000


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


def child(name: str, n: int) -> None:
    {"async_flow": run_async_flow, "ThreadPoolExecutor.submit": run_executor}[name](n)
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
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    print(f"peak RSS with {ITEM // 1000} KB items, collector slower than the source")
    print(f"{'contender':28} {'10k items':>10} {'100k items':>11} {'growth':>9}")
    for name in ("async_flow", "ThreadPoolExecutor.submit"):
        small, large = peak_mb(name, 10_000), peak_mb(name, 100_000)
        print(f"{name:28} {small:8.1f}MB {large:9.1f}MB {large - small:7.1f}MB")


if __name__ == "__main__":
    main()
