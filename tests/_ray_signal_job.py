"""A pipeline with a Ray layer run as a program, for the signal tests (not a test module).

Usage: python _ray_signal_job.py OUTPUT FAST CONNECT

Reads an endless source through two Ray actors into a collector that appends each item to
OUTPUT. The first FAST items are quick, every later one takes ten minutes. Prints ``ready`` once
the first item is collected and ``stopped`` once the source was stopped; on interruption prints
the outcome as JSON and exits with the signal's status.

CONNECT is ``run`` (the run connects to the Ray at ``RAY_ADDRESS`` and disconnects at its end)
or ``own`` (the program calls ``ray.init()`` first, so the run leaves the connection up and the
JSON can say how many of the run's actors were still alive once the run had ended, polled for
up to 30 s: a killed actor takes a moment to be reported dead).
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import time
from collections.abc import Iterator

import async_flow as af


def work(fast: int, x: int) -> int:
    if x >= fast:
        time.sleep(600)
    return x


def alive_actors() -> int:
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    actors = list_actors(
        address=context.gcs_address,
        filters=[("class_name", "=", "_RayWorker"), ("job_id", "=", context.get_job_id())],
        limit=1000,
    )
    return sum(a.state != "DEAD" for a in actors)


def main() -> None:
    import ray

    path, fast, connect = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if connect == "own":
        ray.init(log_to_driver=False)

    def source() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            print("stopped", flush=True)

    with open(path, "w") as out:
        announced = False

        def collect(x: int) -> None:
            nonlocal announced
            out.write(f"{x}\n")
            out.flush()
            if not announced:
                announced = True
                print("ready", flush=True)

        layer = af.Layer(
            functools.partial(work, fast), 2, backend="ray", maxsize=8, options={"num_cpus": 0.5}
        )
        try:
            af.run(source(), layer, af.Layer(collect, maxsize=8))
        except af.Interrupted as stop:
            deadline = time.monotonic() + 30
            alive = None
            while connect == "own" and (alive := alive_actors()) and time.monotonic() < deadline:
                time.sleep(0.1)
            result = {"drained": stop.drained, "report": stop.report.to_dict(), "alive": alive}
            print(json.dumps(result))
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
