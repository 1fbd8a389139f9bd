"""A pipeline run as a command-line program, for the signal tests (not a test module).

Usage: python signal_pipeline.py OUTPUT SECONDS_PER_ITEM DRAIN_TIMEOUT BACKEND [LOOP [START]]

LOOP is ``asyncio`` (the default) or ``uvloop``: the event loop the run happens on. START is
``spawn`` to start process workers as fresh interpreters (the default lets the backend fork).

Reads an endless source through a slow layer into a collector that appends each item to OUTPUT,
prints "ready" once the first item is collected, and on interruption prints the report as JSON
and exits with the signal's conventional status.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import time

import async_flow as af


def work(delay: float, x: int) -> int:
    time.sleep(delay)
    return x


async def awork(delay: float, x: int) -> int:
    await asyncio.sleep(delay)
    return x


def main() -> None:
    path, delay, drain_timeout, backend = sys.argv[1:5]
    loop = sys.argv[5] if len(sys.argv) > 5 else "asyncio"
    options = {"start_method": sys.argv[6]} if len(sys.argv) > 6 else {}
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
            else af.Layer(
                functools.partial(work, seconds), 4, backend=backend, maxsize=32, options=options
            )
        )
        try:
            af.run(
                itertools.count(),
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
