"""Live progress: frozen progress snapshots and the views that show them.

The run's sampler (see ``_sampler``) reads the layers' counters at an interval and hands a
:class:`ProgressSnapshot` to a :class:`ProgressView`: a live table on a terminal
(:class:`LiveProgress`, drawn with rich), one compact line per interval on stderr or through
:mod:`logging` (:class:`LogProgress`), or a function of the caller's (:class:`CallbackProgress`).
Nothing here runs on the per-item path.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = (
    "CallbackProgress",
    "LayerProgress",
    "LiveProgress",
    "LogProgress",
    "ProgressSnapshot",
    "ProgressView",
    "format_line",
    "render",
    "resolve_progress",
)

#: Where :class:`LogProgress` writes unless given a logger.
LOGGER_NAME = "async_flow.progress"


@dataclass(frozen=True, slots=True)
class LayerProgress:
    """One layer's row in a :class:`ProgressSnapshot`.

    ``done`` counts the items the layer has taken in; ``total`` is how many it is expected to
    take in all (known when the source's length is, or the run was given ``total=``; for a layer
    below one that filters, fans out or batches it is estimated from the in/out ratio seen so
    far). ``rate`` is items per second over the last few seconds, ``queued``/``maxsize`` the fill
    of its input channel, ``busy_workers`` how many of its ``workers`` hold an item, ``eta`` the
    seconds it needs for the rest at the current rate. ``limit_seconds`` is the time its items
    have waited on its :class:`~async_flow.Limit` so far, summed over its workers (``None``: the
    layer has no limit).

    Example::

        >>> import async_flow as af
        >>> seen = []
        >>> _ = af.run(range(4), af.Layer(str, 2, name="text"), progress=seen.append)
        >>> row = seen[-1].layers[0]
        >>> row.name, row.workers, row.done, row.total, row.fill
        ('text', 2, 4, 4, 0.0)
    """

    name: str
    backend: str
    workers: int
    done: int
    total: int | None
    emitted: int
    errors: int
    rate: float
    queued: int
    maxsize: int
    busy_workers: int
    eta: float | None
    limit_seconds: float | None = None

    @property
    def fill(self) -> float:
        """How full the layer's input channel is (0..1)."""
        return self.queued / self.maxsize if self.maxsize else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """Where a run stands: what a progress callback receives, as plain frozen data.

    ``status`` is ``"running"`` (``"draining"`` once a SIGINT or SIGTERM has stopped the source
    and the items inside are being finished) until the last snapshot, which says how the run
    ended (``"completed"``, ``"failed"``, ``"cancelled"`` or ``"interrupted"``). ``produced``
    counts source items, ``total`` is the source's length when known, ``eta`` the estimated
    seconds left. ``already_committed`` is the part of ``produced`` that a checkpoint skipped
    because an earlier run had committed it (a layer's ``total`` leaves those out).

    Example::

        >>> import async_flow as af
        >>> seen = []
        >>> _ = af.run(range(10), af.Layer(str, name="text"), progress=seen.append)
        >>> last = seen[-1]
        >>> last.status, last.layers[0].done, last.total
        ('completed', 10, 10)
        >>> last.to_dict()["layers"][0]["name"]
        'text'
    """

    elapsed: float
    status: str
    produced: int
    total: int | None
    eta: float | None
    layers: tuple[LayerProgress, ...]
    already_committed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {
            "elapsed": self.elapsed,
            "status": self.status,
            "produced": self.produced,
            "total": self.total,
            "eta": self.eta,
            "layers": [layer.to_dict() for layer in self.layers],
            "already_committed": self.already_committed,
        }

    def to_json(self, **kwargs: Any) -> str:
        """The snapshot as a JSON document (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)


# --- formatting ----------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """A short human duration: ``"4.2s"``, ``"3m07s"``, ``"1h02m"``; ``"-"`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rate(rate: float) -> str:
    return f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.1f}/s"


def _done(layer: LayerProgress) -> str:
    return f"{layer.done:,}/{layer.total:,}" if layer.total is not None else f"{layer.done:,}"


def _committed(snapshot: ProgressSnapshot) -> str:
    return f"{snapshot.already_committed:,} source items already committed, skipped"


def format_line(snapshot: ProgressSnapshot) -> str:
    """The snapshot as one compact log line (what :class:`LogProgress` writes)."""
    parts = []
    for layer in snapshot.layers:
        extra = f" err {layer.errors}" if layer.errors else ""
        if layer.limit_seconds is not None:  # limit hook
            extra += f" limit {duration(layer.limit_seconds)}"
        parts.append(
            f"{layer.name} {_done(layer)} {_rate(layer.rate)} q {layer.queued}/{layer.maxsize}"
            f" busy {layer.busy_workers}/{layer.workers}{extra}"
        )
    head = f"async_flow {snapshot.status} {duration(snapshot.elapsed)}"
    if snapshot.already_committed:
        head += f" | {_committed(snapshot)}"
    tail = f" | eta {duration(snapshot.eta)}" if snapshot.status == "running" else ""
    if not parts:  # no layers: the source alone
        parts.append(f"source {snapshot.produced:,}")
    return f"{head} | " + " | ".join(parts) + tail


def render(snapshot: ProgressSnapshot) -> RenderableType:
    """The snapshot as a rich table (what :class:`LiveProgress` draws)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("layer", no_wrap=True)
    table.add_column("backend", no_wrap=True)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("", width=12)
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)
    table.add_column("queue", justify="right", no_wrap=True)
    table.add_column("busy", justify="right", no_wrap=True)
    table.add_column("eta", justify="right", no_wrap=True)
    limited = any(layer.limit_seconds is not None for layer in snapshot.layers)
    if limited:  # limit hook: time waited on the limit
        table.add_column("limit", justify="right", no_wrap=True)
    for layer in snapshot.layers:
        bar: RenderableType = ""
        if layer.total:
            bar = ProgressBar(total=layer.total, completed=min(layer.done, layer.total), width=12)
        cells: list[RenderableType] = [
            layer.name,
            f"{layer.backend} x{layer.workers}",
            _done(layer),
            bar,
            _rate(layer.rate),
            Text(str(layer.errors), style="red" if layer.errors else ""),
            f"{layer.queued}/{layer.maxsize}",
            f"{layer.busy_workers}/{layer.workers}",
            duration(layer.eta) if snapshot.status == "running" else "",
        ]
        if limited:
            cells.append(duration(layer.limit_seconds) if layer.limit_seconds is not None else "")
        table.add_row(*cells)
    source = f"{snapshot.produced:,}"
    if snapshot.total is not None:
        source += f"/{snapshot.total:,}"
    if snapshot.already_committed:
        source += f" ({_committed(snapshot)})"
    head = Text.assemble(
        ("async_flow ", "bold"),
        (snapshot.status, "green" if snapshot.status == "completed" else ""),
        f"  {duration(snapshot.elapsed)}  source {source}",
        f"  eta {duration(snapshot.eta)}" if snapshot.status == "running" else "",
    )
    return Group(head, table)


# --- views ---------------------------------------------------------------------------------


class ProgressView:
    """Where a run's progress goes: subclass and override :meth:`update` to send it elsewhere.

    The run calls :meth:`open` once it starts, :meth:`update` every :attr:`interval` seconds
    with a fresh :class:`ProgressSnapshot`, and :meth:`close` once with the last snapshot,
    however the run ends. They run on the run's event loop: keep them quick. An exception
    raised from them fails the run like an error in a layer.

    Example::

        >>> import async_flow as af
        >>> class Count(af.ProgressView):
        ...     calls = 0
        ...     def update(self, snapshot):
        ...         self.calls += 1
        >>> view = Count(interval=0.5)
        >>> _ = af.run(range(3), af.Layer(str), progress=view)
        >>> view.calls >= 1
        True
    """

    def __init__(self, interval: float = 1.0) -> None:
        if not interval > 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval!r}")
        self.interval = interval

    def open(self) -> None:
        """The run has started (before the first :meth:`update`)."""

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Show ``snapshot`` (called every :attr:`interval` seconds while the run goes on)."""

    def close(self, snapshot: ProgressSnapshot) -> None:
        """The run has ended; ``snapshot`` is the last one. By default, one last update."""
        self.update(snapshot)


class CallbackProgress(ProgressView):
    """Calls ``fn(snapshot)`` every ``interval`` seconds and once at the end.

    What ``progress=fn`` makes: use it directly to choose the interval, e.g. to push progress to a
    service's own UI.

    Example::

        >>> import async_flow as af
        >>> snapshots = []
        >>> _ = af.run(range(5), af.Layer(str), progress=af.CallbackProgress(snapshots.append, 0.1))
        >>> snapshots[-1].status
        'completed'
    """

    def __init__(self, fn: Callable[[ProgressSnapshot], object], interval: float = 1.0) -> None:
        super().__init__(interval)
        if not callable(fn):
            raise TypeError(f"progress callback must be callable, got {type(fn).__name__}")
        self.fn = fn

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Hand ``snapshot`` to the callback."""
        self.fn(snapshot)


def growing_interval(elapsed: float) -> float:
    """Seconds until the next line of a run ``elapsed`` seconds old: a tenth of its age, from 1
    to 10 s. A 3-second run gets a line a second; an hour-long one one every 10 s, so a log
    stays readable however long the run."""
    return min(10.0, max(1.0, elapsed / 10.0))


class LogProgress(ProgressView):
    """Writes one compact line per interval: to stderr, or through :mod:`logging` once the
    program has configured it.

    What ``progress=True`` uses when stderr is not a terminal (CI, log files, ``nohup``), as
    tqdm does there. Each line goes to the ``"async_flow.progress"`` logger (or ``logger``) at
    ``level`` when that logger has a handler on its way to the root (``logging.basicConfig()``,
    a handler on ``"async_flow"``, ...), else straight to ``sys.stderr``. With a ``logger``
    given, lines always go through it. Without an ``interval``, lines come every second at the
    start, then less often as the run ages, up to one every 10 s (see :func:`growing_interval`).

    Example::

        >>> import logging, async_flow as af
        >>> logging.basicConfig(level=logging.INFO)  # doctest: +SKIP
        >>> _ = af.run(range(5), af.Layer(str), progress=af.LogProgress(interval=10))
        ... # doctest: +SKIP
        INFO:async_flow.progress:async_flow completed 0.0s | str 5/5 ...
    """

    def __init__(
        self,
        interval: float | None = None,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(1.0 if interval is None else interval)
        self._grows = interval is None
        self._always_log = logger is not None
        self.logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self.level = level

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Write ``snapshot`` as one line."""
        line = format_line(snapshot)
        if self._always_log or self.logger.hasHandlers():
            self.logger.log(self.level, "%s", line)
        else:
            stream = sys.stderr  # looked up each time: the program may redirect it
            if stream is not None:
                print(line, file=stream, flush=True)
        if self._grows:
            self.interval = growing_interval(snapshot.elapsed)


class LiveProgress(ProgressView):
    """A live table on a terminal, one row per layer, redrawn every ``interval`` seconds.

    Drawn with rich on ``console`` (default: a console on stderr). What ``progress=True`` uses
    when stderr is a terminal. The last table stays on screen unless ``transient``.

    Example::

        >>> import async_flow as af
        >>> from rich.console import Console
        >>> _ = af.run(range(5), af.Layer(str), progress=af.LiveProgress(console=Console()))
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        interval: float = 0.2,
        transient: bool = False,
    ) -> None:
        super().__init__(interval)
        self.console = console
        self.transient = transient
        self._live: Live | None = None

    def open(self) -> None:
        """Start drawing."""
        from rich.console import Console
        from rich.live import Live

        console = self.console if self.console is not None else Console(stderr=True)
        # No auto-refresh: rich would start a thread of its own; the run's sampler redraws.
        self._live = Live(console=console, auto_refresh=False, transient=self.transient)
        self._live.start()

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Redraw the table."""
        if self._live is not None:
            self._live.update(render(snapshot), refresh=True)

    def close(self, snapshot: ProgressSnapshot) -> None:
        """Draw the last table and stop."""
        live, self._live = self._live, None
        if live is not None:
            try:
                live.update(render(snapshot), refresh=True)
            finally:
                live.stop()


ProgressOption = bool | None | ProgressView | Callable[[ProgressSnapshot], object]


def resolve_progress(progress: ProgressOption) -> ProgressView | None:
    """The view for a ``progress=`` argument.

    ``None`` (the default): a live table when stderr is a terminal, else nothing. ``True``: the
    live table on a terminal, else plain lines (:class:`LogProgress`). ``False``: nothing. A
    callable: called with each snapshot. A :class:`ProgressView`: used as it is.
    """
    if isinstance(progress, ProgressView):
        return progress
    if progress is None or progress is True:
        if _stderr_is_terminal():
            return LiveProgress()
        return LogProgress() if progress else None
    if progress is False:
        return None
    if callable(progress):
        return CallbackProgress(progress)
    raise TypeError(
        "progress must be True, False, None, a callable or an af.ProgressView,"
        f" got {type(progress).__name__}"
    )


def _stderr_is_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
