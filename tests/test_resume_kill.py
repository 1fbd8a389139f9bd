"""Kill the whole run for real (SIGKILL at random points), resume it, and count what is stored."""

from __future__ import annotations

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


def _start_run(zygote: subprocess.Popen[str]) -> int:
    """Fork a run; return its pid once it is reading its source."""
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    zygote.stdin.write("run\n")
    zygote.stdin.flush()
    pid = None
    ready = False
    for _ in range(2):  # "pid P" and "ready" come from two processes, in either order
        words = zygote.stdout.readline().split()
        if words[0] == "pid":
            pid = int(words[1])
        else:
            assert words == ["ready"], words
            ready = True
    assert pid is not None
    assert ready
    return pid


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_commits_each_item_once(tmp_path: Path) -> None:
    db = str(tmp_path / "run.db")
    rng = random.Random(20261127)
    # The runs are forked by a single-threaded process that has imported everything already, so
    # each starts at once and 20 kills stay quick. The last run is a fresh interpreter, as a
    # restart after a crash would be.
    zygote = subprocess.Popen(
        [sys.executable, _resume_job.__file__, "--zygote", db, str(N)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    killed = 0
    progress = []
    try:
        for _ in range(20):
            pid = _start_run(zygote)
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            words = zygote.stdout.readline().split()
            assert words[0] == "exit", words
            status = int(words[1])
            killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            with closing(sqlite3.connect(db)) as conn:
                progress.append(conn.execute("SELECT count(*) FROM _af_ledger").fetchone()[0])
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
        zygote.stdout.close()
    assert zygote.returncode == 0
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


def _job(*args: str) -> list[str]:
    """The command line of ``_interrupt_job`` (run from the repository, so ``tests`` imports)."""
    return [sys.executable, "-m", "tests._interrupt_job", *args]


def _env() -> dict[str, str]:
    import async_flow

    env = dict(os.environ)
    src = str(Path(async_flow.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(Path(__file__).resolve().parents[1])])
    return env


def _stored(db: str) -> tuple[set[int], dict[int, int], int, int]:
    with closing(sqlite3.connect(db)) as conn:
        ledger = {k for (k,) in conn.execute("SELECT k FROM _af_ledger")}
        per_item = dict(conn.execute("SELECT source, count(*) FROM results GROUP BY source"))
        pairs = conn.execute("SELECT count(*), count(DISTINCT source || '-' || j) FROM results")
        total, distinct = pairs.fetchone()
    return ledger, per_item, total, distinct


@pytest.mark.slow
def test_ctrl_c_then_resume_commits_each_item_once(tmp_path: Path) -> None:
    """A real child run gets SIGINT mid-run: it drains, records what it finished and exits 130;
    the run started again does the rest, and every item's rows are stored exactly once."""
    db, go = str(tmp_path / "run.db"), tmp_path / "go"
    proc = subprocess.Popen(
        _job("ctrl-c", db, str(N), str(go)), stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        go.touch()  # the source goes on only now: the signal is already on its way
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == 130
    drained, _, _, _ = _stored(db)
    assert 200 <= len(drained) < N, len(drained)  # drained what was read, stopped mid-run
    assert drained == set(range(len(drained)))  # the source is read in order, all drained

    done = subprocess.run(
        _job("ctrl-c", db, str(N), str(go)), capture_output=True, timeout=60, env=_env()
    )
    assert done.returncode == 0, done.stderr.decode()
    ledger, per_item, total, distinct = _stored(db)
    assert ledger == set(range(N))
    assert per_item == {i: i % 4 for i in range(N) if i % 4}
    assert total == distinct == sum(i % 4 for i in range(N))


@pytest.mark.slow
def test_a_collector_of_your_own_is_at_least_once_across_a_crash(tmp_path: Path) -> None:
    """The collector returns for some items, then the process dies before the runtime records
    them: those items are delivered again by the run started again, and nothing recorded is."""
    db, out = str(tmp_path / "ledger.db"), tmp_path / "delivered.txt"
    n = 300
    crashed = subprocess.run(
        _job("collector", db, str(out), str(n), "100"), capture_output=True, timeout=60, env=_env()
    )
    assert crashed.returncode == 3, crashed.stderr.decode()
    first = [int(x) for x in out.read_text().split()]
    assert len(first) == len(set(first)) == 99  # 99 calls returned, the 100th died
    with closing(sqlite3.connect(db)) as conn:
        recorded = {k for (k,) in conn.execute("SELECT k FROM _af_ledger")}
    assert recorded <= set(first)  # only what the collector returned for is ever recorded
    returned_not_recorded = set(first) - recorded
    assert returned_not_recorded  # the crash fell between the collector and the ledger

    out.unlink()
    resumed = subprocess.run(
        _job("collector", db, str(out), str(n), "0"), capture_output=True, timeout=60, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    second = [int(x) for x in out.read_text().split()]
    assert sorted(second) == sorted(set(range(n)) - recorded)  # each once, none recorded
    assert returned_not_recorded <= set(second)  # delivered again: at-least-once
    with closing(sqlite3.connect(db)) as conn:
        assert {k for (k,) in conn.execute("SELECT k FROM _af_ledger")} == set(range(n))
