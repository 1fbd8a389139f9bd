"""The examples the README points to run, and do what they say."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_sqlite_collector_example_runs_and_resumes(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    script = EXAMPLES / "sqlite_collector.py"
    first = subprocess.run(
        [sys.executable, script, db, "--documents", "300"], capture_output=True, timeout=50
    )
    assert first.returncode == 0, first.stderr.decode()
    assert "300 new documents, 300 in the source" in first.stdout.decode()
    with closing(sqlite3.connect(db)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM documents ORDER BY name")]
        assert conn.execute("SELECT min(words) FROM documents").fetchone() == (20,)
    assert names == [f"doc-{n:06d}" for n in range(300)]
    # Started again with more documents, it does only the new ones.
    again = subprocess.run(
        [sys.executable, script, db, "--documents", "350"], capture_output=True, timeout=50
    )
    assert again.returncode == 0, again.stderr.decode()
    assert "50 new documents, 350 in the source" in again.stdout.decode()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone() == (350,)
