"""What a checkpoint costs a run: the same pipelines without and with ``checkpoint=``.

    python benchmarks/checkpoint_overhead.py [items] [rounds]

Two pipelines: a map layer into the SQLite collector (the ledger rides in the collector's
transactions), and a map layer into a trivial collector (the runtime writes the ledger itself).
Rounds alternate between the variants so that a busy machine slows them alike; medians and their
ratio are printed (1.00 = no measurable cost).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import async_flow as af
from _harness import MIN_REPEAT, spread


def row(i: int) -> dict[str, int]:
    return {"id": i, "v": 2 * i}


def discard(r: Any) -> None:
    return None


def once(items: int, sink: bool, checkpoint: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        last = af.sinks.sqlite(db) if sink else af.Layer(discard)
        start = time.perf_counter()
        af.run(
            range(items),
            af.Layer(row, 2),
            last,
            progress=False,
            checkpoint=af.Checkpoint(db, key=int) if checkpoint else None,
        )
        return time.perf_counter() - start


def main() -> None:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if rounds < MIN_REPEAT:
        raise SystemExit(f"rounds must be at least {MIN_REPEAT} (figures are medians)")
    for sink in (True, False):
        plain: list[float] = []
        keyed: list[float] = []
        for _ in range(rounds):
            plain.append(once(items, sink, False))
            keyed.append(once(items, sink, True))
        p, k = statistics.median(plain), statistics.median(keyed)
        label = "SQLite collector" if sink else "trivial collector"
        print(
            f"{label:18}  plain {items / p:10,.0f} items/s   checkpointed {items / k:10,.0f}"
            f" items/s   ratio {k / p:.2f}   (spread {spread(plain)} and {spread(keyed)})"
        )


if __name__ == "__main__":
    main()
