"""Resume: a ledger of finished source items, so that a run started again does only the rest.

A :class:`Checkpoint` names a SQLite database and a ``key`` function giving each source item a
stable key. The database holds a ledger table of the keys of source items whose results are all
committed, and the pipeline's fingerprint. A run reads the ledger first and skips those items.

Knowing when a source item is finished
--------------------------------------
A layer may turn one item into zero, one or many (fan-out, filtering), so "the collector wrote a
row" does not say "the source item is done". Under a checkpoint every item travels as a
``Keyed(key, value)`` envelope (``_keyed``); each layer's workers unwrap it, call the function and
wrap every output with the same key. The runtime, on the event loop, keeps for each source key the
number of its envelopes still alive upstream of the collector:

- the source admits an item: ``count[k] = 1``;
- a layer before the collector turns ``i`` envelopes of ``k`` into ``o``: ``count[k] += o - i``
  (outputs are counted before they are sent on, so the count never drops to zero early);
- the collector is handed an envelope of ``k``: ``count[k] -= 1``.

When the count reaches zero no envelope of ``k`` exists anywhere but in the collector's hands. If
that happened at the collector, the envelope it was just handed is the source item's last: the
runtime marks it ``final``. The SQLite sink (one writer) holds a source item's rows until its final
envelope arrives, then writes them all and the item's ledger entry in one savepoint of its open
transaction. A SIGKILL at any moment therefore leaves an item either wholly committed *and* in the
ledger, or absent from both; an absent item runs again on resume: effectively-once, even for
fan-out whose row keys are not deterministic.

If the count reaches zero before the collector (its last envelope was filtered out), two cases:
if none of the item's envelopes reached the collector there is nothing to commit and the runtime
records the key through its own connection; if some did, their rows wait in the collector, so the
runtime hands the collector an end marker for the key with its next batch (or once its input has
ended), and the collector writes the held rows and the ledger entry together.

With a collector that is not the SQLite sink on the checkpoint's database, the runtime records
keys after the collector returned for their last envelope: a crash between the two replays the
item, so delivery is at-least-once.

Cost
----
A run without a checkpoint takes none of these paths (one ``is None`` test per batch). Under one,
each item pays for its key, an envelope per layer and a few dict operations on the loop, a few
microseconds per item and layer; the ledger is written in batches on its own thread, never
waiting on the hot path. Memory: the counts of items in flight, the keys finished earlier (read
at the start, to skip them) and in this run (to report a key used twice), and the rows the
collector holds for items not finished yet. Envelopes are small picklable objects, so any backend
carries them.

Limits: a layer that reads its whole input (``af.batch``) cannot carry keys and is refused (the
SQLite sink batches its commits itself); an error policy that gives up on an item must report it
with :meth:`Lineage.drop` so that the item stays unfinished instead of being recorded as done.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ._channel import ChannelStatistics, SendChannel
from ._errors import CheckpointMismatch, DuplicateKey
from ._keyed import LEDGER_TABLE, META_TABLE, Keyed, keyed_layer
from ._layer import Layer
from ._runtime import short_repr
from ._threads import WorkerThread

__all__ = ("Checkpoint", "Lineage")

#: Keys recorded by the runtime are written once this many are pending (or at the end).
_FLUSH_KEYS = 4096
_FLUSH_SECONDS = 1.0


class Checkpoint:
    """Where a run records the source items it has finished, so that it can be resumed.

    Pass it to :func:`~async_flow.pipeline` or :func:`~async_flow.run`. ``key(item)`` must give
    each source item a stable ``str``, ``int`` or ``bytes`` key (a file name, a row id); two items
    with one key raise :class:`~async_flow.DuplicateKey`. The first run creates the ledger in
    ``path``; a run started again skips every item whose key it holds.

    Use the same database as an :func:`async_flow.sinks.sqlite` collector and each source item's
    results and its ledger entry are committed in one transaction: a run killed at any point
    (SIGKILL included) and started again commits every item exactly once. With any other
    collector, an item is recorded after the collector returned for its last result, so a crash in
    between replays it: at-least-once.

    The ledger holds a fingerprint of the pipeline (layer names and functions); resuming with a
    different pipeline raises :class:`~async_flow.CheckpointMismatch` unless ``resume_changed``.

    Example::

        >>> import async_flow as af, os, tempfile
        >>> db = os.path.join(tempfile.mkdtemp(), "run.db")
        >>> def square(i):
        ...     return {"id": i, "sq": i * i}
        >>> layers = (af.Layer(square, 2), af.sinks.sqlite(db))
        >>> af.run(range(5), *layers, checkpoint=af.Checkpoint(db, key=int)).source.produced
        5
        >>> af.run(range(8), *layers, checkpoint=af.Checkpoint(db, key=int)).layers[0].received
        3
    """

    __slots__ = ("key", "path", "resume_changed")

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: Callable[[Any], Any],
        *,
        resume_changed: bool = False,
    ) -> None:
        if not callable(key):
            raise TypeError(f"Checkpoint: key must be callable, got {type(key).__name__}")
        self.path = os.fspath(path)
        self.key = key
        self.resume_changed = resume_changed

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, key={getattr(self.key, '__qualname__', self.key)!r})"


def fingerprint(layers: tuple[Layer[Any, Any], ...]) -> str:
    """A short hash of what the layers are: their names and their functions' qualified names."""
    parts = []
    for layer in layers:
        fn = layer.fn
        while hasattr(fn, "func"):  # functools.partial
            fn = fn.func
        # Not the module: the same function is ``__main__.f`` in a script and ``job.f`` imported.
        what = getattr(fn, "__qualname__", type(fn).__name__)
        parts.append(f"{layer.name}|{what}|{layer.kind.value}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _sink_writes_ledger(layer: Layer[Any, Any], path: str) -> bool:
    from .sinks import SQLite

    if not (layer.is_class and isinstance(layer.fn, type) and issubclass(layer.fn, SQLite)):
        return False
    target = layer.args[0] if layer.args else layer.kwargs.get("path")
    if target is None:
        return False
    same: bool = os.path.realpath(os.fspath(target)) == os.path.realpath(path)
    if same and layer.workers != 1:
        raise ValueError(
            f"Layer {layer.name!r}: the SQLite collector of a checkpointed run needs exactly one"
            f" worker (SQLite has one writer), got {layer.workers}"
        )
    return same


_KEY_TYPES = frozenset((str, int, bytes))


def _check_key(key: Any, item: Any) -> None:
    if type(key) in _KEY_TYPES:
        return
    if isinstance(key, bool) or not isinstance(key, str | int | bytes):
        raise TypeError(
            f"checkpoint key of item {short_repr(item)} must be a str, int or bytes, got"
            f" {type(key).__name__} {short_repr(key)}"
        )


class Lineage:
    """The per-run state of a checkpoint: ledger connection, finished keys, outstanding counts."""

    def __init__(self, checkpoint: Checkpoint, layers: tuple[Layer[Any, Any], ...]) -> None:
        if not layers:
            raise ValueError("a checkpointed pipeline needs at least one layer")
        for layer in layers:
            if layer.stream is not None:
                raise ValueError(
                    f"Layer {layer.name!r} reads its whole input (af.batch) and cannot carry"
                    " checkpoint keys; the SQLite collector batches its commits itself"
                )
        self.checkpoint = checkpoint
        self.last = len(layers) - 1
        self.sink_writes_ledger = _sink_writes_ledger(layers[-1], checkpoint.path)
        run_layers = [keyed_layer(layer) for layer in layers]
        if self.sink_writes_ledger:
            run_layers[-1] = layers[-1]  # the sink takes the envelopes themselves
        self.layers = tuple(run_layers)
        self._fingerprint = fingerprint(layers)
        self.counts: dict[Any, int] = {}
        self.done: set[Any] = set()  # finished in an earlier run
        self.finished: set[Any] = set()  # finished in this run
        self.skipped = 0
        self._pending: list[Any] = []  # finished keys the runtime records itself
        self._at_sink: set[Any] = set()  # keys with rows held by the collector, not final yet
        self._ends: list[Any] = []  # keys the collector must record with the rows it holds
        self._dropped: set[int] = set()  # envelopes an error policy gave up on (by id)
        self._pending_since = 0.0
        self._thread: WorkerThread | None = None
        self._writing: asyncio.Future[None] | None = None
        self._conn: sqlite3.Connection | None = None

    # --- the ledger (on its own thread) ------------------------------------------------------

    async def open(self) -> None:
        """Create or read the ledger; refuse a checkpoint made by a different pipeline."""
        self._thread = WorkerThread("async_flow:checkpoint")
        self.done = await self._thread.submit(self._open_db)

    def _open_db(self) -> set[Any]:
        conn = self._conn = sqlite3.connect(
            self.checkpoint.path, timeout=30.0, isolation_level=None
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (k PRIMARY KEY) WITHOUT ROWID")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (name TEXT PRIMARY KEY, value)")
            row = conn.execute(
                f"SELECT value FROM {META_TABLE} WHERE name = 'fingerprint'"
            ).fetchone()
            if (
                row is not None
                and row[0] != self._fingerprint
                and not self.checkpoint.resume_changed
            ):
                raise CheckpointMismatch(
                    f"checkpoint {self.checkpoint.path!r} was written by a different pipeline"
                    f" (fingerprint {row[0]}, this one {self._fingerprint}): its layers or"
                    " functions changed. Use a new path, or Checkpoint(..., resume_changed=True)"
                    " to skip the items it recorded anyway"
                )
            conn.execute(
                f"INSERT OR REPLACE INTO {META_TABLE} (name, value) VALUES ('fingerprint', ?)",
                (self._fingerprint,),
            )
            done = {k for (k,) in conn.execute(f"SELECT k FROM {LEDGER_TABLE}")}
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return done

    def _record(self, keys: list[Any]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                f"INSERT OR IGNORE INTO {LEDGER_TABLE} (k) VALUES (?)", [(k,) for k in keys]
            )

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _flush(self) -> None:
        """Hand the pending keys to the ledger thread, one write at a time; never waits.

        While a write is running (the collector may hold the database's write lock for up to a
        commit interval), new keys accumulate for the next one instead of stalling the layer.
        """
        writing = self._writing
        if writing is not None:
            if not writing.done():
                return
            self._writing = None
            writing.result()  # a failed ledger write fails the run
        keys, self._pending = self._pending, []
        if keys and self._thread is not None:
            self._writing = self._thread.submit(self._record, keys)

    async def aclose(self) -> None:
        """Record what is pending (those items did finish) and close the ledger."""
        thread = self._thread
        if thread is None:
            return
        try:
            if self._writing is not None:
                await self._writing
            if self._conn is not None and self._pending:
                await thread.submit(self._record, self._pending)
        finally:
            thread.submit(self._close_db)
            await thread.aclose()

    # --- the source ---------------------------------------------------------------------------

    def admit(self, items: list[Any]) -> list[Keyed]:
        """Key the source's items, drop those already done, refuse a key used twice."""
        key_of = self.checkpoint.key
        done, counts, finished = self.done, self.counts, self.finished
        envelopes = []
        for item in items:
            try:
                key = key_of(item)
            except Exception as exc:
                exc.add_note(
                    f"async_flow: the checkpoint key function raised on item {short_repr(item)}"
                )
                raise
            _check_key(key, item)
            if key in done:
                self.skipped += 1
                continue
            if key in counts or key in finished:
                raise DuplicateKey(
                    f"source item {short_repr(item)} has key {key!r}, already used by another"
                    " item of this run; checkpoint keys must be unique"
                )
            counts[key] = 1
            envelopes.append(Keyed(key, item))
        return envelopes

    def sender(self, inner: SendChannel[Any]) -> _KeyingSender:
        """The first channel's send side, keying what the source sends through it."""
        return _KeyingSender(inner, self)

    # --- the layers ---------------------------------------------------------------------------

    def owed(self, index: int) -> bool:
        """Whether the SQLite collector (layer ``index``) has end markers still to write."""
        return index == self.last and bool(self._ends)

    def before(self, index: int, items: list[Any]) -> int:
        """At the SQLite collector: mark each source item's last envelope ``final``.

        Also appends an end marker for each item that finished upstream (its last envelope was
        filtered out) after some of its rows reached the collector, so that the collector writes
        them and the ledger entry together. Returns how many markers were appended.
        """
        if index != self.last or not self.sink_writes_ledger:
            return 0
        counts, finished, at_sink = self.counts, self.finished, self._at_sink
        for env in items:
            key = env.key
            left = counts[key] - 1
            if left:
                counts[key] = left
                at_sink.add(key)
            else:
                del counts[key]
                finished.add(key)
                at_sink.discard(key)
                env.final = True
        ends = self._ends
        if not ends:
            return 0
        self._ends = []
        # An empty tuple is zero rows: the collector writes what it holds, then the ledger entry.
        items.extend(Keyed(key, (), final=True) for key in ends)
        return len(ends)

    def drop(self, env: Keyed) -> None:
        """An error policy gave up on ``env`` (skipped, dead-lettered): its source item stays
        unfinished, so it is not recorded and a resumed run does it again."""
        self._dropped.add(id(env))

    def after(self, index: int, items: list[Any], outputs: list[Any]) -> None:
        """A layer turned ``items`` into ``outputs``: update counts, record finished keys."""
        if index == self.last and self.sink_writes_ledger:
            return
        counts = self.counts
        if index != self.last:
            for env in outputs:
                counts[env.key] += 1
        pending = self._pending
        dropped = self._dropped
        for env in items:
            if dropped and id(env) in dropped:
                dropped.discard(id(env))
                continue  # its count never reaches zero: the item is not recorded
            key = env.key
            left = counts[key] - 1
            if left:
                counts[key] = left
                continue
            del counts[key]
            self.finished.add(key)
            if key in self._at_sink:
                # Rows of this item wait in the collector: it must record the key with them.
                self._at_sink.remove(key)
                self._ends.append(key)
                continue
            if not pending:
                self._pending_since = time.monotonic()
            pending.append(key)
        if pending and (
            len(pending) >= _FLUSH_KEYS or time.monotonic() - self._pending_since >= _FLUSH_SECONDS
        ):
            self._flush()


class _KeyingSender:
    """Wraps the first channel's send side: source items go in as :class:`Keyed` envelopes."""

    __slots__ = ("_inner", "_lineage")

    def __init__(self, inner: SendChannel[Any], lineage: Lineage) -> None:
        self._inner = inner
        self._lineage = lineage

    def clone(self) -> _KeyingSender:
        return _KeyingSender(self._inner.clone(), self._lineage)

    def close(self) -> None:
        self._inner.close()

    def statistics(self) -> ChannelStatistics:
        return self._inner.statistics()

    async def send_batch(self, items: list[Any]) -> None:
        envelopes = self._lineage.admit(items)
        if envelopes:
            await self._inner.send_batch(envelopes)
