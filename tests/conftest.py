"""Shared fixtures: one test body for every backend, and a leak check after every test."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import psutil
import pytest

T = TypeVar("T")

#: Backends every generic test runs on. The process backend joins when its module exists;
#: Ray is opt-in per module (it needs the extra and a session-wide instance).
LOCAL_BACKENDS = ["async", "thread"]
try:  # pragma: no cover - depends on which backends are present
    import async_flow.backends._process  # noqa: F401

    LOCAL_BACKENDS.append("process")
except ModuleNotFoundError:
    pass


def _extras_required() -> bool:
    """CI installs every extra: there a test skipped for want of one hides a broken install."""
    return os.environ.get("CI", "").lower() == "true" or (
        os.environ.get("ASYNC_FLOW_REQUIRE_EXTRAS", "") == "1"
    )


def _fail_if_an_extra_is_missing(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Turn a skip by ``pytest.importorskip`` into a failure when extras are required."""
    if not (report.skipped and _extras_required()):
        return
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if "could not import" in message:
        report.outcome = "failed"
        report.longrepr = (
            f"{message}\n(CI=true or ASYNC_FLOW_REQUIRE_EXTRAS=1: every extra must be installed,"
            " so this skip is a failure)"
        )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    report: pytest.CollectReport = yield
    _fail_if_an_extra_is_missing(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report: pytest.TestReport = yield
    _fail_if_an_extra_is_missing(report)
    return report


@pytest.fixture(params=LOCAL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of a backend; tests using it run once per local backend."""
    return str(request.param)


def _library_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("async_flow") and t.is_alive()]


#: Direct children that live for the whole session (the shared Ray cluster's processes); they
#: and their descendants are not leaks of any one test.
_SESSION_PROCESSES: set[int] = set()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children() -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for child in psutil.Process().children():
        if child.pid in _SESSION_PROCESSES:
            continue
        try:
            found += [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return [p for p in found if _alive(p)]


#: The class of the actors the Ray backend starts.
RAY_WORKER_CLASS = "_RayWorker"


def live_ray_workers() -> list[Any]:
    """The Ray backend's actors still alive in this session's Ray (none if Ray is not up)."""
    import ray
    from ray.util.state import list_actors

    if not ray.is_initialized():
        return []
    # This session's Ray, by address (left to find one, the state API fails, or picks the
    # newest, when another Ray runs on the machine), and this driver's job.
    context = ray.get_runtime_context()
    actors = list_actors(
        address=context.gcs_address,
        filters=[("class_name", "=", RAY_WORKER_CLASS), ("job_id", "=", context.get_job_id())],
        limit=1000,
    )
    return [a for a in actors if a.state != "DEAD"]


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for process exit, not for races)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: no thread of the library alive, no child process left, and the SIGINT
    handler as it was (a run restores what it replaced; a stale one would swallow Ctrl-C in the
    tests that follow). SIGTERM is left out: Ray sets its own handler when it starts."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    assert after == before, f"SIGINT handler changed: {before!r} -> {after!r}"
    if request.node.get_closest_marker("ray"):
        # Ray's own processes belong to the session's cluster (see ray_cluster) and are left
        # out below, with the worker processes Ray keeps under them; the actors a run made
        # there must be dead (Ray kills them asynchronously, hence the wait).
        assert wait_until(lambda: not live_ray_workers(), 20.0), (
            f"actors left: {live_ray_workers()}"
        )
    assert not _library_threads(), f"threads left running: {_library_threads()}"
    # A killed child may need a moment to be reaped by the OS; nothing else is waited for.
    assert wait_until(lambda: not _children(), 5.0), f"child processes left: {_children()}"
    gc.collect()


def run_async(
    coro: Coroutine[Any, Any, T],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run ``coro`` on a fresh loop (built by ``loop_factory``, if given) and check it left no
    task behind."""

    async def checked() -> T:
        try:
            return await coro
        finally:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not others, f"tasks left running: {others}"

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(checked())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray instance for the whole session (a head node with 2 CPUs).

    It is a ``ray.cluster_utils.Cluster`` so that a test can add and remove nodes; node deaths
    are detected within about a second.
    """
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    before = {p.pid for p in psutil.Process().children()}

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,  # ray.util.state needs it
            "dashboard_port": _free_port(),  # not 8265: another Ray may be running
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 300,
                "health_check_failure_threshold": 3,
            },
        },
    )
    ray.init(address=cluster.address, log_to_driver=False)
    started = {p.pid for p in psutil.Process().children()} - before
    _SESSION_PROCESSES.update(started)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def worst_in_flight(layers: Any, collect: int, stream_maxsize: int | None = None) -> int:
    """Run an endless source through ``layers`` until ``collect`` items came out; return the
    largest ``produced - collected`` seen. It is read at every item collected, so a bound on it
    is an invariant of the run, not a matter of timing."""
    import async_flow as af

    produced = 0
    lock = threading.Lock()

    def endless() -> Iterator[int]:
        nonlocal produced
        for i in itertools.count():
            with lock:
                produced += 1
            yield i

    worst = 0

    async def main() -> None:
        nonlocal worst
        collected = 0
        kwargs = {} if stream_maxsize is None else {"maxsize": stream_maxsize}
        async with af.open_stream(endless(), *layers, **kwargs) as out:
            async for _ in out:
                collected += 1
                with lock:
                    worst = max(worst, produced - collected)
                if collected == collect:
                    break

    run_async(main())
    return worst
