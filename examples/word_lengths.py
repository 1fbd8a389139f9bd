"""The classic shape: a generator, a scaled middle layer, a collector committing to SQLite.

The source reads lines, eight threads turn each line into per-word rows, and a single collector
(a class, so it opens its connection once) commits them to SQLite in transactions of 500 rows.

    python examples/word_lengths.py [DB]
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing

import async_flow as af

TEXT = """\
Over the past couple of posts I explored basic parallelism in Python.
The data pipelines I have usually involve one or a few generators that produce data.
Data is then consumed by workers that perform some interesting processing.
Finally a collector commits the results to a database and reports at the end.
"""


def read_lines(repeat: int = 200) -> Iterator[tuple[int, str]]:
    """The upper class: produce work items (here, numbered lines of text)."""
    number = 0
    for _ in range(repeat):
        for line in TEXT.splitlines():
            number += 1
            yield number, line


def words(item: tuple[int, str]) -> Iterator[tuple[int, int, str, int]]:
    """The middle class: one row per word (a generator: fan-out)."""
    number, line = item
    for position, word in enumerate(line.split()):
        yield number, position, word.strip(".,").lower(), len(word.strip(".,"))


class Save:
    """The lower class: commit rows to SQLite, one connection per worker, 500 rows per commit."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS words"
            " (line INTEGER, position INTEGER, word TEXT, length INTEGER,"
            " PRIMARY KEY (line, position))"
        )

    def __call__(self, rows: list[tuple[int, int, str, int]]) -> int:
        with self.db:  # one transaction per batch
            self.db.executemany("INSERT OR REPLACE INTO words VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def close(self) -> None:
        self.db.close()


def main(path: str = "words.db") -> af.Report:
    report = af.run(
        read_lines(),
        af.Layer(words, 8),
        af.batch(500, timeout=1.0),
        af.Layer(Save, args=(path,)),
    )
    print(report)
    # A connection's own `with` ends a transaction but does not close it: closing() does.
    with closing(sqlite3.connect(path)) as db:
        top = db.execute(
            "SELECT word, COUNT(*) FROM words GROUP BY word ORDER BY 2 DESC, 1 LIMIT 5"
        ).fetchall()
    print("most frequent words:", ", ".join(f"{w} ({n})" for w, n in top))
    return report


if __name__ == "__main__":
    main(*sys.argv[1:2])
