"""A pipeline run as a command-line program, for the signal tests (not a test module).

Usage: python signal_pipeline.py OUTPUT SECONDS_PER_ITEM DRAIN_TIMEOUT BACKEND [LOOP]

LOOP is ``asyncio`` (the default) or ``uvloop``: the event loop the run happens on.

Reads an endless source through a slow layer into a collector that appends each item to OUTPUT,
prints "ready" once the first item is collected, "source closed" once the run has closed the
source (the first signal's drain began), and on interruption prints the report as JSON and exits
with the signal's conventional status.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import time
from collections.abc import Iterator

import async_flow as af


def work(delay: float, x: int) -> int:
    time.sleep(delay)
    return x


async def awork(delay: float, x: int) -> int:
    await asyncio.sleep(delay)
    return x


def numbers() -> Iterator[int]:
    """The endless source; says when the run closes it, so that a test can wait for that."""
    try:
        yield from itertools.count()
    finally:
        print("source closed", flush=True)


def main() -> None:
    path, delay, drain_timeout, backend = sys.argv[1:5]
    loop = sys.argv[5] if len(sys.argv) > 5 else "asyncio"
    built: list[str] = []  # the class of the loop the run was given, if one was built here
    loop_factory = None
    if loop == "uvloop":
        import uvloop

        def loop_factory() -> asyncio.AbstractEventLoop:
            made = uvloop.new_event_loop()
            built.append(type(made).__module__)
            return made

    seconds = float(delay)
    with open(path, "w") as out:
        announced = False

        def collect(x: int) -> None:
            nonlocal announced
            out.write(f"{x}\n")
            out.flush()
            if not announced:
                announced = True
                print("ready", flush=True)

        layer = (
            af.Layer(functools.partial(awork, seconds), 4, backend=backend, maxsize=32)
            if backend == "async"
            else af.Layer(functools.partial(work, seconds), 4, backend=backend, maxsize=32)
        )
        try:
            af.run(
                numbers(),
                layer,
                af.Layer(collect, maxsize=32),
                drain_timeout=float(drain_timeout),
                loop_factory=loop_factory,
            )
        except af.Interrupted as stop:
            result = {"drained": stop.drained, "report": stop.report.to_dict(), "loops": built}
            print(json.dumps(result))
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
