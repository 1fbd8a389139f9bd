"""The Ray backend against Ray's own ways of running a pool of actors, side by side.

Two CPU workloads (about 2 ms and 20 us of busy work per item) run on the same number of actors,
each holding the same worker object, with the same resource request:

* async_flow: ``af.Layer(Spin, workers, backend="ray")`` (adaptive batches of about 100 ms of
  work, up to 4,096 items, 2 in flight per actor);
* ``ray.util.ActorPool.map_unordered`` over chunks of items as large as async_flow's batches
  (one actor call per chunk: a call per item costs more than a 20 us item, and Ray's own advice
  is to give each task enough work to pay for its scheduling);
* Ray Data ``map_batches`` with an actor pool of the same size
  (``compute=ActorPoolStrategy(size=workers)``) and ``batch_size`` as large as async_flow's
  batches (its docs leave the size to the user, to tune for the hardware);
* the async_flow process backend, when present, for the single-machine comparison.

Times include creating the actors and tearing them down (every contender pays for that), not
starting Ray; each contender starts once the previous one's actors are gone (all CPUs free).
Contenders take turns round by round (``--repeat`` rounds, at least 3); each row gives the
median of its runs, with their spread, and the time to the first result; for the Ray backend,
the speed ratio to the process backend is also given from the first result on (once both have
their workers up), which separates Ray's actor start-up from the per-item cost. Run::

    PYTHONPATH=src python benchmarks/bench_ray.py            # 2 ms x 2,000 and 20 us x 40,000
    PYTHONPATH=src python benchmarks/bench_ray.py --long     # and 2 ms x 20,000
    PYTHONPATH=src python benchmarks/bench_ray.py --quick    # fewer items
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import ray

import async_flow as af
from _harness import add_repeat, spread

BATCH_SECONDS = 0.1  # the work async_flow's Ray layer aims to put in one batch
BATCH_MAX = 4096  # and its most items per batch


def chunk_size(seconds: float) -> int:
    """Items per chunk for the peers: as many as async_flow puts in one batch."""
    return max(1, min(BATCH_MAX, round(BATCH_SECONDS / seconds)))


def spin(seconds: float) -> None:
    """Busy CPU work for ``seconds`` (no sleep: the core is really used)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Spin:
    """The worker object every contender builds once per actor."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, x: int) -> int:
        spin(self.seconds)
        return x


@ray.remote
class SpinActor:
    """The same work as a plain Ray actor, for ActorPool: one call computes a chunk."""

    def __init__(self, seconds: float) -> None:
        self.spin = Spin(seconds)

    def run(self, xs: list[int]) -> list[int]:
        return [self.spin(x) for x in xs]


class SpinBatch:
    """The same work for Ray Data: one ``Spin`` call per row of a batch."""

    def __init__(self, seconds: float) -> None:
        self.spin = Spin(seconds)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for x in batch["id"]:
            self.spin(int(x))
        return batch


class Counter:
    """Counts the results a contender yields and notes when the first one arrived."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.count = 0

    def add(self, k: int = 1) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start
        self.count += k


def _flow(n: int, layer: af.Layer[int, int]) -> Counter:
    """An async_flow run read as a stream on this thread (so process workers are forked)."""

    async def read() -> Counter:
        counter = Counter()
        async with af.open_stream(range(n), layer) as out:
            async for _ in out:
                counter.add()
        return counter

    return asyncio.run(read())


def run_async_flow(n: int, seconds: float, workers: int, num_cpus: float) -> Counter:
    layer = af.Layer(Spin, workers, backend="ray", args=(seconds,), options={"num_cpus": num_cpus})
    return _flow(n, layer)


def run_process(n: int, seconds: float, workers: int, num_cpus: float) -> Counter:
    return _flow(n, af.Layer(Spin, workers, backend="process", args=(seconds,)))


def run_actor_pool(n: int, seconds: float, workers: int, num_cpus: float) -> Counter:
    from ray.util import ActorPool

    counter = Counter()
    actors = [SpinActor.options(num_cpus=num_cpus).remote(seconds) for _ in range(workers)]
    try:
        pool = ActorPool(actors)
        size = chunk_size(seconds)
        chunks = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        for done in pool.map_unordered(lambda a, xs: a.run.remote(xs), chunks):
            counter.add(len(done))
        return counter
    finally:
        for actor in actors:
            ray.kill(actor)


def run_ray_data(n: int, seconds: float, workers: int, num_cpus: float) -> Counter:
    counter = Counter()
    ds = ray.data.range(n).map_batches(
        SpinBatch,
        fn_constructor_args=(seconds,),
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
        batch_size=chunk_size(seconds),
    )
    for batch in ds.iter_batches(batch_size=None):
        counter.add(len(batch["id"]))
    return counter


def actor_start(workers: int, num_cpus: float) -> float:
    """Seconds until ``workers`` fresh actors (no work, no library) answer their first call."""
    start = time.perf_counter()
    actors = [Bare.options(num_cpus=num_cpus).remote() for _ in range(workers)]
    try:
        ray.get([a.ping.remote() for a in actors])
        return time.perf_counter() - start
    finally:
        for actor in actors:
            ray.kill(actor)


@ray.remote
class Bare:
    """An actor that does nothing: what Ray's start-up costs alone."""

    def ping(self) -> int:
        return 1


def has_process_backend() -> bool:
    try:
        af.backends.get_backend("process")
    except ModuleNotFoundError:
        return False
    return True


class Timing(NamedTuple):
    total: float  # seconds, actor start-up and tear-down included
    first: float  # seconds until the first result

    @property
    def steady(self) -> float:
        """Seconds from the first result to the end: the run once its workers are up."""
        return self.total - self.first


def settle(timeout: float = 30.0) -> None:
    """Wait until the cluster has every CPU free again: actors are killed asynchronously (Ray
    Data's last of all), and a contender must not wait for its predecessor's to go."""
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.05)


def measure(fn: Callable[[int, float, int, float], Counter], *args: Any) -> Timing:
    settle()
    start = time.perf_counter()
    counter = fn(*args)
    elapsed = time.perf_counter() - start
    if counter.count != args[0] or counter.first is None:
        raise AssertionError(f"{fn.__name__} processed {counter.count} of {args[0]} items")
    return Timing(elapsed, counter.first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tenth of the items")
    parser.add_argument("--long", action="store_true", help="add 2 ms x 20,000 items")
    parser.add_argument("--skip-data", action="store_true", help="leave Ray Data out")
    add_repeat(parser, what="rounds over every contender, the median reported (>= 3)")
    opts = parser.parse_args()
    scale = 0.1 if opts.quick else 1.0
    workloads = [("2 ms", 0.002, int(2000 * scale))]
    if opts.long:
        # The same work ten times longer: what is left once actor start-up is spread thin.
        workloads.append(("2 ms", 0.002, int(20000 * scale)))
    workloads.append(("20 us", 0.00002, int(40000 * scale)))
    # Half a CPU each: Ray Data also needs a free CPU for its read tasks, or it waits forever.
    num_cpus = 0.5
    ray.init(
        address="local",
        num_cpus=max(opts.workers, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
    )
    contenders: list[tuple[str, Callable[[int, float, int, float], Counter]]] = [
        ("async_flow ray", run_async_flow),
        ("ActorPool.map_unordered, chunks", run_actor_pool),
    ]
    if not opts.skip_data:
        contenders.append(("Ray Data map_batches", run_ray_data))
    if has_process_backend():
        contenders.append(("async_flow process", run_process))
    print(f"{opts.workers} actors, python {sys.version.split()[0]}, ray {ray.__version__}")
    starts = sorted(actor_start(opts.workers, num_cpus) for _ in range(3))
    print(
        f"Ray's own start-up: {opts.workers} bare actors answer a first call after"
        f" {starts[1]:.2f} s (median of 3); every Ray contender pays it once per run"
    )
    try:
        for label, seconds, n in workloads:
            print(
                f"\n{label} of CPU per item, {n} items (ideal {n * seconds / opts.workers:.2f} s),"
                f" peers' chunks and batches of {chunk_size(seconds)} items,"
                f" median of {opts.repeat} rounds"
            )
            runs: dict[str, list[Timing]] = {name: [] for name, _ in contenders}
            # Round by round, so that a load coming and going hits every contender alike.
            for _ in range(opts.repeat):
                for name, fn in contenders:
                    runs[name].append(measure(fn, n, seconds, opts.workers, num_cpus))
            total = {name: statistics.median(t.total for t in ts) for name, ts in runs.items()}
            first = {name: statistics.median(t.first for t in ts) for name, ts in runs.items()}
            steady = {name: statistics.median(t.steady for t in ts) for name, ts in runs.items()}
            ours = total["async_flow ray"]
            local = total.get("async_flow process")
            for name, ts in runs.items():
                vs_local = ""
                if local:
                    vs_local = f"  {local / total[name]:5.2f}x process speed"
                    if name == "async_flow ray":
                        # Both stream results from their first batch on (Ray Data delivers in
                        # blocks, ActorPool has no start-up of its own to compare).
                        ratio = steady["async_flow process"] / steady[name]
                        vs_local += f", {ratio:4.2f}x after the first result"
                print(
                    f"  {name:<32} {total[name]:7.2f} s ({spread([t.total for t in ts], digits=2)})"
                    f"  first result {first[name]:5.2f} s"
                    f"  {1e6 * total[name] / n:8.1f} us/item"
                    f"  {total[name] / ours:5.2f}x async_flow ray's time{vs_local}"
                )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
