"""The examples run and produce what they say."""

from __future__ import annotations

import runpy
import sqlite3
import sys
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
    with sqlite3.connect(db) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM words").fetchone()
    assert rows == expected_words
    assert report.layers[0].emitted == expected_words
    assert "most frequent words: the" in capsys.readouterr().out
