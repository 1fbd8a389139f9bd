"""A pipeline run as a command-line program, for the signal tests (not a test module).

Usage: python signal_pipeline.py OUTPUT SECONDS_PER_ITEM DRAIN_TIMEOUT BACKEND [LOOP [MODE [START]]]

LOOP is ``asyncio`` (the default) or ``uvloop``: the event loop the run happens on. MODE is
``caught`` (the default) or ``uncaught``: the program does not catch ``af.Interrupted`` (it has an
``atexit`` handler that prints "atexit ran", to show the usual shutdown still happens). START is
``spawn`` to start process workers as fresh interpreters (by default the backend forks them).

Reads an endless generator, which appends each item it yields to OUTPUT.yielded, through a slow
layer into a collector that appends each item to OUTPUT, prints "ready" once the first item is
collected, "source closed" once the run has closed the source (the first signal's drain began),
and on interruption prints the report as JSON and exits with the signal's conventional status.
"""

from __future__ import annotations

import asyncio
import atexit
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


def main() -> None:
    path, delay, drain_timeout, backend = sys.argv[1:5]
    loop = sys.argv[5] if len(sys.argv) > 5 else "asyncio"
    mode = sys.argv[6] if len(sys.argv) > 6 else "caught"
    options = {"start_method": sys.argv[7]} if len(sys.argv) > 7 else {}
    built: list[str] = []  # the class of the loop the run was given, if one was built here
    loop_factory = None
    if loop == "uvloop":
        import uvloop

        def loop_factory() -> asyncio.AbstractEventLoop:
            made = uvloop.new_event_loop()
            built.append(type(made).__module__)
            return made

    seconds = float(delay)
    with open(path, "w") as out, open(path + ".yielded", "w") as log:

        def numbers() -> Iterator[int]:
            try:
                for i in itertools.count():
                    log.write(f"{i}\n")
                    log.flush()
                    yield i
            finally:
                # The run closed the source: the first signal's drain began.
                print("source closed", flush=True)

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

        def run() -> None:
            af.run(
                numbers(),
                layer,
                af.Layer(collect, maxsize=32),
                drain_timeout=float(drain_timeout),
                loop_factory=loop_factory,
            )

        if mode == "uncaught":
            atexit.register(print, "atexit ran", flush=True)
            run()
            return
        try:
            run()
        except af.Interrupted as stop:
            result = {"drained": stop.drained, "report": stop.report.to_dict(), "loops": built}
            print(json.dumps(result))
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
