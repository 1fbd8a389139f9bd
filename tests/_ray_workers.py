"""Workers for the autoscaled Ray tests, in a module of their own: each actor imports the module
of its function, and this one is light (a test module would pull in pytest and Hypothesis)."""

from __future__ import annotations

import os
import time


class Gated:
    """A stateful worker that logs ``open``/``close`` to a file and holds each item until the
    gate file exists (the actors are processes on this machine, so files reach them)."""

    def __init__(self, log: str, gate: str | None = None) -> None:
        self.log = log
        self.gate = gate
        self._write("open")

    def _write(self, word: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"{word} {id(self)}\n")

    def __call__(self, x: int) -> int:
        if self.gate is not None:
            while not os.path.exists(self.gate):
                time.sleep(0.005)
        return x

    def close(self) -> None:
        self._write("close")


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x
