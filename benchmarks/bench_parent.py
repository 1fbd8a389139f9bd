"""The parent's CPU per item: how many workers one parent process can feed.

One event loop in the parent feeds every worker and reads every result; on a machine with many
cores, that loop saturates before the cores run out. This measures the parent's own CPU time
(user + system of the parent process only, all its threads, from
``resource.getrusage(RUSAGE_SELF)``: the workers' CPU is not in it) per item, for:

* async_flow process and Ray layers, run by ``af.run`` with a collector layer (a plain function)
  and read from ``open_stream`` by a ``for`` loop;
* ``multiprocessing.Pool.imap`` and ``ProcessPoolExecutor.map``, both with a tuned ``chunksize``
  (the items split into 8 chunks per worker), summed by the parent as results come.

Items cost about 20 us and about 2 us of pure-Python CPU in the workers. From each row it prints
the worker count at which the parent saturates: the work per item divided by the parent's CPU
per item (past it, the parent is the limit, whatever the cores). Each contender runs in a fresh
interpreter of its own, ``--repeat`` times there (the median and the spread are printed); Ray is
started before the clock (its driver-side threads count, the raylet's and GCS's processes do not).

    PYTHONPATH=src python benchmarks/bench_parent.py            # process and Ray rows
    PYTHONPATH=src python benchmarks/bench_parent.py --skip ray # without Ray
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import async_flow as af
from _harness import add_repeat, median, spread

WORKERS = 2
SCENARIOS = {  # label: (seconds of work per item, items for process rows, items for Ray rows)
    "20 us": (20e-6, 100_000, 40_000),
    "2 us": (2e-6, 200_000, 100_000),
}


def work(x: int, n: int) -> int:
    """A fixed amount of pure-Python CPU work (``n`` loop turns), deterministic in ``x``."""
    total = x
    for i in range(n):
        total = (total + i) % 1_000_003
    return total


def calibrate(seconds: float) -> int:
    """The loop count that makes ``work`` (with its call) take about ``seconds`` here."""
    n = 100
    while True:
        start = time.perf_counter()
        for x in range(200):
            work(x, n)
        took = (time.perf_counter() - start) / 200
        if took > 200e-6:
            return max(1, round(n * seconds / took))
        n *= 4


def parent_cpu() -> float:
    """User + system CPU seconds of this process (every thread, no child process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- contenders: each runs ``fn`` over ``items`` and returns the sum of the results ---------


def layer(fn: Callable[[int], int], backend: str) -> af.Layer[int, int]:
    options = {"num_cpus": 0.5} if backend == "ray" else {}
    return af.Layer(fn, WORKERS, backend=backend, options=options)


def flow_run(fn: Callable[[int], int], items: range, backend: str) -> int:
    total = 0

    def collect(x: int) -> None:
        nonlocal total
        total += x

    af.run(items, layer(fn, backend), af.Layer(collect), progress=False)
    return total


def flow_for(fn: Callable[[int], int], items: range, backend: str) -> int:
    total = 0
    with af.open_stream(items, layer(fn, backend), progress=False) as results:
        for x in results:
            total += x
    return total


def pool_imap(fn: Callable[[int], int], items: range, backend: str) -> int:
    with multiprocessing.Pool(WORKERS) as pool:
        return sum(pool.imap(fn, items, chunksize=tuned(items)))


def executor_map(fn: Callable[[int], int], items: range, backend: str) -> int:
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as pool:
        return sum(pool.map(fn, items, chunksize=tuned(items)))


def tuned(items: range) -> int:
    return max(1, len(items) // (WORKERS * 8))


CONTENDERS: dict[str, tuple[Callable[[Callable[[int], int], range, str], int], str]] = {
    "async_flow process, af.run + collector": (flow_run, "process"),
    "async_flow process, open_stream + for": (flow_for, "process"),
    "async_flow ray, af.run + collector": (flow_run, "ray"),
    "async_flow ray, open_stream + for": (flow_for, "ray"),
    "Pool.imap tuned chunksize": (pool_imap, "process"),
    "ProcessPoolExecutor.map tuned chunksize": (executor_map, "process"),
}


def child(name: str, loops: int, n_items: int, repeat: int) -> None:
    """Run contender ``name`` ``repeat`` times; print one JSON line of parent CPU per run."""
    run, backend = CONTENDERS[name]
    if backend == "ray":
        import ray

        ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        layer(functools.partial(work, n=1), "ray")  # imports before the clock
    fn = functools.partial(work, n=loops)
    items = range(n_items)
    expected = sum(map(fn, items))  # every run must compute the same sum
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeat):
        start_cpu, start = parent_cpu(), time.perf_counter()
        got = run(fn, items, backend)
        wall.append(time.perf_counter() - start)
        cpu.append(parent_cpu() - start_cpu)
        if got != expected:
            raise SystemExit(f"{name} computed {got}, expected {expected}")
    print(json.dumps({"cpu": cpu, "wall": wall}))


def run_child(name: str, loops: int, n_items: int, repeat: int) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(loops), str(n_items), str(repeat)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode:
        lines = out.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {out.returncode}")
    data: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_repeat(parser)
    parser.add_argument(
        "--skip", action="append", default=[], help="skip contenders whose name has this text"
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the items")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, loops, n_items, repeat = args.child
        child(name, int(loops), int(n_items), int(repeat))
        return
    scale = 10 if args.quick else 1
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()}")
    names = [n for n in CONTENDERS if not any(s in n for s in args.skip)]
    for label, (seconds, n_process, n_ray) in SCENARIOS.items():
        loops = calibrate(seconds)
        print(
            f"\n## ~{label} of work per item, {WORKERS} workers"
            f" ({n_process // scale:,} items, Ray rows {n_ray // scale:,});"
            f" median of {args.repeat} runs, spread in brackets"
        )
        print(f"{'contender':<42} {'parent us/item':>26} {'saturates at':>13} {'wall us/item':>13}")
        for name in names:
            n = (n_ray if CONTENDERS[name][1] == "ray" else n_process) // scale
            try:
                data = run_child(name, loops, n, args.repeat)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{name:<42} failed: {exc}"[:160])
                continue
            per_item = median(data["cpu"]) / n
            cell = f"{per_item * 1e6:.3f} ({spread(data['cpu'], '', 1e6 / n, 3)})"
            print(
                f"{name:<42} {cell:>26} {seconds / per_item:6.1f} workers"
                f" {median(data['wall']) / n * 1e6:13.2f}"
            )


if __name__ == "__main__":
    main()
