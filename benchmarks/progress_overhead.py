"""What watching a run costs: the same pipeline with no progress view, and with each of the
library's views updated every 10 ms (the run's sampler, which reads the counters every 0.1 s,
runs in every variant):

* a callback handed each snapshot (``af.CallbackProgress``);
* the live table (``af.LiveProgress``), drawn by rich on a console that believes it is a
  terminal (ANSI redraws included) and writes to memory, so no real terminal's speed enters;
* the same live table at its default interval (0.2 s), as ``progress=True`` draws it;
* the log lines (``af.LogProgress``), formatted and written by a real ``logging`` handler to
  memory.

    python benchmarks/progress_overhead.py [items] [rounds]

Rounds alternate between the variants so that a busy machine slows them alike; each variant's
median (with the spread of its rounds) and its ratio to the plain run are printed (1.00 = no
measurable cost).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable

from rich.console import Console

import async_flow as af
from _harness import MIN_REPEAT, median, spread

INTERVAL = 0.01


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


class Views:
    """A fresh view of each kind per run, and what each one produced in its last run."""

    def __init__(self) -> None:
        self.snapshots: list[af.ProgressSnapshot] = []
        self.screen = io.StringIO()
        self.log = io.StringIO()
        self.logger = logging.getLogger("progress_overhead")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(logging.StreamHandler(self.log))

    def variants(self) -> dict[str, Callable[[], af.ProgressView | bool]]:
        return {
            "no progress view": lambda: False,
            "callback every 10 ms": self.callback,
            "live table every 10 ms": self.live,
            "live table every 0.2 s": self.live_default,
            "log lines every 10 ms": self.lines,
        }

    def callback(self) -> af.ProgressView:
        self.snapshots.clear()
        return af.CallbackProgress(self.snapshots.append, interval=INTERVAL)

    def live(self, interval: float = INTERVAL) -> af.ProgressView:
        self.screen.seek(0)
        self.screen.truncate()
        console = Console(file=self.screen, force_terminal=True, width=120, height=40)
        return af.LiveProgress(console, interval=interval)

    def live_default(self) -> af.ProgressView:
        """The live table at its default interval, what ``progress=True`` draws."""
        return af.LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=120))

    def lines(self) -> af.ProgressView:
        self.log.seek(0)
        self.log.truncate()
        return af.LogProgress(INTERVAL, logger=self.logger)


def main() -> None:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if rounds < MIN_REPEAT:
        raise SystemExit(f"rounds must be at least {MIN_REPEAT} (figures are medians)")
    views = Views()
    variants = views.variants()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            times[name].append(once(make(), items))
    plain = median(times["no progress view"])
    print(f"{items:,} items, {rounds} rounds each (median, spread in brackets)")
    for name, samples in times.items():
        m = median(samples)
        print(
            f"  {name:24} {m:.3f}s ({spread(samples)})  {items / m:10,.0f} items/s"
            f"  ratio {m / plain:.2f}"
        )
    print(
        f"  last round: {len(views.snapshots)} snapshots, {views.screen.tell():,} characters"
        f" drawn, {views.log.getvalue().count(chr(10))} log lines"
    )


if __name__ == "__main__":
    main()
