"""Shared helpers for the benchmarks: time contenders in one process and print ratios."""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Result:
    name: str
    seconds: float
    items: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


def measure(name: str, fn: Callable[[], object], items: int, repeat: int = 3) -> Result:
    """Best-of-``repeat`` wall time of ``fn()`` (a failure is recorded, not raised)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a broken peer is a row, not a crash
            return Result(name, float("nan"), items, f"failed: {type(exc).__name__}: {exc}"[:80])
        times.append(time.perf_counter() - start)
    return Result(name, min(times), items, f"median {statistics.median(times):.3f}s")


def table(title: str, results: list[Result], baseline: str) -> str:
    """A plain-text table: seconds, items/s and speed relative to ``baseline``."""
    base = next(r for r in results if r.name == baseline)
    width = max(len(r.name) for r in results)
    lines = [
        title,
        f"{'contender'.ljust(width)}  {'seconds':>8}  {'items/s':>10}  {'x ' + baseline}",
    ]
    for r in results:
        if r.seconds != r.seconds:  # nan: no time measured
            lines.append(f"{r.name.ljust(width)}  {'-':>8}  {'-':>10}  {'-':>7}  {r.note}")
            continue
        ratio = base.seconds / r.seconds if r.seconds > 0 else float("nan")
        lines.append(
            f"{r.name.ljust(width)}  {r.seconds:8.3f}  {r.rate:10,.0f}  {ratio:6.2f}x  {r.note}"
        )
    return "\n".join(lines)


def measure_isolated(script: str, name: str, items: int, repeat: int, timeout: float) -> Result:
    """:func:`measure` in a child process running ``script --child NAME``, so that a contender
    that hangs is reported as timed out instead of stalling the whole table."""
    try:
        done = subprocess.run(
            [sys.executable, script, "--child", name, "--repeat", str(repeat)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Result(name, float("nan"), items, f"no result within {timeout:.0f}s")
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Result(name, float("nan"), items, f"failed: {done.stderr.strip()[-70:]}")
    return Result(name, data["seconds"], items, data["note"])


def child_main(name: str, fn: Callable[[], object], items: int, repeat: int) -> None:
    """The ``--child`` side of :func:`measure_isolated`: measure and print one JSON line."""
    result = measure(name, fn, items, repeat)
    print(json.dumps({"seconds": result.seconds, "note": result.note}))
