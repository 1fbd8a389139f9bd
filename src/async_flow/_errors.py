"""The exceptions async_flow raises.

A user's own exception from a layer or a source is never wrapped: it is re-raised as itself, with a
note (PEP 678) naming the layer and the item. The types below are for what only the runtime knows::

    AsyncFlowError                  base class of everything below
     ├── ClosedChannelError         a channel was used after it was closed
     ├── WorkerCrashed              a worker process or actor died while holding an item
     ├── ItemTimeout                an item took longer than its layer's ``timeout``
     ├── TooManyFailures            a layer's failure threshold was crossed
     ├── SerializationError         a function, item or result could not be shipped to a worker
     ├── DuplicateKey               two items claim the same key (source key or stored row key)
     └── CheckpointMismatch         a checkpoint was made by a different pipeline

    KeyboardInterrupt
     └── Interrupted                a run stopped by SIGINT or SIGTERM; carries its report
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._report import Report

__all__ = (
    "AsyncFlowError",
    "CheckpointMismatch",
    "ClosedChannelError",
    "DuplicateKey",
    "Interrupted",
    "ItemTimeout",
    "SerializationError",
    "TooManyFailures",
    "WorkerCrashed",
)


class AsyncFlowError(Exception):
    """Base class of the errors raised by async_flow itself.

    Example::

        >>> import async_flow as af
        >>> issubclass(af.WorkerCrashed, af.AsyncFlowError)
        True
    """


class ClosedChannelError(AsyncFlowError):
    """A channel was sent to or received from after its side was closed.

    Example::

        >>> import async_flow as af
        >>> isinstance(af.ClosedChannelError("send on a closed channel"), af.AsyncFlowError)
        True
    """


class WorkerCrashed(AsyncFlowError):
    """A worker (process or actor) died while it held an item.

    ``exitcode`` is the process exit code where known (negative: killed by that signal).
    """

    def __init__(self, message: str, *, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class ItemTimeout(AsyncFlowError, TimeoutError):
    """An item took longer than its layer's per-item ``timeout``."""


class TooManyFailures(AsyncFlowError):
    """A layer's error policy gave up: too many items failed."""


class SerializationError(AsyncFlowError):
    """A function, constructor argument, item or result could not be pickled for a worker."""


class DuplicateKey(AsyncFlowError, ValueError):
    """Two different items claim the same key.

    Raised when the source yields a key that is already in flight or done in this run, and by the
    SQLite sink when a row's key was already written by another item: colliding keys are reported,
    never silently merged.
    """


class CheckpointMismatch(AsyncFlowError):
    """The checkpoint's ledger was written by a different pipeline (its fingerprint differs).

    Pass ``Checkpoint(..., resume_changed=True)`` to resume anyway.
    """


class Interrupted(KeyboardInterrupt):
    """A run was stopped by SIGINT or SIGTERM. Raised by :func:`~async_flow.run` and
    :func:`~async_flow.pipeline` once everything the run started has stopped.

    The first signal drains the run: the source stops, and the items already inside are finished
    and collected (``drained`` is True if that completed within the drain timeout). A second
    signal, or the drain timeout, aborts: every worker is stopped at once (``drained`` is False).
    ``report`` (status ``"interrupted"``) says how far the run got.

    It derives from ``KeyboardInterrupt``, not :class:`AsyncFlowError`, so that ``except
    Exception`` does not swallow a Ctrl-C. Uncaught, it prints the report and one line (no
    traceback) and the program dies by the signal, as shells expect (status 130 after SIGINT,
    143 after SIGTERM). A program that catches it can exit the same way with
    :attr:`exit_code`::

        try:
            report = af.run(source, *layers)
        except af.Interrupted as stop:
            print(stop.report, file=sys.stderr)
            sys.exit(stop.exit_code)
    """

    def __init__(self, report: Report, signum: int, *, drained: bool) -> None:
        name = signal.Signals(signum).name
        how = "drained" if drained else "aborted"
        super().__init__(
            f"run interrupted by {name} ({how}): {report.source.produced} source items read"
        )
        self.report = report
        self.signum = signum
        self.drained = drained

    @property
    def exit_code(self) -> int:
        """The conventional exit status for the signal: 128 + its number."""
        return 128 + self.signum
