"""Checkpointed runs stopped for real, for the resume tests (not a test module).

``python _interrupt_job.py ctrl-c DB N GO``: the pipeline of ``_resume_job`` over ``range(N)``;
the source prints ``ready`` after 200 items and holds until the file GO exists (so the run is
still going when the signal comes); an interruption exits with its status.

``python _interrupt_job.py collector DB OUT N CRASH_AT``: a collector of the user's own appends
each item to OUT; on its CRASH_AT-th call (0: never) the process dies at once (``os._exit``),
before the runtime hears that the call before it returned.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import async_flow as af
from tests._resume_job import fan, stamp


def ctrl_c(db: str, n: int, go: str) -> None:
    def source() -> Iterator[int]:
        for i in range(n):
            if i == 200:
                print("ready", flush=True)
                while not os.path.exists(go):
                    time.sleep(0.005)
            yield i

    try:
        af.run(
            source(),
            af.Layer(fan, 3),
            af.Layer(stamp, 4),
            af.sinks.sqlite(db, commit_every=7, commit_seconds=0.05),
            checkpoint=af.Checkpoint(db, key=int),
        )
    except af.Interrupted as stop:
        sys.exit(stop.exit_code)


def collector(db: str, out: str, n: int, crash_at: int) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    calls = 0

    def deliver(x: int) -> None:
        nonlocal calls
        calls += 1
        if calls == crash_at:
            os._exit(3)
        os.write(fd, f"{x}\n".encode())  # one write per item: nothing buffered is lost

    af.run(
        range(n),
        af.Layer(abs, 2),
        af.Layer(deliver),
        checkpoint=af.Checkpoint(db, key=int),
    )


if __name__ == "__main__":
    if sys.argv[1] == "ctrl-c":
        ctrl_c(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        collector(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
