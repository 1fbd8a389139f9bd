"""The SQLite collector: table creation, upserts, batched commits, clear errors, collisions."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import async_flow as af
from async_flow.sinks import SQLite


def rows(db: Path, sql: str = "SELECT * FROM results ORDER BY id") -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def test_table_created_from_the_first_result(tmp_path: Path, backend: str) -> None:
    db = tmp_path / "out.db"

    def row(i: int) -> dict[str, Any]:
        return {"id": i, "name": f"n{i}", "score": i / 2, "blob": bytes([i]), "flag": i % 2 == 0}

    report = af.run(range(20), af.Layer(row, 3, backend=backend), af.sinks.sqlite(db))
    assert report.layers[-1].received == 20
    assert rows(db) == [(i, f"n{i}", i / 2, bytes([i]), int(i % 2 == 0)) for i in range(20)]
    types = {r[1]: r[2] for r in rows(db, "PRAGMA table_info(results)")}
    assert types == {
        "id": "INTEGER",
        "name": "TEXT",
        "score": "REAL",
        "blob": "BLOB",
        "flag": "INTEGER",
    }
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]


def test_a_rerun_upserts_instead_of_duplicating(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    af.run(range(5), af.Layer(lambda i: {"id": i, "v": "old"}), af.sinks.sqlite(db))
    af.run(range(3, 8), af.Layer(lambda i: {"id": i, "v": "new"}), af.sinks.sqlite(db))
    assert rows(db) == [(i, "old" if i < 3 else "new") for i in range(8)]


def test_given_schema_and_class_layer_shape(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = af.Layer(
        SQLite,
        args=(db,),
        kwargs={"table": "t", "key": "k", "schema": {"k": "TEXT", "n": "INTEGER NOT NULL"}},
    )
    af.run(["a", "b"], af.Layer(lambda s: {"k": s, "n": len(s)}), sink)
    assert rows(db, "SELECT * FROM t ORDER BY k") == [("a", 1), ("b", 1)]
    assert [r[2] for r in rows(db, "PRAGMA table_info(t)")] == ["TEXT", "INTEGER"]


def test_commits_on_the_size_bound_and_at_close(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = SQLite(db, commit_every=3, commit_seconds=3600)
    try:
        sink({"id": 1})
        sink({"id": 2})
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            rows(db)  # not even the table is committed yet
        sink({"id": 3})
        assert rows(db) == [(1,), (2,), (3,)]
        sink({"id": 4})
        assert rows(db) == [(1,), (2,), (3,)]
    finally:
        sink.close()
    assert rows(db) == [(1,), (2,), (3,), (4,)]


def test_commits_on_the_time_bound(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    # A bound this small has always passed by the next check: every call commits.
    sink = SQLite(db, commit_every=10**6, commit_seconds=1e-9)
    try:
        sink({"id": 1})
        assert rows(db) == [(1,)]
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [
        ("text", TypeError, "a result must be a dict"),
        ({"v": 1}, ValueError, "no value for key 'id'"),
        ({"id": None}, ValueError, "no value for key 'id'"),
        ({"id": 1, "v": [1, 2]}, TypeError, "cannot store column 'v' of row 1: list"),
        ({"id": 1, "other": 2}, ValueError, "unknown column 'other'"),
    ],
)
def test_a_result_it_cannot_store_is_named(
    tmp_path: Path, result: Any, error: type[Exception], message: str
) -> None:
    db = tmp_path / "out.db"
    items: list[Any] = [{"id": 0, "v": 0}, result]
    with pytest.raises(error, match=message) as info:
        af.run(items, af.sinks.sqlite(db, name="store"))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "layer 'store'" in notes
    assert repr(result)[:20] in notes
    # The good row before it, and the table it created, were in the same rolled-back transaction.
    assert rows(db, "SELECT count(*) FROM sqlite_master WHERE name = 'results'") == [(0,)]


def test_a_failing_batch_leaves_nothing_of_itself(tmp_path: Path) -> None:
    """af.batch lists are written all or nothing; earlier commits stay, the open one rolls back."""
    db = tmp_path / "out.db"

    def row(i: int) -> dict[str, Any]:
        return {"id": i, "v": [i] if i == 9 else i}  # item 9 cannot be stored

    with pytest.raises(TypeError, match="cannot store column 'v' of row 9"):
        af.run(
            range(12),
            af.Layer(row, ordered=True),
            af.batch(4),
            af.sinks.sqlite(db, commit_every=1),
        )
    assert rows(db) == [(i, i) for i in range(8)]


def test_keys_that_collide_in_a_run_are_reported(tmp_path: Path, backend: str) -> None:
    db = tmp_path / "out.db"
    with pytest.raises(af.DuplicateKey, match="key 3 was already written in this run"):
        af.run(
            [1, 2, 3, 4, 3],
            af.Layer(lambda i: {"id": i}, backend=backend, ordered=True),
            af.sinks.sqlite(db),
        )


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="table must be a plain SQL identifier"):
        SQLite(tmp_path / "x.db", table="t; DROP TABLE x")
    with pytest.raises(ValueError, match="commit_every must be an int >= 1"):
        SQLite(tmp_path / "x.db", commit_every=0)


def test_a_schema_without_the_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the schema of 'results' lacks key 'id'"):
        SQLite(tmp_path / "x.db", schema={"name": "TEXT"})
    # The ready-made layer refuses it when declared, before any run.
    with pytest.raises(ValueError, match="lacks key 'k'"):
        af.sinks.sqlite(tmp_path / "y.db", key="k", schema={"name": "TEXT"})


def test_an_instance_made_outside_the_run_is_refused(tmp_path: Path) -> None:
    sink = SQLite(tmp_path / "x.db")
    try:
        with pytest.raises(TypeError, match="pass the class"):
            af.run([{"id": 1}], af.Layer(sink))
    finally:
        sink.close()
