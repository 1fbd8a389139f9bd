"""Autoscaling: layers that find their own worker count while the run goes.

A layer declared with ``Layer(fn, Auto(min=1, max=8))`` starts at ``min`` workers (or ``start``);
one controller task per run then looks at every autoscaled layer a few times a second and

- **adds** workers while the layer's input channel stays full and its workers stay busy (not
  blocked on a full output channel: then the layer below is the one holding the run back);
- **retires** workers while the layer starves: the work it gets would fit in fewer workers.

Both need the condition to hold for several consecutive looks (hysteresis), and a layer that just
changed sits out one look, so a measurement never straddles a change. Layers outside the CPU
budget (their workers mostly wait, so an extra one costs little) grow fourfold at a time, and each
growth is checked: the layer keeps as many of the added workers as the measured gain in
throughput justifies, each kept worker having to add at least half its share (a thread layer bound
by the GIL, a remote service at its limit gain little), and it does not grow again for a while if
it gave any back.

CPU-bound layers draw on a CPU budget, less what the fixed-size layers of the same kind hold:
process layers on the CPUs this process may use (cgroup limits included), Ray layers on the CPUs
of the Ray cluster (read once, when the run starts; a worker costs its ``num_cpus``). The two are
separate budgets, since Ray actors generally run on other machines. When several layers of a
budget want more workers than it has left, the one that holds its producer back the most gets them
first, and the total never exceeds the budget. Async and thread layers have no CPU budget, only
their ``max``.

The controller reads counters snapshots only (nothing on the per-item path) and wakes on a
:class:`Clock`, on which it also measures throughput (items per second of that clock), so tests
can drive it with a :class:`ManualClock` and set the pace of a layer's work per look. Each
decision is recorded as a :class:`ScalingEvent` with its reason, in
:attr:`Report.scaling <async_flow.Report.scaling>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._runtime import LayerRun
    from ._stats import LayerStats

__all__ = (
    "CPU_BOUND_BACKENDS",
    "Auto",
    "Autoscaler",
    "Clock",
    "ManualClock",
    "ScalingEvent",
    "available_cpus",
    "current_clock",
    "ray_cluster_cpus",
    "use_clock",
)

#: Backends whose workers each take a core: each backend has its own CPU budget in a run (the
#: CPUs of this machine for processes, those of the Ray cluster for Ray actors).
CPU_BOUND_BACKENDS = frozenset({"process", "ray"})
#: Default ``max`` for layers outside the CPU budget (their workers mostly wait).
DEFAULT_MAX = {"async": 256, "thread": 64}

#: Seconds between two looks at the layers.
INTERVAL = 0.05
#: Consecutive looks a layer must be short of workers before it gets more.
UP_AFTER = 2
#: Consecutive looks a layer must starve before it loses workers (slower: adding back costs more).
DOWN_AFTER = 10
#: Busy share of the workers at which a pressed layer counts as short of workers.
BUSY = 0.8
#: Busy share the remaining workers may reach after a retirement: CPU-bound workers cost a core
#: each, so they run fuller; other workers are cheap, so they keep more headroom.
TARGET = {True: 0.7, False: 0.5}
#: A layer that grows right after shrinking waits this many times longer before its next shrink.
FLAP_BACKOFF = 2
#: Share of a look's worker time spent waiting on a full output at which a layer counts as held
#: up by the layer below (more workers would not help it).
BLOCKED = 0.2
#: Share of a look's worker time spent waiting on the layer's af.Limit at which the limit, not
#: the workers, holds the layer back (more workers would only wait on it too).
LIMITED = 0.2
#: Factor by which a short layer outside the CPU budget grows: its workers mostly wait, so a
#: large step finds the count it needs in a few looks, and the verdict on the growth trims it.
GROWTH = 4
#: Items a throughput measurement needs before it is trusted (fewer: no verdict).
MIN_ITEMS = 20
#: Looks a growth without a gain in throughput keeps the layer from growing again.
CAP_LOOKS = 100


@dataclass(frozen=True, slots=True)
class Auto:
    """A worker count the run finds by itself, between ``min`` and ``max``.

    Pass it as a layer's ``workers``. The layer starts with ``start`` workers (default ``min``);
    the run adds workers while the layer's input channel stays full and its workers are busy, and
    retires idle ones while it starves (a retired worker finishes its batch first; a stateful
    worker's instance is closed, a Ray worker's actor killed). ``max=None`` means: for
    ``"process"`` layers, the CPUs available to this process; for ``"ray"`` layers, the CPUs of
    the Ray cluster (as the run starts) divided by the layer's ``num_cpus`` option (default 1);
    64 for ``"thread"`` and 256 for ``"async"`` layers.

    Process and Ray layers each draw on a CPU budget that the autoscaled layers of that backend
    share, less what its fixed-size layers hold, so that together they never oversubscribe it:
    one budget for the cores of this machine (processes), another for the Ray cluster's CPUs
    (actors, generally on other machines). With a Ray instance local to this machine both
    budgets count the same cores: give one of the layers a ``max`` if both kinds autoscale.

    Example::

        >>> import async_flow as af
        >>> layer = af.Layer(str.upper, af.Auto(min=2, max=8))
        >>> layer.workers, layer.autoscale.max
        (2, 8)
    """

    min: int = 1
    max: int | None = None
    start: int | None = None

    def __post_init__(self) -> None:
        for field in ("min", "max", "start"):
            value = getattr(self, field)
            if value is None and field != "min":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Auto: {field} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"Auto: {field} must be >= 1, got {value}")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"Auto: max ({self.max}) must be >= min ({self.min})")
        if self.start is not None and not (
            self.min <= self.start <= (self.max if self.max is not None else self.start)
        ):
            raise ValueError(f"Auto: start ({self.start}) must be between min and max")


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    """One change of a layer's worker count, and why (plain data, for reports and plots).

    ``time`` is in seconds since the run started; ``workers`` is the count after the change and
    ``change`` the difference (0 for the starting count and for a growth held back by the CPU
    budget).
    """

    time: float
    layer: str
    workers: int
    change: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return asdict(self)


# --- clocks -----------------------------------------------------------------------------------


class Timer(Protocol):
    """A pending :meth:`Clock.call_later` callback."""

    def cancel(self) -> None:
        """Do not call the callback."""


class Clock(Protocol):
    """What the controller waits on: the event loop's clock, or a test's :class:`ManualClock`."""

    def now(self) -> float:
        """The current time, in seconds."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` on the event loop after ``delay`` seconds of this clock."""


class _LoopClock:
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    __slots__ = ("callback", "clock", "due")

    def __init__(self, clock: ManualClock, due: float, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.due = due
        self.callback = callback

    def cancel(self) -> None:
        with contextlib.suppress(ValueError):
            self.clock._timers.remove(self)


class ManualClock:
    """A clock that moves only when told: :meth:`advance` fires the timers that fall due.

    :meth:`wait_for_timers` returns once the controller is asleep again, so a test can advance
    one look at a time and check the decision, with no real time involved.
    """

    def __init__(self) -> None:
        self._now = 0.0
        self._timers: list[_ManualTimer] = []
        self._armed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(self, self._now + delay, callback)
        self._timers.append(timer)
        if self._armed is not None:
            self._armed.set()
        return timer

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds`` and fire every timer now due."""
        self._now += seconds
        due = [t for t in self._timers if t.due <= self._now]
        for timer in due:
            self._timers.remove(timer)
            timer.callback()

    async def wait_for_timers(self, count: int = 1) -> None:
        """Wait until at least ``count`` timers are pending (the controller waits for its look)."""
        while len(self._timers) < count:
            self._armed = asyncio.Event()
            await self._armed.wait()
        self._armed = None


_CLOCK: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
    "async_flow_autoscale_clock", default=None
)


def current_clock() -> Clock | None:
    """The clock set by :func:`use_clock` here, or None for the event loop's."""
    return _CLOCK.get()


@contextlib.contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Runs declared inside the block time their autoscaling on ``clock``."""
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


# --- CPU budget -------------------------------------------------------------------------------


#: Where the cgroup CPU limits are read from (a test points it at a fake hierarchy).
CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_cpus() -> float | None:
    """The CPU limit of this process's cgroup (v2 ``cpu.max`` or v1 CFS quota), if any."""
    root = CGROUP_ROOT
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpus()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def ray_cluster_cpus() -> float:
    """The CPUs of the Ray cluster this process is connected to (0 if it reports none).

    Imports Ray: only called for a run with an autoscaled Ray layer, once its backend started.
    """
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("CPU", 0.0))


def _cpu_weight(layer: Any) -> float:
    """Cores one worker of ``layer`` takes from its backend's budget (0 outside any budget)."""
    if layer.backend not in CPU_BOUND_BACKENDS:
        return 0.0
    if layer.backend == "ray":
        return float(layer.options.get("num_cpus", 1) or 0)
    return 1.0


# --- the controller ---------------------------------------------------------------------------


class _Look:
    """What one look at a layer saw, over the interval since the previous look."""

    __slots__ = (
        "blocked",
        "fill",
        "items",
        "limited",
        "load",
        "pressed",
        "seconds",
        "upstream",
        "util",
    )

    def __init__(
        self, prev: LayerStats, now: LayerStats, upstream_blocked: float, clock_seconds: float
    ) -> None:
        workers = max(1, now.workers)
        dt = now.elapsed - prev.elapsed
        capacity = workers * dt
        busy = (now.busy_seconds - prev.busy_seconds) / capacity if capacity > 0 else 0.0
        # A batch adds its busy time when it ends; count the workers inside one right now too,
        # so a slow item in progress does not look like idleness.
        self.util = min(1.0, max(busy, now.busy_workers / workers))
        self.load = self.util * workers
        blocked = now.blocked_seconds - prev.blocked_seconds
        self.blocked = blocked / capacity if capacity > 0 else 0.0
        self.fill = now.queued / now.maxsize if now.maxsize else 0.0
        self.upstream = upstream_blocked / dt if dt > 0 else 0.0
        # "Input stays full": the channel is at least half full, or its producer waited on it.
        self.pressed = self.fill >= 0.5 or self.upstream > 0.05
        self.items = now.received - prev.received
        # Throughput is items per second of the controller's clock (the clock its looks wait
        # on); the shares are ratios of the layer's own times, so they need no clock.
        self.seconds = clock_seconds
        # Limit hook (see _limit): the share of worker time spent waiting on the layer's limit.
        waited = now.limit_seconds - prev.limit_seconds
        self.limited = waited / capacity if capacity > 0 else 0.0

    @property
    def held_by_limit(self) -> bool:
        """Pressed, but its limit holds it back: more workers would only wait on the limit."""
        return self.pressed and self.limited >= LIMITED

    @property
    def short(self) -> bool:
        """Pressed, busy and not held up by the layer below: more workers would help."""
        return (
            self.pressed and self.util >= BUSY and self.blocked < BLOCKED and not self.held_by_limit
        )

    def starving(self, workers: int, target: float) -> bool:
        """The work would keep one worker fewer busy at most ``target``."""
        return workers > 1 and self.load <= target * (workers - 1)

    def describe(self) -> str:
        return (
            f"input {self.fill:.0%} full, workers {self.util:.0%} busy,"
            f" {self.blocked:.0%} blocked on output"
        )


class _Managed:
    """An autoscaled layer as the controller tracks it."""

    __slots__ = (
        "blocked_noted",
        "cap",
        "capped_until",
        "cooldown",
        "down_after",
        "high",
        "judging",
        "last",
        "last_change",
        "last_time",
        "last_upstream",
        "limit_noted",
        "low",
        "run",
        "short_for",
        "starving_for",
        "streak",
        "weight",
        "window",
    )

    def __init__(self, run: LayerRun, low: int, high: int, weight: float) -> None:
        self.run = run
        self.low = low
        self.high = high
        self.weight = weight
        self.last: LayerStats | None = None
        self.last_upstream = 0.0
        self.last_time = 0.0  # the controller's clock at the last look
        self.short_for = 0
        self.starving_for = 0
        self.cooldown = 0
        self.blocked_noted = False
        self.limit_noted = False
        self.down_after = DOWN_AFTER
        self.last_change = 0
        # Did the last growth pay? (rate before, workers before), and the measurements so far.
        self.judging: tuple[float, int] | None = None
        self.streak = [0, 0.0]  # items, seconds while short
        # Items, seconds, looks since the growth being judged; looks with the input not full, and
        # looks with the layer held up by the layer below.
        self.window = [0, 0.0, 0, 0, 0]
        self.cap = high
        self.capped_until = -1

    @property
    def target(self) -> float:
        return TARGET[self.weight > 0]

    @property
    def workers(self) -> int:
        return self.run.counters.workers


class Autoscaler:
    """The controller task of one run: looks at the autoscaled layers and resizes them.

    Made by the run when a layer has ``Auto`` workers, once the backends have started (a Ray
    layer's budget is read from the cluster it connected to); :meth:`run` is a task of the run's
    task group and returns once every autoscaled layer has finished.

    ``cpus`` is the process layers' budget (default :func:`available_cpus`), ``ray_cpus`` the
    Ray layers' (default :func:`ray_cluster_cpus`, read only if a Ray layer is autoscaled).
    """

    def __init__(
        self,
        layer_runs: list[LayerRun],
        *,
        clock: Clock | None = None,
        interval: float = INTERVAL,
        cpus: int | None = None,
        ray_cpus: float | None = None,
    ) -> None:
        self._clock: Clock = clock or _CLOCK.get() or _LoopClock()
        self.interval = interval
        self.cpus = cpus if cpus is not None else available_cpus()
        if ray_cpus is None and any(
            lr.layer.autoscale is not None and _cpu_weight(lr.layer) > 0
            for lr in layer_runs
            if lr.layer.backend == "ray"
        ):
            ray_cpus = ray_cluster_cpus()
        #: CPUs of each CPU-bound backend: this machine's for processes, the cluster's for Ray.
        self.totals: dict[str, float] = {"process": self.cpus, "ray": ray_cpus or 0.0}
        #: Every decision so far, oldest first.
        self.events: list[ScalingEvent] = []
        #: CPUs the autoscaled layers of each CPU-bound backend may share: the total, less what
        #: the fixed-size layers of that backend hold.
        self.budgets: dict[str, float] = {}
        for backend, total in self.totals.items():
            held = sum(
                _cpu_weight(lr.layer) * lr.layer.workers
                for lr in layer_runs
                if lr.layer.autoscale is None and lr.layer.backend == backend
            )
            self.budgets[backend] = max(0.0, total - held)
        self._managed: list[_Managed] = []
        for lr in layer_runs:
            auto = lr.layer.autoscale
            if auto is None:
                continue
            weight = _cpu_weight(lr.layer)
            if auto.max is not None:
                high = auto.max
            elif weight > 0:
                high = max(auto.min, int(self.budgets[lr.layer.backend] / weight + 1e-9))
            else:
                high = DEFAULT_MAX.get(lr.layer.backend, DEFAULT_MAX["thread"])
            self._managed.append(_Managed(lr, auto.min, max(high, lr.layer.workers), weight))
            # Hooked before any task starts, so that no layer can finish unnoticed.
            lr.on_finished = self._layer_finished
        self._remaining = len(self._managed)
        self._wake: asyncio.Future[None] | None = None
        self._started = 0.0
        self._looks = 0

    @property
    def active(self) -> bool:
        """True if the run has autoscaled layers (else the task is not worth starting)."""
        return bool(self._managed)

    def _layer_finished(self) -> None:
        self._remaining -= 1
        if self._remaining <= 0 and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _on_timer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        """Look at the layers every ``interval`` until every autoscaled layer has finished."""
        self._started = self._clock.now()
        for m in self._managed:
            self._record(m, 0, "start")
        loop = asyncio.get_running_loop()
        while self._remaining > 0:
            self._wake = loop.create_future()
            timer = self._clock.call_later(self.interval, self._on_timer)
            try:
                await self._wake
            finally:
                timer.cancel()
                self._wake = None
            if self._remaining > 0:
                self.step()

    def _record(self, m: _Managed, change: int, reason: str) -> None:
        self.events.append(
            ScalingEvent(
                time=self._clock.now() - self._started,
                layer=m.run.layer.name,
                workers=m.workers,
                change=change,
                reason=reason,
            )
        )

    def step(self) -> None:
        """One look at every autoscaled layer: shrink the starving, then grow the short ones."""
        wanting: list[tuple[_Managed, _Look]] = []
        self._looks += 1
        for m in self._managed:
            look = self._look(m)
            if look is None:
                continue
            if m.cooldown > 0:
                m.cooldown -= 1
                continue
            if m.judging is not None:
                if self._judge(m, look) and look.short and m.workers < self._high(m):
                    # The growth paid and the layer is still short: it has been short through
                    # the whole judgement, so it grows again now rather than after more looks.
                    wanting.append((m, look))
                continue
            workers = m.workers
            high = self._high(m)
            if look.held_by_limit and not m.limit_noted:  # limit hook: say why it stays
                self._record(m, 0, f"held: waiting on its limit {look.limited:.0%} of the look")
            m.limit_noted = look.held_by_limit
            if look.short:
                m.streak[0] += look.items
                m.streak[1] += look.seconds
            else:
                m.streak = [0, 0.0]
            if look.short and workers < high:
                m.short_for += 1
                m.starving_for = 0
                if m.short_for >= UP_AFTER:
                    wanting.append((m, look))
            elif look.starving(workers, m.target) and workers > m.low:
                m.starving_for += 1
                m.short_for = 0
                if m.starving_for >= m.down_after:
                    self._shrink(m, look)
            else:
                m.short_for = m.starving_for = 0
                m.blocked_noted = False
        # The layer that holds its producer back the most (then the fullest input) goes first.
        wanting.sort(key=lambda pair: (pair[1].upstream, pair[1].fill, pair[1].util), reverse=True)
        for m, look in wanting:
            self._grow(m, look)

    def _look(self, m: _Managed) -> _Look | None:
        run = m.run
        if not run.accepts_workers:
            return None
        stats = run.snapshot()
        upstream = run.inbox.blocked_seconds
        now = self._clock.now()
        prev, prev_upstream, prev_time = m.last, m.last_upstream, m.last_time
        m.last, m.last_upstream, m.last_time = stats, upstream, now
        if prev is None:
            return None
        return _Look(prev, stats, upstream - prev_upstream, now - prev_time)

    def _high(self, m: _Managed) -> int:
        """The layer's max, lowered for a while after a growth that did not pay."""
        return m.high if self._looks >= m.capped_until else min(m.high, m.cap)

    def _cpu_free(self, backend: str) -> float:
        """CPUs left in ``backend``'s budget."""
        used = sum(m.weight * m.workers for m in self._managed if m.run.layer.backend == backend)
        return self.budgets[backend] - used

    def _grow(self, m: _Managed, look: _Look) -> None:
        workers = m.workers
        # A large factor finds the count quickly where workers mostly wait (async, threads);
        # CPU-bound workers grow by half at most, within the budget.
        step = workers * (GROWTH - 1) if m.weight == 0 else max(1, workers // 2)
        step = min(step, self._high(m) - workers)
        backend = m.run.layer.backend
        if m.weight > 0:
            step = min(step, int((self._cpu_free(backend) + 1e-9) // m.weight))
        if step <= 0:
            if not m.blocked_noted:
                m.blocked_noted = True
                budget, total = self.budgets[backend], self.totals[backend]
                spent = (
                    f"Ray CPU budget spent ({budget:g} of the cluster's {total:g} CPUs"
                    if backend == "ray"
                    else f"CPU budget spent ({budget:g} of {total:g} cores"
                )
                self._record(m, 0, f"held: {spent} for autoscaled layers); {look.describe()}")
            return
        rate = m.streak[0] / m.streak[1] if m.streak[1] > 0 else 0.0
        added = m.run.add_workers(step)
        if added:
            if m.weight == 0 and m.streak[0] >= MIN_ITEMS:
                # Workers outside the CPU budget could grow to no avail (a GIL-bound thread
                # layer, a saturated remote service): check that this growth raised throughput.
                m.judging = (rate, workers)
                m.window = [0, 0.0, 0, 0, 0]
            if m.last_change < 0:
                # Growing back what was just retired: be slower to retire next time.
                m.down_after = min(m.down_after * FLAP_BACKOFF, DOWN_AFTER * FLAP_BACKOFF**3)
            self._changed(m, added)
            self._record(m, added, f"{look.describe()} for {UP_AFTER} looks")

    def _shrink(self, m: _Managed, look: _Look) -> None:
        workers = m.workers
        needed = math.ceil(look.load / m.target) if look.load > 0 else 0
        target = max(m.low, needed, workers - max(1, workers // 2))
        retired = m.run.retire_workers(workers - target)
        if retired:
            self._changed(m, -retired)
            self._record(m, -retired, f"{look.describe()} for {m.down_after} looks")

    def _judge(self, m: _Managed, look: _Look) -> bool:
        """After a growth: keep the workers the measured gain in throughput pays for.

        A kept worker must add at least half the throughput each worker had before the growth.
        Throughput is taken to rise in proportion to the workers up to what was measured, then
        to stay flat, so the count kept is the largest within that rule (all of them when the
        gain was in proportion, none when there was no gain). True once the whole growth is
        judged to have paid while the layer stayed pressed.
        """
        assert m.judging is not None
        m.window[0] += look.items
        m.window[1] += look.seconds
        m.window[2] += 1
        m.window[3] += not look.pressed
        m.window[4] += look.blocked >= BLOCKED
        items, seconds, looks, unpressed, held = m.window
        if (items < MIN_ITEMS or looks < UP_AFTER) and looks < 5:
            return False
        before, workers_before = m.judging
        m.judging = None
        if items < MIN_ITEMS or seconds <= 0 or unpressed or held:
            # Too few items to tell, or the growth met the demand: the input stopped being full
            # (the layer above is now the limit) or the output filled up (the layer below is).
            # Either way throughput is no longer this layer's to raise, so the growth stays.
            return False
        after = items / seconds
        workers = m.workers
        # after >= before * (1 + (keep / workers_before - 1) / 2), solved for keep. With no
        # measured rate before the growth, any throughput pays for it.
        keep = workers
        if before > 0:
            limit = math.floor(workers_before * (2 * after / before - 1) + 1e-9)
            keep = max(workers_before, min(workers, limit))
        if keep >= workers:
            # The judged looks measured this worker count's throughput: the next growth is
            # judged against it.
            m.streak = [items, seconds]
            return True
        m.cap = keep
        m.capped_until = self._looks + CAP_LOOKS
        retired = m.run.retire_workers(workers - keep)
        if retired:
            self._changed(m, -retired)
            self._record(
                m,
                -retired,
                f"{workers} workers did not raise throughput in proportion ({before:.0f}/s with"
                f" {workers_before}, {after:.0f}/s with {workers}): back to {keep},"
                f" no growth for {CAP_LOOKS} looks",
            )
        return False

    def _changed(self, m: _Managed, change: int) -> None:
        m.last_change = change
        m.cooldown = 1
        m.streak = [0, 0.0]
        m.short_for = m.starving_for = 0
        m.blocked_noted = False
