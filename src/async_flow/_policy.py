"""Error policies: what a layer does with an item whose function raised.

A policy is a small immutable object given to a layer (``af.Layer(fn, on_error=...)``). When an
item fails, the runtime asks the layer's policy for a :class:`Decision` and carries it out: raise
(fail the run), skip the item, record it as a dead letter, or run it again after a delay. The
policy itself does no I/O and keeps no state, so one policy object may serve many layers and runs,
and each is testable alone: :meth:`Policy.decide` is a pure function of the error, how many times
the item failed, and a random number.

Policies compose: :class:`Retry` hands what it does not retry to its ``then`` policy::

    af.Retry(3, backoff=0.1, on=(IOError,), then=af.DeadLetter(max_fraction=0.05))

Only ``Exception`` subclasses reach a policy; ``KeyboardInterrupt``, ``SystemExit`` and the run's
own cancellation always stop the run.
"""

from __future__ import annotations

import enum
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple

from ._report import Failure

__all__ = ("Action", "DeadLetter", "Decision", "Policy", "Raise", "Retry", "Skip")


class Action(enum.Enum):
    """What the runtime does with a failed item."""

    RAISE = "raise"
    SKIP = "skip"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"


class Decision(NamedTuple):
    """A policy's verdict on one failure: the action, the delay before a retry, and the policy
    that decided (the runtime reads its failure threshold)."""

    action: Action
    delay: float
    policy: Policy


class Policy(ABC):
    """Base class of the error policies.

    The runtime calls :meth:`decide` on the event loop each time an item fails; ``failures`` is how
    many times that item has failed so far (1 on its first failure) and ``rand`` a number drawn
    uniformly from [0, 1) for jitter.
    """

    __slots__ = ()

    @abstractmethod
    def decide(self, error: Exception, failures: int, rand: float) -> Decision:
        """The decision for ``error``, the ``failures``-th failure of one item."""


class Raise(Policy):
    """Fail fast: the first failure stops the run and is re-raised as itself. The default.

    Example::

        >>> import async_flow as af
        >>> af.Raise().decide(ValueError("bad"), 1, 0.0).action
        <Action.RAISE: 'raise'>
    """

    __slots__ = ()

    def decide(self, error: Exception, failures: int, rand: float) -> Decision:
        """Always :attr:`Action.RAISE`."""
        return Decision(Action.RAISE, 0.0, self)

    def __repr__(self) -> str:
        return "Raise()"


def _check_limits(owner: str, max_failures: int | None, max_fraction: float | None) -> None:
    if max_failures is not None and (
        isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0
    ):
        raise ValueError(f"{owner}: max_failures must be an int >= 0, got {max_failures!r}")
    if max_fraction is not None and not (
        isinstance(max_fraction, (int, float)) and 0 <= max_fraction <= 1
    ):
        raise ValueError(f"{owner}: max_fraction must be between 0 and 1, got {max_fraction!r}")


class _GiveUp(Policy):
    """A policy that gives up on an item and keeps the run going, up to a threshold."""

    __slots__ = ("max_failures", "max_fraction", "min_items")

    def __init__(
        self, max_failures: int | None, max_fraction: float | None, min_items: int
    ) -> None:
        _check_limits(type(self).__name__, max_failures, max_fraction)
        if isinstance(min_items, bool) or not isinstance(min_items, int) or min_items < 1:
            raise ValueError(
                f"{type(self).__name__}: min_items must be an int >= 1, got {min_items!r}"
            )
        self.max_failures = max_failures
        self.max_fraction = max_fraction
        self.min_items = min_items

    def exceeded(self, given_up: int, seen: int) -> str | None:
        """Why the run must stop after ``given_up`` of ``seen`` items were given up on, or None.

        ``max_failures`` is the number of items tolerated (one more fails the run);
        ``max_fraction`` is checked once the layer has seen at least ``min_items`` items, so that
        one early failure does not count as 100%.
        """
        if self.max_failures is not None and given_up > self.max_failures:
            return f"{given_up} items failed (max_failures={self.max_failures})"
        if (
            self.max_fraction is not None
            and seen >= self.min_items
            and given_up > self.max_fraction * seen
        ):
            return (
                f"{given_up} of {seen} items failed ({given_up / seen:.1%},"
                f" max_fraction={self.max_fraction:g})"
            )
        return None

    def _limits_repr(self) -> str:
        parts = []
        if self.max_failures is not None:
            parts.append(f"max_failures={self.max_failures}")
        if self.max_fraction is not None:
            parts.append(f"max_fraction={self.max_fraction}")
            parts.append(f"min_items={self.min_items}")
        return ", ".join(parts)


class Skip(_GiveUp):
    """Drop a failed item, count it (``LayerStats.skipped``) and keep going.

    ``max_failures`` and ``max_fraction`` stop a run that is failing everywhere: the run fails
    with :class:`~async_flow.TooManyFailures` once more than ``max_failures`` items were skipped,
    or more than ``max_fraction`` of the items the layer has received so far (checked once it has
    received ``min_items``).

    Example::

        >>> import async_flow as af
        >>> report = af.run([1, 0, 2], af.Layer(lambda x: 1 / x, on_error=af.Skip(max_failures=5)))
        >>> report.layers[0].emitted, report.layers[0].skipped
        (2, 1)
    """

    __slots__ = ()

    def __init__(
        self,
        max_failures: int | None = None,
        max_fraction: float | None = None,
        *,
        min_items: int = 20,
    ) -> None:
        super().__init__(max_failures, max_fraction, min_items)

    def decide(self, error: Exception, failures: int, rand: float) -> Decision:
        """Always :attr:`Action.SKIP`."""
        return Decision(Action.SKIP, 0.0, self)

    def __repr__(self) -> str:
        return f"Skip({self._limits_repr()})"


#: A dead-letter sink: called with the failed item itself and its :class:`Failure` record.
DeadLetterSink = Callable[[Any, Failure], Any]


class DeadLetter(_GiveUp):
    """Record a failed item and keep going: a :class:`~async_flow.Failure` in ``Report.failures``.

    The record names the layer and holds the item's ``repr``, the exception type, message and
    traceback. ``sink``, if given, is also called with the item itself and its record, on the
    event loop: keep it quick (append to a list or a file), or make it a coroutine function.
    An exception from the sink fails the run. Thresholds work as for :class:`Skip`, on the count
    of dead letters.

    Example::

        >>> import async_flow as af
        >>> letters = []
        >>> report = af.run(
        ...     [1, 0, 2],
        ...     af.Layer(lambda x: 1 / x, name="inv",
        ...              on_error=af.DeadLetter(sink=lambda item, f: letters.append(item))),
        ... )
        >>> letters, report.failures[0].layer, report.failures[0].error_type
        ([0], 'inv', 'ZeroDivisionError')
    """

    __slots__ = ("sink",)

    def __init__(
        self,
        sink: DeadLetterSink | None = None,
        *,
        max_failures: int | None = None,
        max_fraction: float | None = None,
        min_items: int = 20,
    ) -> None:
        if sink is not None and not callable(sink):
            raise TypeError(f"DeadLetter: sink must be callable, got {type(sink).__name__}")
        super().__init__(max_failures, max_fraction, min_items)
        self.sink = sink

    def decide(self, error: Exception, failures: int, rand: float) -> Decision:
        """Always :attr:`Action.DEAD_LETTER`."""
        return Decision(Action.DEAD_LETTER, 0.0, self)

    async def deliver(self, item: Any, failure: Failure) -> None:
        """Hand one dead letter to the user's sink, if there is one."""
        if self.sink is None:
            return
        result = self.sink(item, failure)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        limits = self._limits_repr()
        sink = f"sink={self.sink!r}" if self.sink is not None else ""
        return f"DeadLetter({', '.join(p for p in (sink, limits) if p)})"


def _exception_types(on: Any) -> tuple[type[BaseException], ...]:
    types = on if isinstance(on, tuple) else (on,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, Exception)):
            raise TypeError(f"Retry: on must be exception types, got {t!r}")
    return types


def retry_after(error: BaseException) -> float | None:
    """The ``retry_after`` seconds an error carries (a finite number >= 0), or None."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value < float("inf"):
        return None
    return float(value)


class Retry(Policy):
    """Run a failed item again, up to ``retries`` more times, with exponential backoff and jitter.

    Only errors that are instances of ``on`` are retried; any other error, and an item still
    failing after ``retries`` re-runs, goes to ``then`` (default: :class:`Raise`). The delay before
    re-run ``k`` (1, 2, ...) is drawn from ``min(max_backoff, backoff * factor ** (k - 1))``
    reduced by a random share of up to ``jitter``: the default ``jitter=1`` is "full jitter", a
    delay anywhere between zero and that bound, which spreads out workers that failed together
    (an overloaded service sees their retries one by one, not in waves); ``jitter=0`` waits the
    bound exactly. An error with a ``retry_after`` attribute (a number of seconds, as a service's
    ``Retry-After`` says) is retried after exactly that long instead, neither jittered nor capped:
    the service said when. The worker holding the item waits; the others go on. A re-run is a new
    start for the layer's :class:`~async_flow.Limit`, if it has one. The runtime counts every
    re-run in ``LayerStats.retried``.

    A crashed worker process or actor (:class:`~async_flow.WorkerCrashed`) and a timed-out item
    (:class:`~async_flow.ItemTimeout`) are errors like any other: add them to ``on`` to retry them.

    Example::

        >>> import async_flow as af
        >>> policy = af.Retry(3, backoff=0.1, on=(OSError,), then=af.Skip())
        >>> [round(policy.decide(OSError(), n, 0.0).delay, 3) for n in (1, 2, 3)]
        [0.1, 0.2, 0.4]
        >>> round(policy.decide(OSError(), 1, 0.75).delay, 3)  # full jitter: anywhere in [0, 0.1]
        0.025
        >>> late = OSError("429 Too Many Requests")
        >>> late.retry_after = 2.5
        >>> policy.decide(late, 1, 0.75).delay
        2.5
        >>> policy.decide(OSError(), 4, 0.0).action, policy.decide(KeyError(), 1, 0.0).action
        (<Action.SKIP: 'skip'>, <Action.SKIP: 'skip'>)
    """

    __slots__ = ("backoff", "factor", "jitter", "max_backoff", "on", "retries", "then")

    def __init__(
        self,
        retries: int = 3,
        *,
        backoff: float = 0.1,
        factor: float = 2.0,
        max_backoff: float = 30.0,
        jitter: float = 1.0,
        on: type[Exception] | tuple[type[Exception], ...] = Exception,
        then: Policy | None = None,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Retry: retries must be an int >= 0, got {retries!r}")
        for name, value, low in (("backoff", backoff, 0.0), ("max_backoff", max_backoff, 0.0)):
            if not isinstance(value, (int, float)) or not value >= low:
                raise ValueError(f"Retry: {name} must be a number >= {low:g}, got {value!r}")
        if not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(f"Retry: factor must be a number >= 1, got {factor!r}")
        if not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ValueError(f"Retry: jitter must be between 0 and 1, got {jitter!r}")
        if then is not None and not isinstance(then, Policy):
            raise TypeError(f"Retry: then must be a policy (af.Skip(), ...), got {then!r}")
        self.retries = retries
        self.backoff = float(backoff)
        self.factor = float(factor)
        self.max_backoff = float(max_backoff)
        self.jitter = float(jitter)
        self.on = _exception_types(on)
        self.then: Policy = then if then is not None else Raise()

    def delay(self, retry: int, rand: float) -> float:
        """Seconds to wait before re-run number ``retry`` (1-based), given ``rand`` in [0, 1)."""
        base = min(self.max_backoff, self.backoff * self.factor ** (retry - 1))
        return base * (1.0 - self.jitter * rand)

    def decide(self, error: Exception, failures: int, rand: float) -> Decision:
        """Retry ``on`` errors while the item failed at most ``retries`` times, else ``then``."""
        if failures <= self.retries and isinstance(error, self.on):
            after = retry_after(error)
            delay = after if after is not None else self.delay(failures, rand)
            return Decision(Action.RETRY, delay, self)
        return self.then.decide(error, failures, rand)

    def __repr__(self) -> str:
        names = ", ".join(t.__name__ for t in self.on)
        return (
            f"Retry({self.retries}, backoff={self.backoff:g}, factor={self.factor:g},"
            f" max_backoff={self.max_backoff:g}, jitter={self.jitter:g}, on=({names}),"
            f" then={self.then!r})"
        )
