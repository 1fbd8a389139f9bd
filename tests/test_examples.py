"""The examples run and produce what they say."""

from __future__ import annotations

import runpy
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_word_lengths_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "words.db"
    sys.path.insert(0, str(EXAMPLES))
    try:
        module = runpy.run_path(str(EXAMPLES / "word_lengths.py"))
        report = module["main"](str(db))
    finally:
        sys.path.remove(str(EXAMPLES))
    expected_words = sum(len(line.split()) for line in module["TEXT"].splitlines()) * 200
    with closing(sqlite3.connect(db)) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM words").fetchone()
    assert rows == expected_words
    assert report.layers[0].emitted == expected_words
    assert "most frequent words: the" in capsys.readouterr().out


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
