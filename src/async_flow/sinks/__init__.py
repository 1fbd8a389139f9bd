"""Built-in collectors: the last layer of a pipeline, committing its results somewhere durable.

:func:`sqlite` (or the :class:`SQLite` class it wraps) is the embedded default: standard library
``sqlite3``, WAL mode, batched transactions, upserts by key. Under a
:class:`~async_flow.Checkpoint` on the same database it records finished source items in the same
transaction as their results, which makes a resumed run effectively-once.
"""

from ._sqlite import SQLite, sqlite

__all__ = ("SQLite", "sqlite")
