"""The backend interface: where a layer's function runs.

The runtime (queues, back-pressure, ordering, error policy, stats, shutdown) is written once; a
backend only runs batches of items for numbered worker *slots*. A slot is one worker: a task, a
thread, a process or an actor. The runtime opens slots, calls :meth:`Backend.run_batch` from up to
:attr:`Backend.batches_in_flight` tasks per slot, and closes them. Adding a backend is one module
that subclasses :class:`Backend` and an entry in ``async_flow.backends``.

What every backend owes the runtime:

- **Errors** raised by the user's function are returned in the :class:`BatchResult` (outputs of
  the items before, the index of the failing item, the exception), never raised; the runtime
  applies the layer's error policy and calls :meth:`Backend.run_batch` again with the rest of
  the batch (possibly the same item again, for a retry). A worker that died holding an item
  gives that item a :class:`~async_flow.WorkerCrashed` error the same way (see ``_crash``).
- **Timeouts**: if ``layer.timeout`` is set, no item may run longer than that, counted from
  when the worker starts it. A late item ends the result with the error
  ``item_timeout(layer.name, layer.timeout)`` (an :class:`~async_flow.ItemTimeout`), its outputs
  dropped, and the items after it untried. Work that can be cancelled is cancelled; a worker
  that cannot be interrupted (a thread, a process, an actor) is abandoned or killed and the slot
  gets a fresh one (``self.restarts += 1``) before its next batch. The runtime counts timeouts.
- **Signals**: workers ignore SIGINT; the run alone coordinates a Ctrl-C (drain, then abort).
  :meth:`stop` means the run is aborting: stop at the next item boundary or kill.
- **Policies stay in the parent**: a pickled :class:`~async_flow.Layer` carries no error policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .._calls import BatchResult
from .._layer import Layer

__all__ = ("Backend",)


class Backend(ABC):
    """Runs one layer's batches for one run. Created by the runtime; never shared between runs."""

    #: The name a Layer uses to ask for this backend.
    name: ClassVar[str]
    #: How many batches the runtime keeps in flight per slot (more than one hides IPC latency).
    batches_in_flight: ClassVar[int] = 1
    #: Batches are sized so that one takes about this long, from the measured per-item time.
    target_batch_seconds: ClassVar[float] = 0.002
    #: The largest batch the runtime hands over in one call.
    max_batch: ClassVar[int] = 1024
    #: Batches are cut from what the layer's input channel holds, shared by every batch in
    #: flight. A backend that pays per batch (a pipe write, a remote call) sets how many items
    #: per worker the runtime may widen the channel to, so that batches of tiny items stay large
    #: (only when the layer does not set ``maxsize``). 0: the channel keeps its bound.
    channel_room_per_worker: ClassVar[int] = 0

    def __init__(self, layer: Layer[Any, Any]) -> None:
        self.layer = layer
        #: Workers replaced after a crash (process and Ray backends); read by the runtime's stats.
        self.restarts = 0
        #: Items re-run by the backend itself (after a worker crash); added to the layer's stats.
        self.retried = 0

    def connect(self, downstream: Backend) -> None:  # noqa: B027 - optional hook
        """The next layer runs on ``downstream``. Called once, before :meth:`start`.

        Two backends may agree here to pass items between them as handles instead of values (Ray
        layers pass object references actor to actor); the runtime moves whatever items the
        backends produce and never looks inside them.
        """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare shared resources. Runs before the source is read, so a bad layer fails early."""

    @abstractmethod
    async def open_worker(self, slot: int) -> None:
        """Start worker ``slot`` (build its thread, process or actor, and its instance)."""

    @abstractmethod
    async def run_batch(self, slot: int, items: list[Any]) -> BatchResult:
        """Run the layer's function on ``items`` in worker ``slot``.

        Exceptions raised by the user's function are returned in the result, not raised; an
        exception raised from here fails the run (or, for ``WorkerCrashed``, follows the layer's
        error policy).
        """

    @abstractmethod
    async def close_worker(self, slot: int) -> None:
        """Stop worker ``slot`` after its current batch, closing its instance."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """The run is being torn down: abandon batches between two items where that is possible."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired. Called once, even if the run failed."""
