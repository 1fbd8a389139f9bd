"""Layer: what the user declares for one stage of a pipeline (validated at construction)."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar, overload

from ._autoscale import Auto
from ._limit import Limit
from ._policy import Policy, Raise

__all__ = ("BACKENDS", "DEFAULT_MAXSIZE", "Kind", "Layer", "call_kind", "named_by_position")

# A layer consumes ``In`` and produces ``Out``: ``Layer[int, bool]`` is a ``Layer[bool, object]``.
In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)


class _PerItem(Protocol[In, Out]):
    """What the instances of a stateful worker class are: called with one item."""

    def __call__(self, item: In, /) -> Out: ...


#: The backend names a layer may ask for. Each is one module under ``async_flow.backends``.
BACKENDS: tuple[str, ...] = ("async", "thread", "process", "ray")

#: Bound of a layer's input channel when ``maxsize`` is not given.
DEFAULT_MAXSIZE = 256


class Kind(enum.Enum):
    """How a layer's callable turns one input into outputs."""

    MAP = "map"  # plain function: one output
    FLAT = "flat"  # generator function: zero or more outputs
    AMAP = "amap"  # coroutine function: one output
    AFLAT = "aflat"  # async generator function: zero or more outputs

    @property
    def is_async(self) -> bool:
        return self in (Kind.AMAP, Kind.AFLAT)

    @property
    def is_flat(self) -> bool:
        return self in (Kind.FLAT, Kind.AFLAT)


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def call_kind(fn: Callable[..., Any]) -> Kind:
    """Classify a per-item callable (a function, or an instance with ``__call__``)."""
    target = _unwrap(fn)
    if not (inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)):
        call = getattr(type(target), "__call__", None)  # noqa: B004 - we want the method itself
        if call is not None and not inspect.isclass(target):
            target = call
    if inspect.isasyncgenfunction(target):
        return Kind.AFLAT
    if inspect.iscoroutinefunction(target):
        return Kind.AMAP
    if inspect.isgeneratorfunction(target):
        return Kind.FLAT
    return Kind.MAP


#: The name of a layer whose function is a lambda, until the run names it by its position.
LAMBDA = "<lambda>"


def _describe(fn: Any) -> str:
    name: str = getattr(_unwrap(fn), "__qualname__", None) or type(fn).__name__
    # "main.<locals>.parse" reads "parse", and every lambda "<lambda>" (see named_by_position).
    return name.rpartition("<locals>.")[2]


def named_by_position(layers: tuple[Layer[Any, Any], ...]) -> tuple[Layer[Any, Any], ...]:
    """``layers``, with each unnamed lambda's layer renamed for its place: ``"layer 2 (lambda)"``.

    A lambda has no name of its own; its place in the pipeline (counted from 1) tells it apart in
    the progress, the report and the error notes. Give ``name=`` to choose one.
    """
    named = []
    for position, layer in enumerate(layers, 1):
        if layer.name == LAMBDA and getattr(_unwrap(layer.fn), "__name__", None) == LAMBDA:
            layer = layer._renamed(f"layer {position} (lambda)")
        named.append(layer)
    return tuple(named)


class Layer(Generic[In, Out]):
    """One stage of a pipeline: ``fn`` applied to every item by ``workers`` workers on a backend.

    ``fn`` may be a plain function (one output per item), a generator function (each yielded
    value goes on: fan-out; yielding nothing filters), a coroutine function, an async generator
    function, or a class with ``__call__``. Such a class is built once per worker with ``args``
    and ``kwargs`` (the stateful worker that loads a model or opens a connection once); the
    instance is called per item and closed at the end of the run (``__exit__``/``__aexit__`` if
    it is a context manager, else ``close()``/``aclose()`` if it has one). A class without
    ``__call__`` (``int``, a dataclass) is called per item like a function.

    Type checkers infer ``Layer[In, Out]`` from ``fn``: ``In`` is the type of the item it takes,
    ``Out`` the type of one output (what a plain or coroutine function returns, what a generator
    or async generator function yields; for a class, what its ``__call__`` does). Annotate a
    generator function as returning ``Iterator[Out]`` or ``Generator[Out, ...]``: one annotated
    ``Iterable[Out]`` is typed as a plain function returning the iterable. ``args`` and ``kwargs``
    are not checked against the class's constructor (they are ``Any``). A generic function
    (``def same(x: T) -> T``) needs the types spelled out: ``Layer[int, int](same)``.

    Args:
        fn: the per-item callable, or a class whose instances are.
        workers: how many items the layer works on at once (threads, tasks, processes, actors),
            or :class:`~async_flow.Auto` to let the run find the count (``workers`` is then the
            starting count and ``autoscale`` holds the bounds).
        backend: where ``fn`` runs: ``"async"`` (default for coroutine and async generator
            functions), ``"thread"`` (default for plain and generator functions), ``"process"``
            or ``"ray"``. ``"process"`` ships ``fn`` with cloudpickle and never re-imports your
            ``__main__``: it works from a script with or without an ``if __name__ ==
            "__main__":`` guard (keep one so that importing the script does not run the
            pipeline) and from a Jupyter notebook, lambdas and closures included.
        maxsize: bound of the layer's input channel. A full channel suspends the layer above:
            that is the back-pressure that keeps memory flat. Default :data:`DEFAULT_MAXSIZE`
            (or twice the workers if more). Without an explicit ``maxsize``, a ``"thread"``,
            ``"process"`` or ``"ray"`` layer whose items turn out tiny gets a wider channel as it
            runs (up to 4096 items per thread, 16,384 per process or actor), because its
            batches are cut from what the channel holds and a batch of tiny items must be large
            to be worth a thread hop, a pipe write or a remote call. It never grows wider than what
            the layers below can take in (nor than the ``maxsize`` of an ``open_stream`` whose
            reader has not waited for items within the last second), so a cheap layer held
            back by a slow one keeps this bound, and it falls back to it when the items turn
            slow.
        ordered: outputs leave the layer in the order their inputs arrived (a bounded reorder
            buffer holds early finishers).
        name: shown in progress, reports and error notes; defaults to ``fn``'s name (a lambda's
            layer is named for its place in the pipeline: ``"layer 2 (lambda)"``).
        args, kwargs: constructor arguments when ``fn`` is a class.
        options: backend-specific settings (for ``"ray"``: ``num_cpus``, ``num_gpus``, ...;
            for ``"process"``: ``start_method``, ``"auto"`` to fork a single-threaded parent
            for a fast start and start fresh interpreters otherwise, or ``"spawn"`` for fresh
            interpreters always).
        on_error: what to do with an item whose function raised: an error policy
            (:class:`~async_flow.Raise`, the default, fails the run; :class:`~async_flow.Skip`,
            :class:`~async_flow.Retry`, :class:`~async_flow.DeadLetter` keep it going).
        timeout: seconds one item may take. A late item fails with
            :class:`~async_flow.ItemTimeout`, which goes through ``on_error``: async work is
            cancelled; a thread, process or actor stuck on the item is abandoned or stopped and
            replaced by a fresh worker. A plain function on the ``"async"`` backend runs on the
            event loop and cannot be timed out.
        limit: an :class:`~async_flow.Limit` (item starts per second, items at once) that this
            layer shares with every other layer given the same object; retries count. The run
            meters each batch before a worker gets it (a unit per batch, a token per item, the
            unspent ones held back until the batch is back), on every backend.
        rate: shorthand for ``limit=af.Limit(rate=rate)``: a limit of this layer's own.

    Example::

        >>> import async_flow as af
        >>> layer = af.Layer(str.upper, 4, name="shout")
        >>> (layer.name, layer.workers, layer.backend)
        ('shout', 4, 'thread')

    Bad declarations fail here, not when the pipeline runs.
    """

    __slots__ = (
        "args",
        "autoscale",
        "backend",
        "fixed_maxsize",
        "fn",
        "is_class",
        "kind",
        "kwargs",
        "limit",
        "maxsize",
        "name",
        "on_error",
        "options",
        "ordered",
        "stream",
        "timeout",
        "workers",
    )

    # The overloads only give the types (``Layer[In, Out]`` from ``fn``'s annotations); the kind
    # is decided at run time by ``call_kind`` from what ``fn`` is. Most specific first: a class
    # before a function (a class is also callable: its constructor), streams before plain values
    # (a generator function is also a ``Callable[[In], Out]``). Only a class takes
    # ``args``/``kwargs``. The two disagree only for a plain function returning an iterator or a
    # coroutine (typed as a generator or coroutine function, while the run passes the object on).
    @overload
    def __init__(
        self,
        fn: type[_PerItem[In, AsyncIterable[Out]]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: type[_PerItem[In, Coroutine[Any, Any, Out]]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: type[_PerItem[In, Iterator[Out]]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: type[_PerItem[In, Out]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: Callable[[In], AsyncIterable[Out]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: Callable[[In], Coroutine[Any, Any, Out]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: Callable[[In], Iterator[Out]],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: Callable[[In], Out],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None: ...
    def __init__(
        self,
        fn: Callable[..., Any],
        workers: int | Auto = 1,
        *,
        backend: str | None = None,
        maxsize: int | None = None,
        ordered: bool = False,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        on_error: Policy | None = None,
        timeout: float | None = None,
        limit: Limit | None = None,
        rate: float | None = None,
    ) -> None:
        label = name or _describe(fn)
        if not callable(fn):
            raise TypeError(f"Layer {label!r}: fn must be callable, got {type(fn).__name__}")
        autoscale = workers if isinstance(workers, Auto) else None
        if autoscale is not None:
            workers = autoscale.start if autoscale.start is not None else autoscale.min
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"Layer {label!r}: workers must be an int, got {workers!r}")
        if workers < 1:
            raise ValueError(f"Layer {label!r}: workers must be >= 1, got {workers}")
        if maxsize is not None:
            if isinstance(maxsize, bool) or not isinstance(maxsize, int):
                raise TypeError(f"Layer {label!r}: maxsize must be an int, got {maxsize!r}")
            if maxsize < 1:
                raise ValueError(f"Layer {label!r}: maxsize must be >= 1, got {maxsize}")
        if on_error is not None and not isinstance(on_error, Policy):
            raise TypeError(
                f"Layer {label!r}: on_error must be a policy (af.Skip(), af.Retry(...), ...),"
                f" got {on_error!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ValueError(f"Layer {label!r}: timeout must be a number > 0, got {timeout!r}")
        if limit is not None and rate is not None:
            raise ValueError(
                f"Layer {label!r}: give limit= or rate= (shorthand for limit=af.Limit(rate=...)),"
                " not both"
            )
        if limit is not None and not isinstance(limit, Limit):
            raise TypeError(f"Layer {label!r}: limit must be an af.Limit, got {limit!r}")
        if rate is not None:
            try:
                limit = Limit(rate=rate)
            except ValueError as exc:
                raise ValueError(f"Layer {label!r}: {exc}") from None
        if backend is not None and backend not in BACKENDS:
            valid = ", ".join(repr(b) for b in BACKENDS)
            raise ValueError(f"Layer {label!r}: unknown backend {backend!r}; valid: {valid}")
        # A class whose instances are callable is a stateful worker; any other class (``int``,
        # a dataclass) is called per item like a function.
        owner = None
        if inspect.isclass(fn):
            owner = next((k for k in fn.__mro__ if "__call__" in vars(k)), object)
            if owner is object or owner is type:
                owner = None
        is_class = owner is not None
        if (args or kwargs) and not is_class:
            raise TypeError(
                f"Layer {label!r}: args/kwargs are for a class with __call__, not a function"
            )
        kind = call_kind(vars(owner)["__call__"]) if owner is not None else call_kind(fn)

        self.fn = fn
        self.workers = workers
        #: The bounds the run scales ``workers`` within, or None for a fixed count.
        self.autoscale: Auto | None = autoscale
        self.kind = kind
        self.is_class = is_class
        self.backend: str = backend or ("async" if kind.is_async else "thread")
        most = autoscale.max if autoscale is not None and autoscale.max is not None else workers
        #: False when the run may widen the input channel for large batches (see ``maxsize``).
        self.fixed_maxsize = maxsize is not None
        self.maxsize = maxsize if maxsize is not None else max(DEFAULT_MAXSIZE, 2 * most)
        self.ordered = ordered
        self.name = label
        self.args = tuple(args)
        self.kwargs: Mapping[str, Any] = dict(kwargs or {})
        self.options: Mapping[str, Any] = dict(options or {})
        self.on_error: Policy = on_error if on_error is not None else Raise()
        self.timeout: float | None = float(timeout) if timeout is not None else None
        #: The budget of starts this layer shares (metered by the run, in the parent).
        self.limit: Limit | None = limit
        #: For helper layers that read their whole input channel at once (see ``_helpers``):
        #: an async generator function taking the channel and yielding lists of outputs.
        self.stream: Callable[[Any], AsyncIterator[list[Any]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to worker processes and actors without its error policy, which only ever runs
        # in the parent: a dead-letter sink (an open file, a connection) need not pickle.
        state = {name: getattr(self, name) for name in self.__slots__}
        state["on_error"] = Raise()
        state["limit"] = None  # metered by the parent alone
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _renamed(self, name: str) -> Layer[In, Out]:
        """A copy of this layer under another name (the error policy is kept, not reset)."""
        copy: Layer[In, Out] = object.__new__(type(self))
        for slot in self.__slots__:
            setattr(copy, slot, getattr(self, slot))
        copy.name = name
        return copy

    @classmethod
    def _from_stream(
        cls,
        stream: Callable[[Any], AsyncIterator[list[Any]]],
        *,
        name: str,
        maxsize: int | None = None,
    ) -> Layer[Any, Any]:
        """A single-worker layer whose function consumes the input channel as a whole."""
        layer: Layer[Any, Any] = cls(stream, 1, backend="async", maxsize=maxsize, name=name)
        layer.stream = stream
        return layer

    def __repr__(self) -> str:
        extra = ", ordered=True" if self.ordered else ""
        if self.limit is not None:
            extra += f", limit={self.limit!r}"
        workers = repr(self.autoscale) if self.autoscale is not None else str(self.workers)
        return (
            f"Layer({self.name!r}, workers={workers}, backend={self.backend!r},"
            f" maxsize={self.maxsize}{extra})"
        )
