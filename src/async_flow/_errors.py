"""The exceptions async_flow raises.

A user's own exception from a layer or a source is never wrapped: it is re-raised as itself, with a
note (PEP 678) naming the layer and the item. The types below are for what only the runtime knows::

    AsyncFlowError                  base class of everything below
     ├── ClosedChannelError         a channel was used after it was closed
     ├── WorkerCrashed              a worker process or actor died while holding an item
     ├── ItemTimeout                an item took longer than its layer's ``timeout``
     ├── TooManyFailures            a layer's failure threshold was crossed
     └── SerializationError         a function, item or result could not be shipped to a worker
"""

from __future__ import annotations

__all__ = (
    "AsyncFlowError",
    "ClosedChannelError",
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
