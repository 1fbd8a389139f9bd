"""Kill the whole run for real (SIGKILL at random points), resume it, and count what is stored."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests import _resume_job

N = 2000


def _child(db: str, n: int, ready_fd: int) -> None:
    _resume_job.job(db, n, ready_fd)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_commits_each_item_once(tmp_path: Path) -> None:
    db = str(tmp_path / "run.db")
    rng = random.Random(20261127)
    # Forked children start at once (the import is already done), so 20 kills stay quick; the
    # last run is a fresh interpreter, as a restart after a crash would be.
    ctx = multiprocessing.get_context("fork")
    killed = 0
    progress = []
    for _ in range(20):
        read_fd, write_fd = os.pipe()
        child = ctx.Process(target=_child, args=(db, N, write_fd))
        child.start()
        os.close(write_fd)
        try:
            assert os.read(read_fd, 1) == b"r"  # the run is reading its source
        finally:
            os.close(read_fd)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed += child.exitcode == -signal.SIGKILL
        with closing(sqlite3.connect(db)) as conn:
            progress.append(conn.execute("SELECT count(*) FROM _af_ledger").fetchone()[0])
    assert killed >= 15, killed
    assert progress == sorted(progress), progress  # a resumed run never loses committed work
    assert 0 < progress[-1] < N, progress  # the kills landed mid-run

    done = subprocess.run(
        [sys.executable, _resume_job.__file__, db, str(N)], capture_output=True, timeout=50
    )
    assert done.returncode == 0, done.stderr.decode()

    with closing(sqlite3.connect(db)) as conn:
        ledger = {k for (k,) in conn.execute("SELECT k FROM _af_ledger")}
        per_item = dict(conn.execute("SELECT source, count(*) FROM results GROUP BY source"))
        pairs = conn.execute("SELECT count(*), count(DISTINCT source || '-' || j) FROM results")
        total, distinct = pairs.fetchone()
        writers = conn.execute("SELECT count(DISTINCT pid) FROM results").fetchone()[0]
    assert ledger == set(range(N))
    # Every item's rows exactly once: random row ids would expose any replay as extra rows.
    assert per_item == {i: i % 4 for i in range(N) if i % 4}
    assert total == distinct == sum(i % 4 for i in range(N))
    assert writers >= 2  # rows from several of the killed runs survived
