"""The ``"ray"`` backend: each worker of a layer is a Ray actor.

``af.Layer(Model, 8, backend="ray", options={"num_cpus": 1})`` runs 8 actors; each builds one
instance of ``Model`` (or wraps the plain, generator, coroutine or async generator function) and
runs the batches the runtime sends it with the same per-item code as every other backend. Items
travel in batches sized from the measured per-item time, and two batches are kept in flight per
actor (one running, one queued at the actor) so that an actor never waits for the driver.

``options`` are passed to Ray's ``.options()`` for every actor: ``num_cpus``, ``num_gpus``,
``memory``, ``resources``, ``runtime_env``, ``scheduling_strategy``, ... An unknown key fails when
the run starts, naming the layer. ``max_restarts`` is always 0: the backend replaces dead actors
itself, so that it knows which items they held.

Where Ray runs:

* Ray already initialised in this process (``ray.init(...)`` before the run): that instance is
  used and left running.
* ``RAY_ADDRESS`` set: the run connects to that cluster and disconnects at the end; the cluster
  itself is never shut down.
* Otherwise a local Ray instance (without its dashboard) is started for the run, which takes a
  few seconds, and shut down when the run ends. A cluster left running by ``ray start`` is not
  picked up implicitly: set ``RAY_ADDRESS=auto``. Call ``ray.init()`` yourself to share one
  instance between runs.

Actor processes import ``async_flow`` and the module of the layer's function (Ray pickles
functions defined in importable modules by reference): on a cluster, install them on every node
or ship them with ``runtime_env``.

Consecutive Ray layers pass items as object references: the upstream actor's outputs stay in
Ray's object store, the driver receives only a summary and passes a :class:`RayItem` (reference,
index) per output to the next layer, whose actor fetches the values. Ray still inlines small
objects (under about 100 KB per batch) in the driver's reply, but the driver never deserialises
them; large outputs go node to node. Only what a non-Ray layer (or the stream) needs is pulled.

Timeouts: with ``Layer(timeout=...)`` a batch is still one call to an actor, but the actor reports
each item as it finishes (a streaming generator method, :meth:`_RayWorker.run_stream`), and the
driver times each item from the report before it, so neither the wait behind another batch at the
same actor nor the actor's own start-up counts against an item. An actor that does not report an
item in time is killed: the batch keeps the outputs of the items before it, the item fails with
:class:`~async_flow.ItemTimeout` under the layer's error policy, and the slot gets a fresh actor
before its next batch. A batch queued behind it on the killed actor runs again on the fresh one. An
async item is cancelled inside its actor at the timeout instead, and the actor lives on. Reporting
each item costs about half a millisecond of the actor's and the driver's time: nothing next to the
slow items timeouts are for, a lot for items of microseconds. Consecutive Ray layers still pass
references: each item's outputs are an object of their own.

Resources: when the run starts, each actor's request (``num_cpus``, ``num_gpus``, ``memory``,
``resources``) is checked against the live nodes' totals; a request that no single node can meet
(a GPU on a cluster without one, more CPUs than any node has) fails at once with a ``ValueError``
naming the layer and the resource, instead of leaving actors pending forever. A cluster with an
autoscaler may add a node that fits, and a placement group or node affinity decides placement
itself: there the check is skipped.

Faults: an actor that dies (its process killed, its node gone) is killed for good and replaced by a
fresh one, and the batch it held is re-run one item at a time on the replacement (see
:mod:`._crash`); an item that kills ``attempts`` actors in a row fails with
:class:`~async_flow.WorkerCrashed` naming it. Every actor the run created is killed when the layer
ends, on success (after closing its instance), on error and on cancellation (at once, without
waiting for the batch it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable, Iterator
from typing import Any

import ray

from .._calls import (
    BatchResult,
    WorkerCall,
    close_worker_call_sync,
    item_timeout,
    open_worker_call_sync,
    run_batch_sync,
)
from .._errors import SerializationError, WorkerCrashed
from .._layer import Layer
from ._base import Backend
from ._crash import WorkerLost, run_with_crash_retry

__all__ = ("RayBackend",)

#: How many times an item may lose its actor before it fails with ``WorkerCrashed``.
CRASH_ATTEMPTS = 3

#: How long past its timeout an async item may run before its actor is killed: the actor cancels
#: the item itself at the timeout, so this only catches a coroutine that blocks the actor's loop.
ASYNC_GRACE = 1.0


class _RayWorker:
    """The actor: one worker's callable, built once, fed batches of items.

    A plain class, made a Ray actor class on first use (``ray.remote``), so that it stays
    importable and testable as itself.
    """

    def __init__(self, layer: Layer[Any, Any]) -> None:
        self._layer = layer
        self._runner: asyncio.Runner | None = None
        self._call: WorkerCall | None = None

    def open(self) -> int:
        layer = self._layer
        needs_loop = layer.kind.is_async or (
            layer.is_class
            and hasattr(layer.fn, "__aenter__")
            and not hasattr(layer.fn, "__enter__")
        )
        if needs_loop:
            self._runner = asyncio.Runner()
        self._call = open_worker_call_sync(layer, self._runner)
        return os.getpid()

    def run(self, items: list[Any], resolve: bool) -> BatchResult:
        call = self._call
        assert call is not None, "run() before open()"
        if resolve:
            items = _resolve(items)
        result = run_batch_sync(call.call, call.kind, items, None, self._runner)
        if result.error is not None:
            result = BatchResult(result.outputs, result.done, _portable(result.error))
        return result

    def run_split(
        self, items: list[Any], resolve: bool
    ) -> tuple[tuple[int, BaseException | None, int], list[Any]]:
        """Like :meth:`run`, in two objects: a small summary for the driver, and the outputs,
        which stay in the object store for the next Ray layer (called with ``num_returns=2``)."""
        result = self.run(items, resolve)
        return (result.done, result.error, len(result.outputs)), result.outputs

    def run_stream(
        self, items: list[Any], resolve: bool, split: bool, per_item: float
    ) -> Iterator[Any]:
        """Like :meth:`run`, reporting each item as it finishes (a streaming generator method,
        called with ``num_returns="streaming"``), so that the driver can time each item out.

        Yields ``None`` once the batch starts here (the items fetched), then per item
        ``(outputs, error)``; with ``split``, ``(len(outputs), error)`` followed, if the item
        succeeded, by its outputs as an object of their own that the driver never fetches. Stops
        after the first item that failed. An async item is cancelled here after ``per_item``
        seconds (an :class:`~async_flow.ItemTimeout`); the driver kills the actor for the rest.
        """
        call = self._call
        assert call is not None, "run_stream() before open()"
        if resolve:
            items = _resolve(items)
        yield None
        name = self._layer.name
        for item in items:
            result = run_batch_sync(
                call.call, call.kind, [item], None, self._runner, per_item, None, name
            )
            error = None if result.error is None else _portable(result.error)
            if split:
                yield len(result.outputs), error
                if error is None:
                    yield result.outputs
            else:
                yield result.outputs, error
            if error is not None:
                return

    def close(self) -> None:
        try:
            if self._call is not None:
                close_worker_call_sync(self._call, self._runner)
        finally:
            self._call = None
            if self._runner is not None:
                self._runner.close()
                self._runner = None


class RayItem:
    """An item that is output ``index`` of the outputs stored in Ray object ``ref``.

    Consecutive Ray layers pass these instead of values: the driver holds (and owns) the
    reference, the next layer's actor fetches the value from the object store.
    """

    __slots__ = ("index", "ref")

    def __init__(self, ref: Any, index: int) -> None:
        self.ref = ref
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayItem, (self.ref, self.index))

    def __repr__(self) -> str:
        return f"<output {self.index} of Ray object {self.ref.hex()[:12]}>"


def _resolve(items: list[Any]) -> list[Any]:
    """Replace each :class:`RayItem` by its value (one fetch per distinct object)."""
    refs = list({item.ref: None for item in items if isinstance(item, RayItem)})
    if not refs:
        return items
    values = dict(zip(refs, ray.get(refs), strict=True))
    return [values[i.ref][i.index] if isinstance(i, RayItem) else i for i in items]


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else a SerializationError that describes it."""
    import cloudpickle

    try:
        cloudpickle.dumps(error)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        return SerializationError(
            f"the item raised {type(error).__name__}: {error}, which cannot be sent back from"
            f" its Ray actor ({type(exc).__name__}: {exc})"
        )
    return error


# --- the Ray instance a run uses -------------------------------------------------------------

_session_lock = threading.Lock()
_session_users = 0
_session_owned = False


def _acquire_ray() -> None:
    """Make sure this process is connected to Ray; count the layers that use it."""
    global _session_users, _session_owned
    with _session_lock:
        if _session_users == 0 and not ray.is_initialized():
            # RAY_ADDRESS set: connect to that cluster; else start a local instance (not one
            # that ``ray start`` left running: ask for it with RAY_ADDRESS=auto).
            address = os.environ.get("RAY_ADDRESS") or None
            # ray.init() replaces the SIGTERM handler with one that exits at once: keep the
            # run's (a first SIGTERM drains the run, as on every backend).
            main = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main else None
            try:
                if address is None:
                    ray.init(address="local", include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            finally:
                if sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
            _session_owned = True
        _session_users += 1


def _release_ray() -> None:
    """The last layer that acquired Ray is done: shut down (or disconnect) what we started."""
    global _session_users, _session_owned
    with _session_lock:
        _session_users -= 1
        if _session_users == 0 and _session_owned:
            _session_owned = False
            ray.shutdown()


_actor_class: Any = None


def _remote_worker_class() -> Any:
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(_RayWorker)
    return _actor_class


async def _next_value(stream: Any) -> Any:
    """The value of the next object a streaming actor method yields (its error, raised)."""
    try:
        ref = await anext(stream)
    except StopAsyncIteration:
        raise RuntimeError("a Ray actor's stream of results ended early") from None
    return await ref


def _check_feasible(layer: str, options: dict[str, Any]) -> None:
    """Fail if no node of the cluster can ever host one of the layer's actors.

    Ray would keep such actors pending forever. The check looks at each live node's total
    resources; it is skipped where nodes are not the whole story: a placement group or a node
    affinity in ``scheduling_strategy``, or a cluster with an autoscaler, which may add a node
    that fits.
    """
    if options.get("scheduling_strategy") not in (None, "DEFAULT", "SPREAD"):
        return
    wanted: dict[str, tuple[str, float]] = {}  # resource -> (how the options ask for it, amount)
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        amount = options.get(option)
        if amount:
            wanted[resource] = (f"{option}={amount!r}", float(amount))
    for resource, amount in (options.get("resources") or {}).items():
        if amount:
            wanted[resource] = (f"resources={{{resource!r}: {amount!r}}}", float(amount))
    if not wanted:
        return
    alive = [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    nodes = [node["Resources"] for node in alive]
    if any(all(node.get(r, 0.0) >= amount for r, (_, amount) in wanted.items()) for node in nodes):
        return
    if _autoscaled():
        return
    most = {r: max((node.get(r, 0.0) for node in nodes), default=0.0) for r in wanted}

    def has(r: str) -> str:
        return f"{int(most[r])} bytes of memory" if r == "memory" else f"{most[r]:g} {r}"

    short = [
        f"{asked} (the most any node has is {has(r)})"
        for r, (asked, amount) in wanted.items()
        if most[r] < amount
    ]
    if short:
        why = "it asks for " + " and ".join(short)
    else:
        asked = ", ".join(asked for asked, _ in wanted.values())
        why = f"no single node has all of {asked}"
    raise ValueError(
        f"layer {layer!r}: no node of the Ray cluster can host one of its actors: {why}."
        " The actors would wait for resources forever; change options= or add a node that fits"
    )


def _autoscaled() -> bool:
    """True if an autoscaler has told Ray which nodes it may add (so none may fit yet)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - Ray's internals moved: assume a fixed cluster
        return False
    return config is not None and len(config.node_group_configs) > 0


def _cause(exc: BaseException) -> BaseException:
    """The user's exception inside a ``RayTaskError``, else ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


# --- the backend --------------------------------------------------------------------------


class _Slot:
    __slots__ = ("actor", "pid", "replacing")

    def __init__(self) -> None:
        self.actor: Any = None
        self.pid: int | None = None
        self.replacing = asyncio.Lock()


class RayBackend(Backend):
    """Runs a layer's workers as Ray actors, on the Ray instance this process uses (or a new one).

    Example::

        import async_flow as af

        class Model:
            def __init__(self, path):
                self.weights = load(path)      # once per actor
            def __call__(self, batch):
                return predict(self.weights, batch)

        af.run(read(), af.Layer(Model, 8, backend="ray", args=("model.bin",),
                                options={"num_gpus": 1}), af.Layer(save))
    """

    name = "ray"
    batches_in_flight = 2
    # A Ray call costs a millisecond or more of the driver's, the raylet's and the actor's CPU,
    # on cores the actors need when Ray runs on this machine. Measured side by side against the
    # process backend once the actors were up (2 actors, 2 cores): batches of about 50 ms of
    # work, at most 1024 items, ran 2 ms items at 0.96x its speed and 20 us items at 0.92x;
    # batches of about 100 ms, at most 4096 items, at 0.99x and 1.02x. Like the process
    # backend's, the channel holds two full batches per batch in flight.
    target_batch_seconds = 0.1
    max_batch = 4096
    channel_room_per_worker = 4 * max_batch

    def __init__(self, layer: Layer[Any, Any]) -> None:
        super().__init__(layer)
        self._slots: dict[int, _Slot] = {}
        self._created: list[Any] = []
        self._in_flight: set[Any] = set()
        #: ``id()`` of the actors killed because an item they held was late.
        self._timed_out: set[int] = set()
        self._acquired = False
        self._stopped = False
        self._options: dict[str, Any] = {}
        #: The next layer is a Ray layer too: outputs stay in the object store (RayItem).
        self._emit_refs = False
        #: The previous layer is a Ray layer: inputs may be RayItems to fetch in the actor.
        self._take_refs = False
        #: What Ray raises when an actor (or the node it ran on) is gone.
        self._errors: tuple[type[BaseException], ...] = ()

    def connect(self, downstream: Backend) -> None:
        if isinstance(downstream, RayBackend):
            self._emit_refs = True
            downstream._take_refs = True

    async def start(self) -> None:
        # Options are checked before Ray is touched: a bad layer starts nothing.
        options = dict(self.layer.options)
        if "name" in options:
            raise ValueError(
                f"layer {self.layer.name!r}: Ray option 'name' would give every actor of the"
                " layer the same name; leave it out"
            )
        options["max_restarts"] = 0
        try:
            _remote_worker_class().options(**options)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"layer {self.layer.name!r}: bad Ray actor options {dict(self.layer.options)!r}:"
                f" {exc}"
            ) from exc
        self._options = options
        self._errors = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
        _acquire_ray()
        try:
            _check_feasible(self.layer.name, options)
        except BaseException:
            _release_ray()  # aclose() is only called for a backend that started
            raise
        self._acquired = True

    async def _new_actor(self, state: _Slot) -> None:
        """Create an actor for ``state`` and build its instance; the user's error as itself."""
        actor = _remote_worker_class().options(**self._options).remote(self.layer)
        self._created.append(actor)
        state.actor = actor
        try:
            state.pid = await actor.open.remote()
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None

    async def open_worker(self, slot: int) -> None:
        state = _Slot()
        self._slots[slot] = state
        for attempt in range(CRASH_ATTEMPTS):
            try:
                await self._new_actor(state)
                return
            except self._errors as exc:
                # Died before it could start (its node went away): try a fresh one.
                self._kill(state.actor)
                state.actor = None
                if attempt == CRASH_ATTEMPTS - 1:
                    raise WorkerCrashed(
                        f"layer {self.layer.name!r}: worker {slot}'s Ray actor died while"
                        f" starting, {CRASH_ATTEMPTS} times (last: {exc})"
                    ) from exc
                self.restarts += 1

    async def _replace(self, state: _Slot, dead: Any) -> None:
        """Give up the dead actor of a slot (once, however many batches saw it); the slot's next
        batch gets a fresh one from :meth:`_live_actor`, the one place actors are replaced."""
        async with state.replacing:
            if state.actor is dead:
                state.actor = None
                self._kill(dead)

    async def _run_once(self, state: _Slot, items: list[Any]) -> BatchResult:
        # While a dead actor is being replaced, wait for the fresh one: failing here would count
        # a crash against items that never met the dead actor.
        actor = await self._live_actor(state)
        try:
            if self._emit_refs:
                ref, outputs_ref = actor.run_split.options(num_returns=2).remote(
                    items, self._take_refs
                )
            else:
                ref = actor.run.remote(items, self._take_refs)
        except Exception as exc:  # a pickling failure, described below
            if isinstance(exc, self._errors):
                await self._replace(state, actor)
                raise WorkerLost(None, f"{type(exc).__name__}") from exc
            raise self._send_error(items, exc) from exc
        self._in_flight.add(ref)
        try:
            result = await ref
        except self._errors as exc:
            await self._replace(state, actor)
            raise WorkerLost(None, f"Ray actor lost: {type(exc).__name__}") from exc
        finally:
            self._in_flight.discard(ref)
        if self._emit_refs:
            done, error, count = result
            return BatchResult([RayItem(outputs_ref, i) for i in range(count)], done, error)
        return result  # type: ignore[no-any-return]

    async def _live_actor(self, state: _Slot) -> Any:
        """The slot's actor; a fresh one first if the last died or was killed for a late item.

        The new actor is created and its instance built before the caller's batch is sent, so
        none of that counts against an item's timeout.
        """
        async with state.replacing:
            if state.actor is None:
                if self._stopped:
                    raise WorkerLost(None, "the run is stopping")
                self.restarts += 1
                try:
                    await self._new_actor(state)
                except self._errors as exc:
                    self._kill(state.actor)
                    state.actor = None
                    raise WorkerLost(None, f"Ray actor died while starting: {exc}") from exc
            return state.actor

    def _kill_late(self, state: _Slot, actor: Any) -> None:
        """Kill ``actor``, stuck on a late item; the slot's next batch gets a fresh one."""
        self._timed_out.add(id(actor))
        if state.actor is actor:
            state.actor = None
        self._kill(actor)

    async def _run_timed(self, state: _Slot, items: list[Any], per_item: float) -> BatchResult:
        """Run ``items`` on the slot's actor, each within ``per_item`` seconds of its start.

        The actor reports each item as it finishes (:meth:`_RayWorker.run_stream`). An item's
        clock starts when the driver hears that the batch started or that the item before it
        finished, so neither the wait behind another batch nor the creation of the actor counts.
        An item not reported in time has its actor killed; the result keeps the outputs of the
        items before it and ends with an :class:`~async_flow.ItemTimeout` for it.
        """
        allowed = per_item + (ASYNC_GRACE if self.layer.kind.is_async else 0.0)
        while True:
            actor = await self._live_actor(state)
            try:
                return await self._stream(state, actor, items, per_item, allowed)
            except self._errors as exc:
                if id(actor) in self._timed_out:
                    # Killed for another batch's late item before this batch finished on it:
                    # nothing of it is kept, it runs again on the fresh actor.
                    continue
                await self._replace(state, actor)
                raise WorkerLost(None, f"Ray actor lost: {type(exc).__name__}") from exc

    async def _stream(
        self, state: _Slot, actor: Any, items: list[Any], per_item: float, allowed: float
    ) -> BatchResult:
        split = self._emit_refs
        try:
            stream = actor.run_stream.options(num_returns="streaming").remote(
                items, self._take_refs, split, per_item
            )
        except Exception as exc:  # a pickling failure, described below
            if isinstance(exc, self._errors):
                raise
            raise self._send_error(items, exc) from exc
        self._in_flight.add(stream)
        try:
            await _next_value(stream)  # the actor has started the batch
            outputs: list[Any] = []
            for index in range(len(items)):
                deadline = asyncio.timeout(allowed)
                try:
                    async with deadline:
                        produced, error = await _next_value(stream)
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    self._kill_late(state, actor)
                    return BatchResult(outputs, index, item_timeout(self.layer.name, per_item))
                if not split:
                    outputs.extend(produced)
                elif error is None:
                    # The item's outputs, as an object of their own: hand on its reference.
                    ref = await anext(stream)
                    if ref == stream.completed():  # the actor failed instead: raise its error
                        await ref
                    outputs.extend(RayItem(ref, i) for i in range(produced))
                if error is not None:
                    return BatchResult(outputs, index, error)
            return BatchResult(outputs, len(items), None)
        finally:
            self._in_flight.discard(stream)

    def _send_error(self, items: list[Any], exc: Exception) -> SerializationError:
        from .._runtime import short_repr

        return SerializationError(
            f"layer {self.layer.name!r}: cannot send item {short_repr(items[0])}"
            f" (batch of {len(items)}) to a Ray actor: {exc}"
        )

    async def run_batch(self, slot: int, items: list[Any]) -> BatchResult:
        state = self._slots[slot]
        per_item = self.layer.timeout

        def on_retry(n: int) -> None:
            self.retried += n

        def run_once(batch: list[Any]) -> Awaitable[BatchResult]:
            if per_item is None:
                return self._run_once(state, batch)
            return self._run_timed(state, batch, per_item)

        try:
            return await run_with_crash_retry(
                run_once,
                items,
                layer=self.layer.name,
                attempts=CRASH_ATTEMPTS,
                on_retry=on_retry,
            )
        except ray.exceptions.RayTaskError as exc:
            # The actor ran the batch but Ray could not return it (an output that does not
            # pickle): the actor's method itself raised, not the user's function.
            raise SerializationError(
                f"layer {self.layer.name!r}: a Ray actor could not return its outputs:"
                f" {_cause(exc)!r}"
            ) from None

    async def close_worker(self, slot: int) -> None:
        state = self._slots.pop(slot, None)
        if state is None or state.actor is None:
            return
        actor, state.actor = state.actor, None
        try:
            if not self._stopped:
                try:
                    await actor.close.remote()
                except ray.exceptions.RayTaskError as exc:
                    raise _cause(exc) from None
                except self._errors:
                    pass  # died on its way out: nothing left to close
        finally:
            self._kill(actor)

    def stop(self) -> None:
        self._stopped = True
        for ref in list(self._in_flight):
            with contextlib.suppress(Exception):  # already finished, or its actor is gone
                ray.cancel(ref)

    def _kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already dead
            ray.kill(actor, no_restart=True)

    async def aclose(self) -> None:
        try:
            for actor in self._created:
                self._kill(actor)
            self._created.clear()
        finally:
            if self._acquired:
                self._acquired = False
                _release_ray()
