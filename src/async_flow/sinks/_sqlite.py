"""The SQLite collector: batched, upserting writes into one table of a SQLite database.

One instance owns one ``sqlite3`` connection in WAL mode (readers never block the writer, and a
killed process leaves the last committed transaction intact). Rows are written inside an open
transaction that is committed every ``commit_every`` calls or ``commit_seconds`` seconds, whichever
comes first, and when the sink is closed at the end of the run: one fsync per batch instead of one
per row. Each call runs inside a savepoint, so a call that fails half-way (one bad row of a list)
leaves nothing of itself behind.

Rows are upserted by ``key``: an item replayed after a crash overwrites its own row instead of
adding a second one. Two *different* items with the same key are a collision and raise
:class:`~async_flow.DuplicateKey`: within a run (tracked in a temporary table), and across runs
when a checkpoint records which source item wrote each row.

Under a :class:`~async_flow.Checkpoint` whose path is this database, the runtime hands the sink
envelopes that carry their source item's key. The sink holds a source item's rows until the runtime
marks one of its envelopes as the last, then writes them together with the item's ledger row in
the same transaction (see ``async_flow._checkpoint``). If a call fails, the run stops and the open
transaction is rolled back, so the database only ever holds whole transactions.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import Any

from .._errors import DuplicateKey
from .._keyed import LEDGER_TABLE, Keyed
from .._layer import Layer
from .._runtime import short_repr

__all__ = ("SQLite", "sqlite")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQL_TYPES: dict[type, str] = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT"}
_STORABLE = (type(None), int, float, str, bytes)
#: The hidden column that records which source item wrote a row (only under a checkpoint).
SOURCE_COLUMN = "_af_source"


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"SQLite sink: {what} must be a plain SQL identifier, got {name!r}")
    return name


def _quote(name: str) -> str:
    return '"' + name + '"'


def _validate(
    table: str,
    key: str,
    schema: Mapping[str, str] | None,
    commit_every: int,
    commit_seconds: float,
) -> None:
    _check_name("table", table)
    _check_name("key", key)
    if schema is not None:
        for column in schema:
            _check_name("column", column)
        if key not in schema:
            raise ValueError(f"SQLite sink: the schema of {table!r} lacks key {key!r}")
    if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
        raise ValueError(f"SQLite sink: commit_every must be an int >= 1, got {commit_every!r}")
    if not commit_seconds > 0:
        raise ValueError(f"SQLite sink: commit_seconds must be > 0, got {commit_seconds!r}")


class SQLite:
    """A collector that upserts dict results into a SQLite table, in batched transactions.

    Use it as the last layer, one worker (SQLite has one writer at a time)::

        af.run(source, af.Layer(work, 8), af.sinks.sqlite("out.db", table="results", key="id"))

    A class layer builds one instance per worker on that worker's own thread and closes it at the
    end, so ``af.Layer(af.sinks.SQLite, args=("out.db",), kwargs={"key": "id"})`` is the same.

    Each result is a mapping (one row) or a list of mappings (several rows, written all or
    nothing: the shape :func:`async_flow.batch` produces). The table is created from the first
    row's keys and value types unless ``schema`` (column name -> SQL type) is given; the ``key``
    column is its primary key. Values must be ``None``, ``bool``, ``int``, ``float``, ``str`` or
    ``bytes``; anything else, a missing key or an unknown column raises a ``TypeError`` or
    ``ValueError`` that names the column and the row (the runtime adds the layer and the item).

    Under a :class:`~async_flow.Checkpoint` on the same database, the rows of one source item
    are held in memory until its last one arrives, then written with its ledger entry at once.

    Args:
        path: the database file (created if missing).
        table: the table the rows go to.
        key: the primary-key column; a row with a key already stored replaces it (upsert).
        schema: ``{"column": "SQL TYPE", ...}`` to create the table with, instead of inferring it.
        commit_every: commit after this many calls.
        commit_seconds: commit once the open transaction is this old (checked on each call).
        busy_timeout: seconds to wait for another connection's write lock before failing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str = "results",
        key: str = "id",
        *,
        schema: Mapping[str, str] | None = None,
        commit_every: int = 500,
        commit_seconds: float = 1.0,
        busy_timeout: float = 30.0,
    ) -> None:
        _validate(table, key, schema, commit_every, commit_seconds)
        self.table = table
        self.key = key
        self.path = os.fspath(path)
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        self._thread = threading.get_ident()
        self._columns: list[str] | None = None
        self._tracks_source = False
        self._insert: dict[tuple[str, ...], str] = {}
        self._pending = 0
        self._opened_at = 0.0
        self._failed = False
        self._held: dict[Any, list[Any]] = {}
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # Keys written by this instance: a second write of one is a collision, not a replay.
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS _af_seen (k PRIMARY KEY)")
            if schema is not None:
                self._create({_check_name("column", c): str(t) for c, t in schema.items()})
            else:
                self._load_columns()
        except BaseException:
            self._conn.close()
            raise

    # --- the table -------------------------------------------------------------------------

    def _load_columns(self) -> None:
        info = self._conn.execute(f"PRAGMA table_info({_quote(self.table)})").fetchall()
        if info:
            names = [row[1] for row in info]
            self._tracks_source = SOURCE_COLUMN in names
            self._columns = [n for n in names if n != SOURCE_COLUMN]
            if self.key not in self._columns:
                raise ValueError(
                    f"SQLite sink: table {self.table!r} exists without the key column"
                    f" {self.key!r} (columns: {', '.join(self._columns)})"
                )

    def _create(self, types: Mapping[str, str], *, source: bool = False) -> None:
        if self.key not in types:
            raise ValueError(f"SQLite sink: the schema of {self.table!r} lacks key {self.key!r}")
        cols = [f"{_quote(c)} {t}".rstrip() for c, t in types.items()]
        if source:
            cols.append(f"{_quote(SOURCE_COLUMN)}")
        cols.append(f"PRIMARY KEY ({_quote(self.key)})")
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {_quote(self.table)} ({', '.join(cols)})")
        self._load_columns()

    def _infer(self, row: Mapping[str, Any], source: bool) -> None:
        types = {}
        for col, value in row.items():
            _check_name("column", col)
            types[col] = _SQL_TYPES.get(type(value), "BLOB" if isinstance(value, bytes) else "")
        self._create(types, source=source)

    # --- writing ---------------------------------------------------------------------------

    def __call__(self, result: Any) -> None:
        """Write one result (a row, or a list of rows) into the open transaction."""
        if threading.get_ident() != self._thread:
            raise TypeError(
                "SQLite sink: this instance was made outside the run; pass the class,"
                " af.Layer(af.sinks.SQLite, args=(path,)), or use af.sinks.sqlite(path), so that"
                " each worker opens its own connection and the run closes (commits) it"
            )
        self._failed = True  # until this call has succeeded
        self._store(result)
        self._failed = False

    def _store(self, result: Any) -> None:
        source: Any = None
        final = False
        if isinstance(result, Keyed):
            source, final, result = result.key, result.final, result.value
        rows = list(result) if isinstance(result, list | tuple) else [result]
        for row in rows:
            self._check(row)
        if source is not None:
            # A source item's rows are held until its last one arrives, then written with its
            # ledger entry in one savepoint: an item is in a commit entirely or not at all.
            held = self._held.pop(source, None) if final else self._held.setdefault(source, [])
            if not final:
                assert held is not None
                held.extend(rows)
                return
            if held:
                rows = held + rows
        conn = self._conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            self._opened_at = time.monotonic()
        had_table = self._columns is not None
        if len(rows) == 1 and had_table:
            # One row is one upsert, atomic by itself (``_write`` undoes its own bookkeeping). The
            # ledger insert after it cannot conflict; if it fails anyway, so does the run, and the
            # open transaction is rolled back at close.
            self._write(rows[0], source)
            if final:
                conn.execute(f"INSERT OR IGNORE INTO {LEDGER_TABLE} (k) VALUES (?)", (source,))
            self._count_and_commit()
            return
        conn.execute("SAVEPOINT af_call")
        try:
            for row in rows:
                self._write(row, source)
            if final:
                conn.execute(f"INSERT OR IGNORE INTO {LEDGER_TABLE} (k) VALUES (?)", (source,))
        except BaseException:
            conn.execute("ROLLBACK TO af_call")
            conn.execute("RELEASE af_call")
            if not had_table:  # the table this call created is gone with it
                self._columns = None
                self._insert.clear()
            raise
        conn.execute("RELEASE af_call")
        self._count_and_commit()

    def _count_and_commit(self) -> None:
        self._pending += 1
        if (
            self._pending >= self.commit_every
            or time.monotonic() - self._opened_at >= self.commit_seconds
        ):
            self.commit()

    def _check(self, row: Any) -> None:
        if not isinstance(row, Mapping):
            raise TypeError(
                f"SQLite sink {self.table!r}: a result must be a dict (one row) or a list of"
                f" dicts, got {type(row).__name__}: {short_repr(row)}"
            )
        key = row.get(self.key)
        if key is None:
            raise ValueError(
                f"SQLite sink {self.table!r}: row has no value for key {self.key!r}:"
                f" {short_repr(row)}"
            )
        for col, value in row.items():
            if not isinstance(value, _STORABLE):
                raise TypeError(
                    f"SQLite sink {self.table!r}: cannot store column {col!r} of row {key!r}:"
                    f" {type(value).__name__} {short_repr(value)} (store None, bool, int, float,"
                    " str or bytes; serialise the rest, e.g. with json.dumps)"
                )

    def _write(self, row: Mapping[str, Any], source: Any) -> None:
        key = row[self.key]
        keyed = source is not None
        if self._columns is None:
            self._infer(row, keyed)
        assert self._columns is not None
        for col in row:
            if col not in self._columns:
                raise ValueError(
                    f"SQLite sink {self.table!r}: unknown column {col!r} in row {short_repr(row)}"
                    f" (columns: {', '.join(self._columns)})"
                )
        conn = self._conn
        try:
            conn.execute("INSERT INTO temp._af_seen (k) VALUES (?)", (key,))
        except sqlite3.IntegrityError:
            raise DuplicateKey(
                f"SQLite sink {self.table!r}: key {key!r} was already written in this run"
                f" by another item; this row would overwrite it: {short_repr(row)}"
            ) from None
        cols = tuple(row)
        track = keyed and self._tracks_source
        values = [row[c] for c in cols]
        if track:
            values.append(source)
        try:
            cursor = conn.execute(self._statement(cols, track), values)
            if track and cursor.rowcount == 0:
                raise DuplicateKey(
                    f"SQLite sink {self.table!r}: key {key!r} is stored already, written for"
                    f" another source item than {source!r}: {short_repr(row)}"
                )
        except BaseException:
            conn.execute("DELETE FROM temp._af_seen WHERE k = ?", (key,))
            raise

    def _statement(self, cols: tuple[str, ...], track: bool) -> str:
        sql = self._insert.get((*cols, str(track)))
        if sql is None:
            names = [*cols, SOURCE_COLUMN] if track else list(cols)
            updates = [f"{_quote(c)} = excluded.{_quote(c)}" for c in names if c != self.key]
            sql = (
                f"INSERT INTO {_quote(self.table)} ({', '.join(map(_quote, names))})"
                f" VALUES ({', '.join('?' * len(names))}) ON CONFLICT ({_quote(self.key)}) DO "
            )
            if not updates:
                sql += "NOTHING"
            else:
                sql += "UPDATE SET " + ", ".join(updates)
                if track:
                    # A row written for another source item is not ours to replace.
                    tbl, src = _quote(self.table), _quote(SOURCE_COLUMN)
                    sql += f" WHERE {tbl}.{src} IS excluded.{src}"
            self._insert[(*cols, str(track))] = sql
        return sql

    def commit(self) -> None:
        """Commit the open transaction (the rows and ledger entries written since the last one)."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._pending = 0

    def close(self) -> None:
        """Commit what is pending and close the connection (called by the runtime at the end).

        If the last call failed (the run is stopping on that error), the open transaction is rolled
        back instead: the database keeps only whole transactions, never part of one.
        """
        try:
            if self._failed and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            else:
                self.commit()
        finally:
            self._conn.close()


def sqlite(
    path: str | os.PathLike[str],
    table: str = "results",
    key: str = "id",
    *,
    schema: Mapping[str, str] | None = None,
    commit_every: int = 500,
    commit_seconds: float = 1.0,
    name: str | None = None,
) -> Layer[Any, None]:
    """A ready collector layer writing into SQLite: one :class:`SQLite` on one dedicated thread.

    Example::

        >>> import async_flow as af, sqlite3, tempfile, os
        >>> from contextlib import closing
        >>> db = os.path.join(tempfile.mkdtemp(), "out.db")
        >>> _ = af.run(range(3), af.Layer(lambda i: {"id": i, "sq": i * i}), af.sinks.sqlite(db))
        >>> with closing(sqlite3.connect(db)) as conn:
        ...     conn.execute("SELECT id, sq FROM results ORDER BY id").fetchall()
        [(0, 0), (1, 1), (2, 4)]
    """
    _validate(table, key, schema, commit_every, commit_seconds)  # bad declarations fail here
    return Layer(
        SQLite,
        1,
        backend="thread",
        name=name or f"sqlite:{table}",
        args=(path, table, key),
        kwargs={
            "schema": schema,
            "commit_every": commit_every,
            "commit_seconds": commit_seconds,
        },
    )
