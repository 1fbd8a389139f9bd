"""Live progress: the rich table, log lines, callbacks, snapshots and the sampled timeline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import async_flow as af
from async_flow import _pipeline
from async_flow._progress import format_line, render, resolve_progress
from async_flow._timeline import TimelineRecorder
from tests.conftest import run_async

# --- helpers --------------------------------------------------------------------------------


def _pass(x: int) -> int:
    return x


class Gate:
    """A layer function that holds its first item until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()

    def __call__(self, x: int) -> int:
        if x == 0:
            assert self.opened.wait(30), "the gate was never opened"
        return x


def _row(snapshot: af.ProgressSnapshot, name: str) -> af.LayerProgress:
    return next(layer for layer in snapshot.layers if layer.name == name)


# --- callbacks and snapshots ----------------------------------------------------------------


def test_callback_sees_the_run_while_it_goes_and_at_the_end() -> None:
    gate = Gate()
    seen: list[af.ProgressSnapshot] = []

    def on_progress(snapshot: af.ProgressSnapshot) -> None:
        seen.append(snapshot)
        row = _row(snapshot, "gate")
        # The gated worker holds item 0: the snapshot must say so before we let it go.
        if snapshot.status == "running" and row.busy_workers == 1 and row.done >= 1:
            gate.opened.set()

    report = af.run(
        range(20),
        af.Layer(gate, name="gate"),
        af.Layer(_pass, name="save"),
        progress=af.CallbackProgress(on_progress, interval=0.01),
    )
    assert gate.opened.is_set()
    running = [s for s in seen if s.status == "running"]
    assert running, "no snapshot was taken while the run was going"
    assert any(_row(s, "gate").busy_workers == 1 for s in running)
    last = seen[-1]
    assert last.status == "completed"
    assert [s.status for s in seen].count("completed") == 1
    assert last.produced == 20
    assert last.total == 20
    assert [(r.name, r.done, r.total, r.emitted) for r in last.layers] == [
        ("gate", 20, 20, 20),
        ("save", 20, 20, 20),
    ]
    assert last.eta is None or last.eta == 0.0
    assert report.layers[1].received == 20


def test_snapshots_are_frozen_plain_data() -> None:
    seen: list[af.ProgressSnapshot] = []
    af.run(range(5), af.Layer(_pass, name="p"), progress=seen.append)
    last = seen[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        last.status = "x"  # type: ignore[misc]
    data = json.loads(last.to_json())
    assert data == last.to_dict()
    assert data["layers"][0]["name"] == "p"
    assert data["layers"][0]["done"] == 5
    assert data["status"] == "completed"


def test_total_gives_an_unsized_source_a_goal_and_downstream_totals_follow_fan_out() -> None:
    def numbers() -> Iterator[int]:
        yield from range(30)

    def twice(x: int) -> Iterator[int]:
        yield x
        yield x

    seen: list[af.ProgressSnapshot] = []
    af.run(numbers(), af.Layer(twice), af.Layer(_pass), total=30, progress=seen.append)
    last = seen[-1]
    assert last.total == 30
    assert [(r.done, r.total) for r in last.layers] == [(30, 30), (60, 60)]

    seen.clear()
    af.run(numbers(), af.Layer(_pass), progress=seen.append)
    assert seen[-1].total is None
    assert seen[-1].layers[0].total is None


def test_a_failing_callback_fails_the_run() -> None:
    def broken(snapshot: af.ProgressSnapshot) -> None:
        raise RuntimeError("the dashboard is down")

    with pytest.raises(RuntimeError, match="dashboard is down"):
        af.run(range(5), af.Layer(_pass), progress=broken)


def test_the_last_snapshot_says_how_the_run_ended() -> None:
    def fail(x: int) -> int:
        raise ValueError("bad item")

    seen: list[af.ProgressSnapshot] = []
    with pytest.raises(ValueError, match="bad item"):
        af.run(range(5), af.Layer(fail, name="fail"), progress=seen.append)
    assert seen[-1].status == "failed"
    assert seen[-1].layers[0].errors == 1


def test_stream_takes_progress_too() -> None:
    seen: list[af.ProgressSnapshot] = []
    with af.open_stream(range(4), af.Layer(_pass, ordered=True), progress=seen.append) as out:
        assert list(out) == [0, 1, 2, 3]
    assert seen[-1].status == "completed"
    assert seen[-1].layers[0].done == 4


def test_bad_progress_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="progress must be"):
        resolve_progress("yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        af.LogProgress(interval=0)
    with pytest.raises(TypeError, match="total must be an int"):
        af.run(range(3), af.Layer(_pass), total="3")  # type: ignore[arg-type]


def test_default_progress_is_off_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stderr is set here, not taken from the session: under ``pytest -s`` it is a terminal.
    with open(tmp_path / "stderr.txt", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        assert resolve_progress(None) is None
        assert resolve_progress(False) is None
        assert isinstance(resolve_progress(True), af.LogProgress)
        assert isinstance(resolve_progress(print), af.CallbackProgress)


def test_default_progress_is_the_live_table_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real terminal: the other end of a pseudo-terminal.
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            assert isinstance(resolve_progress(None), af.LiveProgress)
            assert isinstance(resolve_progress(True), af.LiveProgress)
            assert resolve_progress(False) is None
    finally:
        os.close(leader)
        os.close(follower)


# --- the terminal table ---------------------------------------------------------------------


def test_live_table_shows_every_layer_as_a_terminal_would() -> None:
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    af.run(
        range(40),
        af.Layer(_pass, 2, name="read"),
        af.Layer(_pass, 3, name="score", backend="async"),
        af.batch(10),
        af.Layer(_pass, name="save"),
        progress=af.LiveProgress(console=console, interval=0.05),
    )
    text = console.export_text()
    final = text[text.rindex("async_flow completed") :]
    lines = final.splitlines()
    assert lines[1].split() == [
        "layer",
        "backend",
        "done",
        "rate",
        "errors",
        "queue",
        "busy",
        "eta",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert rows["read"][1:4] == ["thread", "x2", "40/40"]
    assert rows["score"][1:4] == ["async", "x3", "40/40"]
    assert rows["batch"][3] == "40/40"
    assert rows["save"][3] == "4/4"
    assert "source 40/40" in lines[0]


def test_render_marks_errors_queue_and_busy_workers() -> None:
    snapshot = af.ProgressSnapshot(
        elapsed=75.0,
        status="running",
        produced=500,
        total=1000,
        eta=130.0,
        layers=(
            af.LayerProgress(
                name="score",
                backend="process",
                workers=4,
                done=480,
                total=1000,
                emitted=470,
                errors=3,
                rate=6.4,
                queued=200,
                maxsize=256,
                busy_workers=4,
                eta=81.25,
            ),
        ),
    )
    console = Console(record=True, width=120, color_system=None)
    console.print(render(snapshot))
    lines = console.export_text().splitlines()
    assert lines[0].split() == [
        "async_flow",
        "running",
        "1m15s",
        "source",
        "500/1,000",
        "eta",
        "2m10s",
    ]
    cells = lines[2].split()
    assert cells[:4] == ["score", "process", "x4", "480/1,000"]
    assert cells[-5:] == ["6.4/s", "3", "200/256", "4/4", "1m21s"]


# --- log lines ------------------------------------------------------------------------------


def test_log_lines_go_through_logging_while_running_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Gate()

    class OpenOnFirstLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "running" in record.getMessage():
                gate.opened.set()

    logger = logging.getLogger("async_flow.progress")
    handler = OpenOnFirstLine()
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="async_flow.progress"):
            af.run(
                range(10),
                af.Layer(gate, name="gate"),
                progress=af.LogProgress(interval=0.01),
            )
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in caplog.records if r.name == "async_flow.progress"]
    assert any(m.startswith("async_flow running") for m in messages)
    assert messages[-1].startswith("async_flow completed")
    assert "gate 10/10" in messages[-1]
    assert "busy 0/1" in messages[-1]
    assert len(messages[-1].splitlines()) == 1


def test_progress_true_logs_when_stderr_is_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="async_flow.progress"):
        af.run(range(3), af.Layer(_pass, name="p"), progress=True)
    assert any("p 3/3" in r.getMessage() for r in caplog.records)


def test_format_line_is_compact() -> None:
    seen: list[af.ProgressSnapshot] = []
    af.run(range(3), af.Layer(_pass, name="p"), af.Layer(_pass, name="q"), progress=seen.append)
    line = format_line(seen[-1])
    assert line.startswith("async_flow completed")
    assert " | p 3/3 " in line
    assert " | q 3/3 " in line


# --- timeline -------------------------------------------------------------------------------


def test_timeline_ends_with_the_final_counts() -> None:
    report = af.run(range(50), af.Layer(_pass, name="a"), af.Layer(_pass, name="b"))
    timeline = report.timeline
    assert timeline is not None
    assert timeline.layers == ("a", "b")
    assert [r[-1] for r in timeline.received] == [50, 50]
    assert list(timeline.times) == sorted(timeline.times)
    assert sum(
        r * dt for r, dt in zip(timeline.throughput(0), _steps(timeline.times), strict=True)
    ) == (pytest.approx(50))
    assert json.loads(report.to_json())["timeline"]["layers"] == ["a", "b"]


def _steps(times: tuple[float, ...]) -> list[float]:
    return [t - p for t, p in zip(times, (0.0, *times), strict=False)]


def test_timeline_memory_is_bounded_and_cumulative_counts_survive() -> None:
    recorder = TimelineRecorder(capacity=8)
    snapshots = af.run(range(1), af.Layer(_pass)).layers
    template = snapshots[0]
    for k in range(1, 1001):
        stats = dataclasses.replace(
            template, received=k, queued=7 if k == 333 else 0, busy_workers=2 * (k % 2), workers=2
        )
        recorder.tick(k / 10, (stats,))
        assert len(recorder) <= 8
    recorder.final(100.05, (dataclasses.replace(template, received=1000),))
    timeline = recorder.timeline(("p",), (1,), (10,))
    assert len(timeline.times) <= 9
    assert recorder.stride >= 128
    assert timeline.received[0][-1] == 1000
    assert list(timeline.times) == sorted(timeline.times)
    # Cumulative counts are exact at every kept sample; the peak fill is kept too.
    for t, r in zip(timeline.times[:-1], timeline.received[0][:-1], strict=True):
        assert r == round(t * 10)
    assert max(timeline.queued[0]) == 7
    # Busy workers alternate 0, 2, 0, 2...: every downsampled sample stands for their mean.
    assert all(b == pytest.approx(1.0) for b in timeline.busy[0][1:-1])


def test_batches_in_flight_are_not_counted_as_extra_workers() -> None:
    template = af.run(range(1), af.Layer(_pass, 2)).layers[0]
    recorder = TimelineRecorder()
    # Two batches in flight per worker (as the process backend keeps) on a 2-worker layer.
    recorder.tick(0.1, (dataclasses.replace(template, busy_workers=4),))
    timeline = recorder.timeline(("p",), (2,), (8,))
    assert timeline.busy_workers(0) == [2.0]


def test_live_table_is_closed_with_the_outcome_when_the_run_fails() -> None:
    def fail(x: int) -> int:
        if x == 3:
            raise ValueError("bad item")
        return x

    screen = io.StringIO()
    console = Console(file=screen, record=True, width=120, force_terminal=True, color_system=None)
    view = af.LiveProgress(console=console, interval=0.05)
    with pytest.raises(ValueError, match="bad item"):
        af.run(range(10), af.Layer(fail, name="fail"), progress=view)
    text = console.export_text()
    assert "async_flow failed" in text
    row = next(
        line for line in text[text.rindex("async_flow failed") :].splitlines() if "fail " in line
    )
    assert row.split()[-3] == "1"  # errors, then queue and busy workers
    # The live display was stopped: the terminal's cursor is shown again, at the very end.
    assert screen.getvalue().endswith("\x1b[?25h")


def test_cancelling_the_run_ends_the_view_with_cancelled() -> None:
    seen: list[af.ProgressSnapshot] = []

    async def stuck(x: int) -> int:
        await asyncio.sleep(3600)
        return x

    async def main() -> None:
        task: asyncio.Task[af.Report] | None = None

        def on_progress(snapshot: af.ProgressSnapshot) -> None:
            seen.append(snapshot)
            # Cancel once the worker is seen holding an item: the run is really under way.
            if snapshot.layers[0].busy_workers == 1 and task is not None and not task.cancelling():
                task.cancel()

        task = asyncio.ensure_future(
            af.pipeline(range(3), af.Layer(stuck), progress=af.CallbackProgress(on_progress, 0.01))
        )
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main())
    assert seen[-1].status == "cancelled"
    assert [s.status for s in seen[:-1]] == ["running"] * (len(seen) - 1)


# --- plain lines off a terminal -------------------------------------------------------------

_PROGRESS_SCRIPT = """
import logging, sys, time
import async_flow as af

if sys.argv[1] == "logging":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(message)s")

def step(x):
    time.sleep(0.02)
    return x

af.run(range(120), af.Layer(step, 2, name="step"), progress=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("configured", [False, True], ids=["plain", "logging"])
def test_progress_true_off_a_terminal_writes_lines_a_child_can_read(configured: bool) -> None:
    """stderr to a pipe, as under CI or `2> log`: the lines arrive there by themselves; a
    program that configured logging gets them through its handlers instead."""
    env = dict(os.environ, PYTHONPATH=str(Path(af.__file__).resolve().parents[1]))
    mode = "logging" if configured else "plain"
    done = subprocess.run(
        [sys.executable, "-c", _PROGRESS_SCRIPT, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    if configured:
        lines = [line.removeprefix("LOG ") for line in done.stdout.splitlines()]
        assert done.stderr == ""
    else:
        lines = done.stderr.splitlines()
        assert done.stdout == ""
    assert any(line.startswith("async_flow running") for line in lines), lines
    assert lines[-1].startswith("async_flow completed")
    assert "step 120/120" in lines[-1]


def _lines_in(seconds: float) -> int:
    """How many lines a default LogProgress writes over a run of ``seconds``, on a clock the
    test advances (the sampler's rule: update once ``interval`` has passed since the last)."""
    out = io.StringIO()
    view = af.LogProgress()
    # Pytest's log capture puts a handler on the root logger; a logger outside the tree has none,
    # as in a program that never configured logging, so lines go to stderr.
    view.logger = logging.Logger("unconfigured")
    lines = 0
    next_update = 0.0
    t = 0.0
    while t <= seconds:
        if t >= next_update:
            snapshot = af.ProgressSnapshot(
                elapsed=t, status="running", produced=0, total=None, eta=None, layers=()
            )
            with contextlib.redirect_stderr(out):
                view.update(snapshot)
            lines += 1
            next_update = t + view.interval
        t += 0.1
    assert out.getvalue().count("\n") == lines  # each update is one line on stderr
    return lines


def test_the_default_interval_grows_with_the_age_of_the_run() -> None:
    assert 3 <= _lines_in(3.0) <= 5  # a few lines for a short run
    hour = _lines_in(3600.0)
    assert 330 <= hour <= 420  # about one every 10 s
    assert af.LogProgress(interval=5).interval == 5  # a given interval stays fixed


# --- the drain ------------------------------------------------------------------------------


def test_a_drain_shows_in_the_snapshots_and_the_last_one_says_interrupted() -> None:
    seen: list[af.ProgressSnapshot] = []
    drained = threading.Event()

    def watch(snapshot: af.ProgressSnapshot) -> None:
        seen.append(snapshot)
        if snapshot.status == "draining":
            drained.set()

    def fn(x: int) -> int:
        if x == 20:
            os.kill(os.getpid(), signal.SIGINT)
        if x >= 20:  # the drain lasts until a snapshot has shown it
            assert drained.wait(30)
        return x

    with pytest.raises(af.Interrupted) as info:
        af.run(
            itertools.count(),
            af.Layer(fn, 2, maxsize=8),
            progress=af.CallbackProgress(watch, interval=0.01),
        )
    assert info.value.report.status == "interrupted"
    assert "draining" in [s.status for s in seen]
    assert seen[-1].status == "interrupted"


def test_the_live_table_ends_with_interrupted() -> None:
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    with pytest.raises(af.Interrupted):
        af.run(
            itertools.count(),
            af.Layer(_signal_at(30), maxsize=8),
            progress=af.LiveProgress(console=console, interval=0.05),
        )
    text = console.export_text()
    assert "async_flow interrupted" in text
    assert "async_flow completed" not in text


def test_a_long_drain_without_a_view_says_how_it_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    noticed = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        if line.startswith("async_flow: draining,"):
            noticed.set()

    monkeypatch.setattr(_pipeline, "_say", say)
    monkeypatch.setattr(_pipeline, "DRAIN_NOTICE_EVERY", 0.05)

    def fn(x: int) -> int:
        if x == 20:
            os.kill(os.getpid(), signal.SIGINT)
        if x >= 20:  # the drain lasts until it has said how it goes
            assert noticed.wait(30)
        return x

    with pytest.raises(af.Interrupted):
        af.run(itertools.count(), af.Layer(fn, 2, maxsize=8), progress=False)
    assert re.fullmatch(
        r"async_flow: SIGINT: draining \d+ items in flight; Ctrl-C again to abort", said[0]
    )
    assert re.fullmatch(
        r"async_flow: draining, \d+ items in flight, \d+ collected \(\d+s\)", said[1]
    ), said


def _signal_at(n: int) -> Any:
    def fn(x: int) -> int:
        if x == n:
            os.kill(os.getpid(), signal.SIGINT)
        return x

    return fn


def test_a_callback_is_called_every_second_by_default() -> None:
    """``progress=fn`` calls ``fn`` at an interval of 1 s: the view the run makes of a bare
    callable has that interval, and a real run calls it no more often (the snapshots say when
    they were taken). The run lasts until three calls were made while it was going."""
    view = resolve_progress(print)
    assert isinstance(view, af.CallbackProgress)
    assert view.interval == 1.0

    snapshots: list[af.ProgressSnapshot] = []
    three = threading.Event()

    def record(snapshot: af.ProgressSnapshot) -> None:
        snapshots.append(snapshot)
        if sum(s.status == "running" for s in snapshots) == 3:
            three.set()

    def until_three_calls(x: int) -> int:
        if x == 0:
            assert three.wait(30), "the callback was not called three times"
        return x

    af.run(range(3), af.Layer(until_three_calls), progress=record)
    running = [s.elapsed for s in snapshots if s.status == "running"]
    assert len(running) == 3
    gaps = [b - a for a, b in itertools.pairwise(running)]
    assert all(gap >= 1.0 for gap in gaps), gaps
