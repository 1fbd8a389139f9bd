"""CPU-bound work on 2 worker processes: async_flow's process backend against its peers.

Every contender computes the same items with the same pure-Python function and returns the same
checksum; the table gives each one's median wall time over ``--repeat`` runs (contenders take
turns, round by round) with the spread of its runs, and its speed as a ratio to serial and to
the *bound*: serial time / workers, from the serial runs of the same invocation (no scheduler
on these cores can beat it). One more row, the *static split*, hands each of two bare processes
half of the items up front, with no IPC at all: a fixed split, which a dynamic scheduler can
beat when one core is slowed during the run. Pool start-up is part of every time, as a user
pays it; imports are not (each contender's happen before its clock starts). Every contender's
results are summed in the parent as they come. A first table times the first result of a
process layer (start-up latency).

    python benchmarks/bench_process.py              # everything (a few minutes on 2 busy cores)
    python benchmarks/bench_process.py --quick      # smaller runs, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import importlib
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import async_flow as af
from _harness import add_repeat, spread

WORKERS = 2
STATIC_SPLIT = "static split: 2 bare processes, no IPC"
BOUND = "bound: serial / 2"


def work(x: int, n: int) -> int:
    """A fixed amount of pure-Python CPU work (``n`` loop turns), deterministic in ``x``."""
    total = x
    for i in range(n):
        total = (total + i) % 1_000_003
    return total


def calibrate(seconds: float) -> int:
    """The loop count that makes ``work`` take about ``seconds`` here, in this process."""
    n = 10_000
    while True:
        start = time.perf_counter()
        for x in range(5):
            work(x, n)
        took = (time.perf_counter() - start) / 5
        if took > 0.002:
            return max(1, round(n * seconds / took))
        n *= 4


# --- contenders ---------------------------------------------------------------------------


def run_serial(fn: Callable[[int], int], items: list[int]) -> int:
    return sum(fn(x) for x in items)


def _half(fn: Callable[[int], int], items: list[int], out: Any, index: int) -> None:
    out[index] = sum(fn(x) for x in items)


def run_static_split(fn: Callable[[int], int], items: list[int]) -> int:
    """Two bare processes, each computing its half; only the two sums come back. Not a bound:
    a half that lands on a core slowed by another program keeps the other core idle at the
    end, which a scheduler handing out work as cores free up avoids."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Array("q", WORKERS)
    size = -(-len(items) // WORKERS)
    procs = [
        ctx.Process(target=_half, args=(fn, items[i * size : (i + 1) * size], out, i))
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return sum(out[:])


def run_async_flow(fn: Callable[[int], int], items: list[int]) -> int:
    """Consumed like the peers: the parent sums the results as they come.

    ``async with`` + ``async for`` keeps the run on this (single) thread, so workers are forked,
    like the peers' default; the sync ``with af.open_stream`` form would run the pipeline on a
    second thread and exec its workers.
    """

    async def consume() -> int:
        total = 0
        async with af.open_stream(items, af.Layer(fn, WORKERS, backend="process")) as results:
            async for x in results:
                total += x
        return total

    return asyncio.run(consume())


def run_pool_imap(fn: Callable[[int], int], items: list[int], chunksize: int) -> int:
    with multiprocessing.Pool(WORKERS) as pool:
        return sum(pool.imap(fn, items, chunksize=chunksize))


def run_executor_map(fn: Callable[[int], int], items: list[int]) -> int:
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as pool:
        return sum(pool.map(fn, items))


def run_mpire(fn: Callable[[int], int], items: list[int]) -> int:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS) as pool:
        return sum(pool.imap_unordered(fn, items))


def run_pypeln(fn: Callable[[int], int], items: list[int]) -> int:
    import pypeln

    return sum(pypeln.process.map(fn, items, workers=WORKERS))


def run_spdl(fn: Callable[[int], int], items: list[int]) -> int:
    from spdl.pipeline import PipelineBuilder

    with concurrent.futures.ProcessPoolExecutor(WORKERS) as executor:
        pipeline = (
            PipelineBuilder()
            .add_source(items)
            .pipe(fn, concurrency=WORKERS, executor=executor)
            .add_sink(64)
            .build(num_threads=1)
        )
        with pipeline.auto_stop():
            return sum(pipeline.get_iterator(timeout=600))


# --- running ------------------------------------------------------------------------------


def contenders(n_items: int) -> Iterator[tuple[str, Callable[..., int], tuple[str, ...]]]:
    """Each contender's name, its run, and the modules it imports on first use (see ``child``)."""
    tuned = max(1, n_items // (WORKERS * 8))
    yield "serial", run_serial, ()
    yield STATIC_SPLIT, run_static_split, ()
    yield "async_flow process", run_async_flow, ("async_flow.backends._process",)
    yield "Pool.imap chunksize=1", functools.partial(run_pool_imap, chunksize=1), ()
    yield (
        f"Pool.imap chunksize={tuned}",
        functools.partial(run_pool_imap, chunksize=tuned),
        (),
    )
    yield "ProcessPoolExecutor.map", run_executor_map, ()
    yield "mpire WorkerPool.imap_unordered", run_mpire, ("mpire",)
    yield "pypeln.process.map", run_pypeln, ("pypeln",)
    yield "SPDL pipe + ProcessPoolExecutor", run_spdl, ("spdl.pipeline",)


class TimedOut(Exception):
    """A run that did not finish within ``--timeout`` seconds."""


def run_isolated(name: str, loops: int, n_items: int, timeout: float) -> tuple[float, int]:
    """Run contender ``name`` once in a fresh interpreter; return its time and checksum.

    Each run starts clean: some peers leave a thread behind in their process (mpire, pypeln,
    SPDL do), and a process with threads must not fork, so whatever ran before would change how
    the next contender starts its workers. The child leads a process group of its own, so that
    a run past ``timeout`` is killed with every worker it started.
    """
    child_cmd = [sys.executable, __file__, "--child", name, str(loops), str(n_items)]
    with subprocess.Popen(
        child_cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimedOut(name) from None
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, child_cmd, stdout, stderr)
    out = stdout.split()
    return float(out[-2]), int(out[-1])


def child(name: str, loops: int, n_items: int) -> None:
    """The ``--child`` side of :func:`run_isolated`: time one run, print seconds and checksum.

    Imports happen before the clock starts, for every contender alike: a program pays them once,
    not per run (and without cached bytecode, as under ``PYTHONDONTWRITEBYTECODE``, an import
    compiles its modules' source, which would weigh on whoever imports lazily).
    """
    run, modules = next((run, mods) for n, run, mods in contenders(n_items) if n == name)
    for module in modules:
        importlib.import_module(module)
    fn = functools.partial(work, n=loops)
    items = list(range(n_items))
    start = time.perf_counter()
    got = run(fn, items)
    print(time.perf_counter() - start, got)


def scenario(
    title: str, per_item: float, n_items: int, repeat: int, skip: set[str], timeout: float
) -> None:
    loops = calibrate(per_item)
    print(f"\n## {title}: {n_items:,} items, ~{per_item * 1e6:g} us each, {WORKERS} workers")
    names = [name for name, _, _ in contenders(n_items) if not any(s in name for s in skip)]
    if "serial" not in names:
        names.insert(0, "serial")  # the bound is measured from it
    samples: dict[str, list[float]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    expected: int | None = None
    # Round by round, every contender once per round, each run in a fresh interpreter: a machine
    # that slows down or speeds up during the benchmark (a shared VM does) moves every
    # contender's median alike, and no run inherits what an earlier one left behind.
    for _ in range(repeat):
        for name in names:
            if name in failed:
                continue
            try:
                seconds, got = run_isolated(name, loops, n_items, timeout)
            except TimedOut:
                failed[name] = f"over {timeout:.0f} s (timed out, not run again)"
                continue
            except subprocess.CalledProcessError as exc:  # a peer that fails is reported
                lines = (exc.stderr or "").strip().splitlines()
                failed[name] = f"failed: {lines[-1] if lines else exc}"
                continue
            samples[name].append(seconds)
            if expected is None:
                expected = got
            elif got != expected:
                raise SystemExit(f"{name} computed {got}, expected {expected}")
    rows: dict[str, list[float]] = {"serial": samples.pop("serial")}
    # The bound of each round: that round's serial time shared by the workers.
    rows[BOUND] = [t / WORKERS for t in rows["serial"]]
    rows.update(samples)
    times = {name: statistics.median(s) for name, s in rows.items() if s}
    serial, bound = times.get("serial"), times.get(BOUND)
    print(f"{'contender':<40} {'median s':>8} {'x serial':>9} {'x bound':>8}  spread")
    for name, s in rows.items():
        if not s:
            print(f"{name:<40} {'-':>8} {'-':>9} {'-':>8}  {failed.get(name, 'no run')}")
            continue
        seconds = times[name]
        vs_serial = f"{serial / seconds:9.2f}" if serial else " " * 9
        vs_bound = f"{bound / seconds:8.2f}" if bound else " " * 8
        note = spread(s) + (" (serial's, halved)" if name == BOUND else "")
        print(f"{name:<40} {seconds:8.3f} {vs_serial} {vs_bound}  {note}")


def first_result_latency(repeat: int) -> None:
    """Seconds from the start of a run to the first result of a 2-worker process layer.

    Measured for both ways workers start: forked (the run starts on a single thread, as with
    ``af.run`` or ``async with af.open_stream`` in a script) and exec'd (the sync ``with
    af.open_stream`` form runs the pipeline on a second thread, so workers are fresh
    interpreters).
    """
    fn = functools.partial(work, n=10)

    def layer() -> af.Layer[int, int]:
        return af.Layer(fn, WORKERS, backend="process")

    async def forked() -> float:
        start = time.perf_counter()
        async with af.open_stream(range(100), layer()) as results:
            async for _ in results:
                return time.perf_counter() - start
        raise AssertionError("no result")

    def execd() -> float:
        start = time.perf_counter()
        with af.open_stream(range(100), layer()) as results:
            next(results)
            return time.perf_counter() - start

    print("\n## start-up: first result of a 2-worker process layer")
    for name, measure in [
        ("forked workers (single-threaded start)", lambda: asyncio.run(forked())),
        ("exec'd workers (sync stream form)", execd),
    ]:
        samples = [measure() for _ in range(repeat)]
        print(f"{name:<40} median {statistics.median(samples):.3f} s ({spread(samples)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    add_repeat(parser)
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds per run; a slower peer is dropped"
    )
    parser.add_argument(
        "--skip", action="append", default=[], help="skip contenders whose name has this text"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, loops, n_items = args.child
        child(name, int(loops), int(n_items))
        return
    scale = 10 if args.quick else 1
    skip = set(args.skip)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()}")
    first_result_latency(5)
    scenario("CPU 2 ms per item", 0.002, 1000 // scale, args.repeat, skip, args.timeout)
    scenario("CPU 20 us per item", 0.00002, 100_000 // scale, args.repeat, skip, args.timeout)


if __name__ == "__main__":
    main()
