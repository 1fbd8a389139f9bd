"""Autoscaled layers against the best fixed worker counts, side by side in one run.

The pipeline: a cheap IO layer (an ``asyncio.sleep`` per item, async backend), a CPU layer
(a busy loop of 2 ms of CPU time per item, process backend), and a one-worker collector. Its
per-item costs are what a user would not know in advance.

- ``steady``: every item costs 5 ms of IO and 2 ms of CPU.
- ``shifting``: the first half of the items costs 10 ms of IO and 1 ms of CPU, the second half
  2 ms of IO and 3 ms of CPU, so the worker counts that suit the start do not suit the end.

Each pipeline runs once per fixed ``(io workers, cpu workers)`` pair of a small grid, and once with
``af.Auto()`` on both layers. The table gives throughput, the ratio to the best fixed pair, and the
CPU utilisation of the process tree (this process and its workers, measured with psutil) over the
whole run and over its second half (when the CPU layer is the bottleneck and the autoscaler has
settled). Run::

    python benchmarks/bench_autoscale.py            # about two minutes on 2 idle cores
    python benchmarks/bench_autoscale.py --quick    # fewer items, smaller grid

Every configuration runs once per round; ``--repeat`` rounds (at least 3) give each one's median
throughput (its median run's other columns) and the spread of its runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

import async_flow as af
from _harness import add_repeat
from async_flow._autoscale import available_cpus

Item = tuple[int, float, float]  # (index, IO seconds, CPU seconds)


def spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time (not wall time: fair on a busy machine)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def io_step(item: Item) -> Item:
    await asyncio.sleep(item[1])
    return item


def cpu_step(item: Item) -> int:
    spin(item[2])
    return item[0]


class Sink:
    """The collector: counts what arrives."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, index: int) -> None:
        self.count += 1


def steady(n: int) -> Iterator[Item]:
    for i in range(n):
        yield (i, 0.005, 0.002)


def shifting(n: int) -> Iterator[Item]:
    for i in range(n):
        yield (i, 0.010, 0.001) if i < n // 2 else (i, 0.002, 0.003)


class CpuMeter:
    """Samples the CPU seconds used by this process and its children, in a thread."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._seen: dict[int, float] = {}
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._main, name="bench:cpu-meter", daemon=True)

    def _total(self) -> float:
        procs = [self._me]
        with contextlib.suppress(psutil.Error):
            procs += self._me.children(recursive=True)
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue  # exited: its last sample stays counted
            self._seen[p.pid] = t.user + t.system
        return sum(self._seen.values())

    def _main(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._total()))
            self._stop.wait(self.period)
        self.samples.append((time.perf_counter(), self._total()))

    def __enter__(self) -> CpuMeter:
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.system = psutil.cpu_percent(None) / 100

    def utilisation(self, cpus: int, start_share: float = 0.0) -> float:
        """Share of ``cpus`` cores the tree used, from ``start_share`` of the run to its end."""
        (t0, _), (t1, c1) = self.samples[0], self.samples[-1]
        since = t0 + start_share * (t1 - t0)
        ts, cs = next((t, c) for t, c in self.samples if t >= since)
        return (c1 - cs) / ((t1 - ts) * cpus) if t1 > ts else 0.0


@dataclass
class Result:
    pipeline: str
    config: str
    items: int
    seconds: float
    cpu_all: float
    cpu_late: float
    system: float
    report: af.Report | None = None

    @property
    def cpu_busy(self) -> float:
        """How busy the CPU layer's workers were (from the run's own report)."""
        return self.report.layer("cpu").busy_fraction if self.report is not None else 0.0

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def run_once(name: str, n: int, io: Any, cpu: Any, config: str) -> Result:
    source = steady(n) if name == "steady" else shifting(n)
    sink = Sink()
    cpus = available_cpus()
    with CpuMeter() as meter:
        report = af.run(
            source,
            af.Layer(io_step, io, name="io"),
            af.Layer(cpu_step, cpu, backend="process", name="cpu"),
            af.Layer(sink, 1, name="collect"),
        )
    assert sink.count == n, (sink.count, n)
    return Result(
        name,
        config,
        n,
        report.elapsed,
        meter.utilisation(cpus),
        meter.utilisation(cpus, 0.5),
        meter.system,
        report,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=None, help="items per run")
    parser.add_argument("--quick", action="store_true", help="fewer items, smaller grid")
    parser.add_argument("--pipelines", default="steady,shifting")
    add_repeat(parser, what="rounds over all configurations, the median run reported (>= 3)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    cpus = available_cpus()
    n = args.items or (1000 if args.quick else 2000)
    io_grid = (8, 32) if args.quick else (4, 16, 64)
    cpu_grid = sorted({1, cpus})
    print(
        f"{cpus} CPUs available; {n} items per run; grid io={io_grid} cpu={tuple(cpu_grid)};"
        f" median of {args.repeat} interleaved rounds"
    )
    header = f"{'pipeline':9} {'workers':>16} {'items/s':>8} {'vs best':>8}"
    header += f" {'cpu all':>8} {'cpu 2nd half':>12} {'system':>7} {'cpu layer busy':>14}"
    header += "  items/s spread"
    for name in args.pipelines.split(","):
        configs: list[tuple[Any, Any, str]] = [
            (io, cpu, f"io={io} cpu={cpu}") for io in io_grid for cpu in cpu_grid
        ]
        configs.append((af.Auto(), af.Auto(), "Auto()"))
        # Rounds over every configuration: a load that comes and goes on the machine then hits
        # every configuration alike. Each one is reported by its median run.
        runs: dict[str, list[Result]] = {label: [] for _, _, label in configs}
        for _ in range(args.repeat):
            for io, cpu, label in configs:
                runs[label].append(run_once(name, n, io, cpu, label))
        kept = {label: sorted(rs, key=lambda r: r.rate)[len(rs) // 2] for label, rs in runs.items()}
        rates = {label: [r.rate for r in rs] for label, rs in runs.items()}
        auto = kept.pop("Auto()")
        results = list(kept.values())
        best = max(results, key=lambda r: r.rate)
        print()
        print(header)
        for r in [*results, auto]:
            mark = " *" if r is best else ""
            print(
                f"{r.pipeline:9} {r.config:>16} {r.rate:8.0f} {r.rate / best.rate:8.2f}"
                f" {r.cpu_all:8.0%} {r.cpu_late:12.0%} {r.system:7.0%}"
                f" {r.cpu_busy:14.0%}"
                f"  {min(rates[r.config]):.0f}-{max(rates[r.config]):.0f}{mark}"
            )
        print(
            f"{name}: Auto() reaches {auto.rate / best.rate:.0%} of the best fixed pair"
            f" ({best.config}); process-tree CPU {auto.cpu_late:.0%} in its second half"
        )
        assert auto.report is not None
        for layer in ("io", "cpu"):
            steps = auto.report.workers_over_time(layer)
            trail = " ".join(f"{t:.1f}s:{w}" for t, w in steps)
            print(f"  {layer} workers over time: {trail}")


if __name__ == "__main__":
    main()
