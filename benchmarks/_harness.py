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
from typing import Any


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
    that hangs is reported as timed out instead of stalling the whole table. A slow one that
    finished some of its runs within ``timeout`` is reported with those."""
    try:
        done = subprocess.run(
            [sys.executable, script, "--child", name, "--repeat", str(repeat)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or ""
        data = _last_report(out.decode() if isinstance(out, bytes) else out)
        if data is None:
            note = f"no result within {timeout:.0f}s (under {items / timeout:,.0f} items/s)"
            return Result(name, float("nan"), items, note)
        note = f"{data['runs']} of {repeat} runs within {timeout:.0f}s, {data['note']}"
        return Result(name, data["seconds"], items, note)
    data = _last_report(done.stdout)
    if data is None:
        return Result(name, float("nan"), items, f"failed: {done.stderr.strip()[-70:]}")
    return Result(name, data["seconds"], items, data["note"])


def _last_report(stdout: str) -> dict[str, Any] | None:
    """The last complete JSON line a child printed (None if there is none)."""
    for line in reversed(stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "seconds" in data:
            return data
    return None


def child_main(name: str, fn: Callable[[], object], items: int, repeat: int) -> None:
    """The ``--child`` side of :func:`measure_isolated`: one JSON line after each run (best and
    median so far), so that the parent keeps what a slow contender finished before its timeout."""
    times: list[float] = []
    for _ in range(repeat):
        result = measure(name, fn, items, 1)
        if result.seconds != result.seconds:  # nan: the run failed
            print(json.dumps({"seconds": result.seconds, "note": result.note, "runs": 0}))
            return
        times.append(result.seconds)
        note = f"median {statistics.median(times):.3f}s"
        print(json.dumps({"seconds": min(times), "note": note, "runs": len(times)}), flush=True)
