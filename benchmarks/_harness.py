"""Shared helpers for the benchmarks: time contenders in one process and print ratios.

One rule for every figure: a contender runs ``repeat`` times (at least :data:`MIN_REPEAT`),
its figure is the median of those runs, and the spread (fastest to slowest run) is shown beside
it, so that a reader sees how far one noisy run could move it.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_REPEAT = 3


def repeat_count(text: str) -> int:
    """An ``argparse`` type for ``--repeat``: an int of at least :data:`MIN_REPEAT`."""
    value = int(text)
    if value < MIN_REPEAT:
        raise argparse.ArgumentTypeError(
            f"--repeat must be at least {MIN_REPEAT} (figures are medians of >= 3 runs)"
        )
    return value


def add_repeat(parser: argparse.ArgumentParser, default: int = MIN_REPEAT, what: str = "") -> None:
    """Add the common ``--repeat`` option (runs per contender; the median is reported)."""
    parser.add_argument(
        "--repeat",
        type=repeat_count,
        default=default,
        help=what or f"runs per contender, the median reported (>= {MIN_REPEAT})",
    )


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def spread(samples: Sequence[float], unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    """``'fastest-slowest unit, N runs'`` of ``samples`` (their range around the median)."""
    lo, hi = min(samples) * scale, max(samples) * scale
    return f"{lo:.{digits}f}-{hi:.{digits}f}{unit}, {len(samples)} runs"


def summary(samples: Sequence[float], unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    """``'median unit (spread)'``: how every benchmark prints one contender's figure."""
    return f"{median(samples) * scale:.{digits}f}{unit} ({spread(samples, unit, scale, digits)})"


@dataclass
class Result:
    name: str
    seconds: float  # the median of ``samples`` (nan: no time measured)
    items: int
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def spread(self) -> str:
        return spread(self.samples) if self.samples else ""


def _once(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, fn: Callable[[], object], items: int, repeat: int = MIN_REPEAT) -> Result:
    """The median wall time of ``repeat`` runs of ``fn()`` (a failure is recorded, not raised)."""
    times = []
    for _ in range(repeat):
        try:
            times.append(_once(fn))
        except Exception as exc:  # noqa: BLE001 - a broken peer is a row, not a crash
            return Result(name, float("nan"), items, f"failed: {type(exc).__name__}: {exc}"[:80])
    return Result(name, median(times), items, samples=times)


def table(title: str, results: list[Result], baseline: str | Sequence[str]) -> str:
    """A plain-text table: median seconds, items/s, the speed relative to each ``baseline``
    (``2.00x`` = twice as fast as it) and the spread of the runs."""
    bases = [baseline] if isinstance(baseline, str) else list(baseline)
    base = {b: next(r for r in results if r.name == b).seconds for b in bases}
    width = max(len(r.name) for r in results)
    heads = "  ".join(f"{'x ' + chr(65 + i):>7}" for i in range(len(bases)))
    lines = [title]
    lines += [f"  {chr(65 + i)} = {b}" for i, b in enumerate(bases)]
    lines.append(f"{'contender'.ljust(width)}  {'median s':>8}  {'items/s':>10}  {heads}  spread")
    for r in results:
        if r.seconds != r.seconds:  # nan: no time measured
            dashes = "  ".join(f"{'-':>7}" for _ in bases)
            lines.append(f"{r.name.ljust(width)}  {'-':>8}  {'-':>10}  {dashes}  {r.note}")
            continue
        ratios = "  ".join(
            f"{base[b] / r.seconds:6.2f}x" if r.seconds > 0 else f"{'-':>7}" for b in bases
        )
        note = "; ".join(x for x in (r.spread, r.note) if x)
        lines.append(f"{r.name.ljust(width)}  {r.seconds:8.3f}  {r.rate:10,.0f}  {ratios}  {note}")
    return "\n".join(lines)


def measure_isolated(script: str, name: str, items: int, repeat: int, timeout: float) -> Result:
    """:func:`measure` in a child process running ``script --child NAME``, so that a contender
    that hangs is reported as timed out instead of stalling the whole table. A slow one that
    finished some of its runs within ``timeout`` is reported with those (the median of what it
    finished, said so in the note)."""
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
        note = f"only {len(data['samples'])} of {repeat} runs within {timeout:.0f}s"
        return Result(name, median(data["samples"]), items, note, data["samples"])
    data = _last_report(done.stdout)
    if data is None:
        return Result(name, float("nan"), items, f"failed: {done.stderr.strip()[-70:]}")
    if "note" in data:
        return Result(name, float("nan"), items, data["note"])
    return Result(name, median(data["samples"]), items, "", data["samples"])


def _last_report(stdout: str) -> dict[str, Any] | None:
    """The last complete JSON line a child printed (None if there is none)."""
    for line in reversed(stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and ("samples" in data or "note" in data):
            return data
    return None


def child_main(name: str, fn: Callable[[], object], items: int, repeat: int) -> None:
    """The ``--child`` side of :func:`measure_isolated`: one JSON line after each run (every
    run's time so far), so that the parent keeps what a slow contender finished before its
    timeout."""
    times: list[float] = []
    for _ in range(repeat):
        try:
            times.append(_once(fn))
        except Exception as exc:  # noqa: BLE001 - a broken peer is a row, not a crash
            print(json.dumps({"note": f"failed: {type(exc).__name__}: {exc}"[:80]}))
            return
        print(json.dumps({"samples": times}), flush=True)
