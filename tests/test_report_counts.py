"""The report's counts and advice agree with each other: skipped is not failed, a resumed run
says what it skipped, the shares of worker-time are explained, start-up is its own stage, and the
plot shows busy workers as a share of each layer's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import async_flow as af
from async_flow._diagnosis import diagnose
from async_flow._progress import format_line


def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def _table(report: af.Report) -> dict[str, dict[str, str]]:
    """The report's table as {layer: {column: cell}}."""
    lines = str(report).splitlines()
    head = lines[1].split()
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2 : 2 + len(report.layers)]:
        cells = line.split()
        # "thread x2" is one cell of two words.
        cells = [cells[0], f"{cells[1]} {cells[2]}", *cells[3:]]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def test_skipped_items_have_their_own_column_not_failed() -> None:
    report = af.run(range(14), af.Layer(odd_fails, 2, on_error=af.Skip()), progress=False)
    stats = report.layers[0]
    assert (stats.failed, stats.skipped) == (0, 7)
    row = _table(report)["odd_fails"]
    assert (row["failed"], row["skipped"]) == ("0", "7")
    # No retries, no dead letters: no columns for them.
    assert "retried" not in row
    assert "dead-lettered" not in row


def test_retried_and_dead_lettered_columns_appear_when_non_zero() -> None:
    policy = af.Retry(2, then=af.DeadLetter())
    report = af.run(range(6), af.Layer(odd_fails, on_error=policy), progress=False)
    row = _table(report)["odd_fails"]
    # 3 odd items, each run again twice, then dead-lettered (which counts as failed).
    assert (row["failed"], row["skipped"], row["retried"], row["dead-lettered"]) == (
        "3",
        "0",
        "6",
        "3",
    )


def test_a_resumed_run_says_how_many_items_were_already_committed(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    def row(i: int) -> dict[str, Any]:
        return {"id": i}

    layers = (af.Layer(row, 2), af.sinks.sqlite(db))
    af.run(range(357), *layers, checkpoint=af.Checkpoint(db, key=int), progress=False)
    seen: list[af.ProgressSnapshot] = []
    checkpoint = af.Checkpoint(db, key=int)
    report = af.run(range(1000), *layers, checkpoint=checkpoint, progress=seen.append)
    assert report.source.produced == 1000
    assert report.source.already_committed == 357
    assert report.layers[0].received == 643
    assert (
        str(report)
        .splitlines()[0]
        .endswith("1000 source items (357 already committed by an earlier run, skipped)")
    )
    last = seen[-1]
    assert last.already_committed == 357
    # The layers' totals leave out what an earlier run did: the run ends at 643 of 643.
    assert (last.layers[0].done, last.layers[0].total) == (643, 643)
    assert "357 source items already committed, skipped" in format_line(last)
    assert last.to_dict()["already_committed"] == 357
    # A third run finds nothing to do, and the advice says so (not "make the source faster").
    again = af.run(range(1000), *layers, checkpoint=af.Checkpoint(db, key=int), progress=False)
    assert again.source.already_committed == 1000
    assert again.bottleneck is not None
    assert again.bottleneck.stage is None
    assert "nothing to do: all 1000 source items were already committed" in str(again)


def _stats(
    name: str, busy: float, wait: float, blocked: float = 0.0, elapsed: float = 10.0
) -> af.LayerStats:
    """A 2-worker layer's stats with the given shares of its worker-time."""
    return af.LayerStats(
        **{
            "name": name,
            "backend": "process",
            "workers": 2,
            "received": 50,
            "emitted": 50,
            "failed": 0,
            "skipped": 0,
            "retried": 0,
            "restarts": 0,
            "busy_seconds": busy * 2 * elapsed,
            "wait_seconds": wait * 2 * elapsed,
            "blocked_seconds": blocked * 2 * elapsed,
            "busy_workers": 0,
            "queued": 0,
            "maxsize": 256,
            "elapsed": elapsed,
        }
    )


def _source(**kw: Any) -> af.SourceStats:
    fields: dict[str, Any] = {
        "produced": 50,
        "blocked_seconds": 0.0,
        "elapsed": 10.0,
        "exhausted": True,
    }
    fields.update(kw)
    return af.SourceStats(**fields)


def test_the_legend_defines_the_shares_and_explains_an_overlap() -> None:
    plain = af.Report(layers=(_stats("parse", 0.60, 0.30),), source=_source(), elapsed=10.0)
    legend = str(plain).splitlines()[3]
    assert legend.startswith("busy/waiting/blocked: share of each layer's worker-time")
    assert "overlap" not in legend
    # 81% + 34%: the sum passes 100%, and the legend says for which layer and why.
    over = af.Report(
        layers=(_stats("parse", 0.60, 0.30), _stats("score", 0.81, 0.34)),
        source=_source(),
        elapsed=10.0,
    )
    legend = str(over).splitlines()[4]
    assert "they overlap for 'score':" in legend
    assert "second batch in flight" in legend
    assert "'parse'" not in legend


def test_start_up_is_a_stage_of_its_own_not_the_source() -> None:
    # A 50-item run on worker processes: 0.028 s of its 0.037 s went on starting them; the
    # source then produced its items at once (the figures of a real run).
    source = _source(elapsed=0.037, running_seconds=0.0297, startup_seconds=0.0284)
    layers = (_stats("f", 0.29, 0.0, elapsed=0.036),)
    found = diagnose(layers, source)
    assert found is not None
    assert (found.stage, found.index) == ("startup", -2)
    assert found.busy_fraction == pytest.approx(0.0284 / 0.037)
    assert "worker processes" in found.advice
    assert "make the source faster" not in found.advice
    # A source that really is slow after a short start-up is still named.
    slow = _source(elapsed=10.0, running_seconds=9.9, startup_seconds=0.1)
    found = diagnose((_stats("f", 0.2, 0.8),), slow)
    assert found is not None
    assert found.stage == "source"


def test_a_run_measures_its_start_up() -> None:
    report = af.run(range(20), af.Layer(str, backend="process"), progress=False)
    source = report.source
    assert source.running_seconds is not None
    assert 0 < source.startup_seconds <= source.running_seconds <= source.elapsed
    assert report.to_dict()["source"]["startup_seconds"] == source.startup_seconds


def _slow(text: str) -> int:
    time.sleep(0.02)
    return len(text)


def test_the_plot_draws_busy_workers_as_a_share_of_each_layer(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from async_flow._plot import busy_percent

    # 'narrow' takes at least 0.6 s (60 items of 20 ms on 2 workers): the sampler, every 0.1 s,
    # finds its workers busy.
    report = af.run(
        range(60), af.Layer(str, 8, name="wide"), af.Layer(_slow, 2, name="narrow"), progress=False
    )
    timeline = report.timeline
    assert timeline is not None
    for i, name in enumerate(("wide", "narrow")):
        times, percents = busy_percent(report, i)
        busy = timeline.busy_workers(i)
        assert times == [0.0, *timeline.times]
        workers = report.layer(name).workers
        assert percents[1:] == pytest.approx([100 * b / workers for b in busy])
        assert all(0 <= p <= 100 for p in percents)
    assert max(busy_percent(report, 1)[1]) > 50  # 2 workers busy is 100%, not 2
    # The figure's busy panel draws those series (matplotlib keeps what each line was given).
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        drawn.append(self)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", keep)
        report.plot(tmp_path / "run.png")
    busy_axis = drawn[0].axes[2]
    assert busy_axis.get_ylim() == (0, 105)
    lines = {line.get_label(): line for line in busy_axis.get_lines()}
    for i, name in enumerate(("wide", "narrow")):
        times, percents = busy_percent(report, i)
        line = lines[f"{name} (of {report.layer(name).workers})"]
        assert list(line.get_ydata()) == pytest.approx(percents)
