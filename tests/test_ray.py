"""The Ray backend against a real local Ray (one instance per test session, see conftest).

The shared behaviours run on ``"ray"`` through the same test bodies as the local backends (they
are imported below and this module's ``backend`` fixture picks Ray). Then what only Ray has:
actors killed mid-run, a node removed mid-run, where Ray runs, and no actor left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import async_flow as af
from tests.conftest import RAY_WORKER_CLASS, live_ray_workers, worst_in_flight

# The shared suite, collected again here: each runs with backend="ray".
# Each Ray run starts fresh actor processes (seconds each on a small machine), so only the
# behaviours that differ between backends are repeated here.
from tests.test_core import (  # noqa: F401
    test_class_workers_build_one_instance_each_and_close,
    test_function_kinds,
    test_leaving_a_stream_early_cancels_the_run,
    test_ordered_layers_keep_input_order,
)
from tests.test_errors import (  # noqa: F401
    test_cancelling_the_awaiting_task_stops_everything,
    test_error_under_full_channels_does_not_hang,
    test_layer_error_is_reraised_as_itself_with_a_note,
)

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture
def backend() -> str:
    """Overrides the shared fixture: the imported shared tests run on Ray."""
    return "ray"


def _live_actors() -> list[Any]:
    # After each test conftest's leak check waits for these to be gone too.
    return live_ray_workers()


# --- functions the actors run --------------------------------------------------------------


def square_and_pid(x: int) -> tuple[int, int]:
    time.sleep(0.002)
    return x * x, os.getpid()


def square_and_node(x: int) -> tuple[int, str]:
    time.sleep(0.01)
    return x * x, ray.get_runtime_context().get_node_id()


def exit_on_3(x: int) -> int:
    if x == 3:
        os._exit(7)
    return x


class Doubler:
    """A class actor: its constructor argument travels to each actor."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return x * self.factor


class BrokenInit:
    def __init__(self) -> None:
        raise LookupError("no model here")

    def __call__(self, x: int) -> int:
        return x


# --- declaring Ray layers ------------------------------------------------------------------


def test_options_reach_the_actors() -> None:
    got = af.run(
        range(20),
        af.Layer(Doubler, 2, backend="ray", args=(3,), options={"num_cpus": 0.5}, name="x3"),
    )
    assert got.layer("x3").emitted == 20
    with af.open_stream(
        range(5), af.Layer(Doubler, 1, backend="ray", args=(3,), ordered=True)
    ) as out:
        assert list(out) == [0, 3, 6, 9, 12]


def test_bad_ray_options_fail_before_the_source_is_read() -> None:
    read = []

    def source() -> Iterator[int]:
        read.append(1)
        yield 1

    with pytest.raises(ValueError, match=r"layer 'bad': bad Ray actor options"):
        af.run(
            source(), af.Layer(square_and_pid, backend="ray", options={"nmu_cpus": 1}, name="bad")
        )
    assert read == []


def test_constructor_error_is_raised_as_itself() -> None:
    with pytest.raises(LookupError, match="no model here"):
        af.run(range(3), af.Layer(BrokenInit, 2, backend="ray"))


def test_unpicklable_items_fail_clearly() -> None:
    with pytest.raises(af.SerializationError, match=r"layer 'send'.*cannot send item"):
        af.run([threading.Lock()], af.Layer(square_and_pid, backend="ray", name="send"))


def test_back_pressure_holds_through_ray_actors() -> None:
    """A fast endless source, a Ray layer and a slow collector: checked at every item collected,
    produced - collected never exceeds the channels' bounds plus the batches in flight."""

    async def slow(x: int) -> int:
        for _ in range(3):
            await asyncio.sleep(0)
        return x

    size, workers, in_flight = 4, 2, 2
    # The source's chunk, the Ray layer's channel, the batches its actors hold, the collector's
    # channel and batch, the output channel and the stream's read-ahead: each at most ``size``.
    bound = size + size + workers * in_flight * size + size + size + size + size
    layers = (
        af.Layer(identity, workers, backend="ray", maxsize=size),
        af.Layer(slow, maxsize=size),
    )
    worst = worst_in_flight(layers, collect=300, stream_maxsize=size)
    assert 0 < worst <= bound, (worst, bound)


def identity(x: Any) -> Any:
    return x


class DriverRefuses:
    """A value that cannot be unpickled in the test's process: it may only travel actor to actor."""

    def __init__(self, value: int, driver_pid: int) -> None:
        self.value = value
        self.driver_pid = driver_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.value, self.driver_pid))


def _rebuild(value: int, driver_pid: int) -> DriverRefuses:
    if os.getpid() == driver_pid:
        raise RuntimeError("a Ray layer's output was pulled through the driver")
    return DriverRefuses(value, driver_pid)


def wrap(x: int, driver_pid: int) -> DriverRefuses:
    return DriverRefuses(x, driver_pid)


def unwrap(box: DriverRefuses) -> int:
    return box.value * 2


def test_consecutive_ray_layers_pass_references_not_values() -> None:
    """The middle values cannot be unpickled in this process, so the run only succeeds if the
    first layer's outputs go to the second layer's actors without being fetched here."""
    import functools

    wrap_here = functools.partial(wrap, driver_pid=os.getpid())
    with af.open_stream(
        range(100),
        af.Layer(wrap_here, 2, backend="ray", ordered=True, name="wrap"),
        af.Layer(unwrap, 2, backend="ray", ordered=True, name="unwrap"),
    ) as out:
        assert list(out) == [2 * x for x in range(100)]
    # Without the hand-off the same values do fail here (the test checks what it claims).
    with pytest.raises(ray.exceptions.RaySystemError, match="pulled through the driver"):
        af.run(range(3), af.Layer(wrap_here, backend="ray"), af.Layer(unwrap))


# --- faults --------------------------------------------------------------------------------


@pytest.mark.slow
def test_actor_killed_mid_run_every_item_arrives_exactly_once() -> None:
    """The test kills the process of the actor that produced the first output while the layer
    still has most of its input ahead: its in-flight batches are re-run on a replacement."""
    n = 600
    got: list[int] = []
    killed: int | None = None
    with af.open_stream(
        range(n), af.Layer(square_and_pid, 2, backend="ray", name="sq"), maxsize=16
    ) as out:
        for value, pid in out:
            got.append(value)
            if killed is None:
                killed = pid
                os.kill(pid, signal.SIGKILL)
    stats = out.report.layer("sq")
    assert sorted(got) == [x * x for x in range(n)]
    assert stats.restarts >= 1
    assert stats.retried >= 1


@pytest.mark.slow
def test_an_item_that_kills_every_actor_fails_naming_it() -> None:
    with pytest.raises(af.WorkerCrashed, match=r"layer 'boom': item 3 crashed its worker 3 times"):
        af.run(range(10), af.Layer(exit_on_3, 2, backend="ray", name="boom"))


class DiesAtBirth:
    def __init__(self) -> None:
        os._exit(3)

    def __call__(self, x: int) -> int:
        return x


@pytest.mark.slow
def test_actors_that_die_while_starting_fail_the_run_clearly() -> None:
    with pytest.raises(af.WorkerCrashed, match=r"layer 'doomed': worker 0's Ray actor died"):
        af.run(range(3), af.Layer(DiesAtBirth, 1, backend="ray", name="doomed"))


@pytest.mark.slow
def test_node_removed_mid_run(ray_cluster: Any) -> None:
    """Actors spread over two nodes; the second node goes away while it holds items."""
    node = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    removed = threading.Event()
    gate_reached = threading.Event()

    def source() -> Iterator[int]:
        yield from range(200)
        gate_reached.set()
        removed.wait(30)  # the rest only once the node is gone
        yield from range(200, 400)

    got: list[int] = []
    nodes: set[str] = set()
    layer = af.Layer(
        square_and_node,
        4,
        backend="ray",
        name="spread",
        options={"num_cpus": 0.5, "scheduling_strategy": "SPREAD"},
    )
    try:
        with af.open_stream(source(), layer, maxsize=8) as out:
            for value, node_id in out:
                got.append(value)
                nodes.add(node_id)
                if not removed.is_set() and len(nodes) == 2 and len(got) >= 20:
                    ray_cluster.remove_node(node)
                    removed.set()
    finally:
        if not removed.is_set():
            ray_cluster.remove_node(node)
            removed.set()
    stats = out.report.layer("spread")
    assert len(nodes) == 2
    assert gate_reached.is_set()
    assert sorted(got) == [x * x for x in range(400)]
    assert stats.restarts >= 1


# --- where Ray runs ------------------------------------------------------------------------


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(PYTHONPATH=src, **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_importing_async_flow_does_not_import_ray() -> None:
    done = _python(
        """
        import sys
        import async_flow as af
        af.Layer(abs, 2, backend="ray", options={"num_cpus": 1})
        assert "ray" not in sys.modules, "ray was imported"
        """
    )
    assert done.returncode == 0, done.stderr


def test_missing_ray_names_the_extra() -> None:
    done = _python(
        """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        import async_flow as af
        try:
            af.run(range(3), af.Layer(abs, backend="ray"))
        except ModuleNotFoundError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'async_flow[ray]'" in done.stdout


def test_existing_cluster_from_ray_address_is_used_and_left_running(ray_cluster: Any) -> None:
    done = _python(
        """
        import ray
        import async_flow as af
        report = af.run(range(50), af.Layer(abs, 2, backend="ray"))
        assert report.layers[0].emitted == 50
        assert not ray.is_initialized()  # disconnected
        """,
        RAY_ADDRESS=ray_cluster.address,
    )
    assert done.returncode == 0, done.stderr
    # The session's cluster is still there.
    assert ray.get(ray.remote(lambda: 1).remote()) == 1


@pytest.mark.slow
def test_without_ray_a_local_instance_is_started_and_shut_down() -> None:
    done = _python(
        """
        import ray
        import async_flow as af
        report = af.run(range(50), af.Layer(abs, 2, backend="ray"))
        assert report.layers[0].emitted == 50
        assert not ray.is_initialized()
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


# --- options the backend decides -----------------------------------------------------------


def test_the_name_option_is_refused_before_the_source_is_read() -> None:
    read = []

    def source() -> Iterator[int]:
        read.append(1)
        yield 1

    with pytest.raises(ValueError, match=r"layer 'named': Ray option 'name' would give every"):
        af.run(source(), af.Layer(abs, backend="ray", name="named", options={"name": "x"}))
    assert read == []


def _worker_actors_restarts() -> dict[str, int]:
    """``max_restarts`` of every worker actor of this job, as Ray's actor table holds it (dead
    actors included), by actor id."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    found = {}
    for raw in accessor.get_actor_table(None, None):
        data = gcs_pb2.ActorTableData.FromString(raw)
        if data.class_name == RAY_WORKER_CLASS:
            found[data.actor_id.hex()] = data.max_restarts
    return found


def test_max_restarts_is_forced_to_0() -> None:
    """The backend replaces dead actors itself (it knows which items they held): an actor Ray
    restarted behind its back would run a fresh instance nobody asked for."""
    before = set(_worker_actors_restarts())
    report = af.run(
        range(10),
        af.Layer(abs, 2, backend="ray", options={"max_restarts": 5, "num_cpus": 0.5}),
    )
    assert report.layers[0].emitted == 10
    made = {k: v for k, v in _worker_actors_restarts().items() if k not in before}
    assert len(made) == 2
    assert set(made.values()) == {0}


# --- the resource check, where Ray decides --------------------------------------------------


async def _starts_despite(options: dict[str, Any]) -> None:
    """A layer asking for a resource no node has, with ``options``: the run starts (the source
    is read) instead of failing at once; its actor waits, and leaving the stream stops it."""
    read = asyncio.Event()

    async def source() -> Any:
        read.set()
        yield 1

    layer = af.Layer(abs, backend="ray", name="waits", options={"num_cpus": 0, **options})
    async with af.open_stream(source(), layer) as stream:
        first = asyncio.ensure_future(anext(stream))  # raises what the run raises
        reading = asyncio.ensure_future(read.wait())
        try:
            done, _ = await asyncio.wait(
                {first, reading}, timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            if first in done:
                first.result()
            assert reading in done
        finally:
            for task in (first, reading):
                task.cancel()
            await asyncio.gather(first, reading, return_exceptions=True)


def test_the_resource_check_is_skipped_with_a_placement_group() -> None:
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"tpu": 1}])  # no node has a TPU: it stays pending
    try:
        strategy = PlacementGroupSchedulingStrategy(group)
        asyncio.run(_starts_despite({"resources": {"tpu": 1}, "scheduling_strategy": strategy}))
    finally:
        remove_placement_group(group)


def test_the_resource_check_is_skipped_with_node_affinity() -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    asyncio.run(_starts_despite({"resources": {"tpu": 1}, "scheduling_strategy": strategy}))


def test_the_resource_check_is_skipped_on_a_cluster_with_an_autoscaler() -> None:
    """An autoscaler publishes the node types it may add in the GCS; with one that may add a
    TPU node, a layer asking for a TPU waits for it instead of failing."""
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name="tpu-node", resources={"tpu": 1}, max_count=2)
        ]
    )
    namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    assert not internal_kv._internal_kv_exists(key, namespace=namespace)
    internal_kv._internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        asyncio.run(_starts_despite({"resources": {"tpu": 1}}))
    finally:
        internal_kv._internal_kv_del(key, namespace=namespace)
    # Without it, the same layer fails at once.
    with pytest.raises(ValueError, match=r"layer 'waits': no node of the Ray cluster"):
        asyncio.run(_starts_despite({"resources": {"tpu": 1}}))


# --- the error policy stays in this process ------------------------------------------------


def fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_a_ray_layer_with_an_unpicklable_dead_letter_sink() -> None:
    lock = threading.Lock()  # cannot be pickled: the policy must stay in this process
    letters: list[Any] = []

    def sink(item: Any, failure: af.Failure) -> None:
        with lock:
            letters.append((item, failure.error_type))

    report = af.run(
        range(8),
        af.Layer(
            fail_on_3, 2, backend="ray", options={"num_cpus": 0.5}, on_error=af.DeadLetter(sink)
        ),
    )
    assert letters == [(3, "ValueError")]
    assert report.layers[0].emitted == 7
    assert report.layers[0].dead_letters == 1


# --- Ctrl-C and SIGTERM, in a real program ----------------------------------------------------


def _ray_program(ray_cluster: Any, out: Any, fast: int, connect: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(af.__file__))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, root])
    env["RAY_ADDRESS"] = ray_cluster.address
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ray_signal_job.py")
    return subprocess.Popen(
        [sys.executable, script, str(out), str(fast), connect],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.mark.slow
def test_sigterm_on_a_ray_layer_drains_and_exits_143(ray_cluster: Any, tmp_path: Any) -> None:
    out = tmp_path / "collected.txt"
    # Every item quick: the drain finishes. The run connects to Ray itself, which replaces the
    # SIGTERM handler with its own: the run's must stay in place.
    proc = _ray_program(ray_cluster, out, 10**9, "run")
    try:
        assert _line(proc) == "ready"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["drained"] is True
    produced = result["report"]["source"]["produced"]
    assert sorted(int(x) for x in out.read_text().split()) == list(range(produced))


@pytest.mark.slow
def test_a_second_ctrl_c_kills_the_ray_actors_at_once(ray_cluster: Any, tmp_path: Any) -> None:
    """After 20 quick items every item takes ten minutes: the drain after the first SIGINT could
    not end for as long. The second SIGINT aborts: the actors are killed at once (the program is
    given 60 s, far less than one item), and none is left."""
    out = tmp_path / "collected.txt"
    proc = _ray_program(ray_cluster, out, 20, "own")
    try:
        assert _line(proc) == "ready"
        proc.send_signal(signal.SIGINT)
        assert _line(proc) == "stopped"  # the first signal was taken: the run drains
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["drained"] is False
    assert result["report"]["status"] == "interrupted"
    # Killed by the run, not by the program's exit: its Ray connection was still up.
    assert result["alive"] == 0
