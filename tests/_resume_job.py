"""A checkpointed pipeline for the kill tests: ``python _resume_job.py [--zygote] DB N``.

Fan-out with random row ids, so that an item committed twice would show up as extra rows instead
of being hidden by an upsert; a filter (``i % 4 == 0`` yields nothing); threads and tasks; and the
SQLite collector committing every few rows.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import async_flow as af


def fan(i: int) -> Iterator[dict[str, Any]]:
    time.sleep(0.005)
    for j in range(i % 4):
        yield {"id": uuid.uuid4().hex, "source": i, "j": j}


async def stamp(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.0005)
    return {**row, "pid": os.getpid()}


def job(db: str, n: int, ready_fd: int | None = None) -> None:
    """Run the pipeline over ``range(n)``; write a byte to ``ready_fd`` once the source is read."""

    def source() -> Iterator[int]:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
        yield from range(n)

    af.run(
        source(),
        af.Layer(fan, 3),
        af.Layer(stamp, 4),
        af.sinks.sqlite(db, commit_every=7, commit_seconds=0.05),
        checkpoint=af.Checkpoint(db, key=int),
    )


def zygote(db: str, n: int) -> None:
    """Fork one run per ``run`` line on stdin, from this single-threaded, already-imported process.

    Prints ``pid P`` for each child, the child prints ``ready`` once it reads its source, and
    ``exit S`` follows once the child is reaped (``S`` is the raw wait status). ``quit`` ends.
    """
    for line in sys.stdin:
        if line.strip() != "run":
            break
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job(db, n, sys.stdout.fileno())
            except BaseException:  # noqa: BLE001 - reported through the exit status
                code = 1
            finally:
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote(sys.argv[2], int(sys.argv[3]))
    else:
        job(sys.argv[1], int(sys.argv[2]))
