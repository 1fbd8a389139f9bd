"""The report's diagnosis: pipelines built with a known bottleneck must be named correctly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

import async_flow as af
from async_flow._diagnosis import diagnose

#: Per-item time of the slow stage. Everything else does next to nothing per item, so the slow
#: stage is busy ~100% of the run and the others a small share of it, however loaded the machine.
SLOW = 0.004


def _pass(x: int) -> int:
    return x


async def _apass(x: int) -> int:
    return x


def _slow(x: int) -> int:
    time.sleep(SLOW)
    return x


def _slow_source(n: int) -> Iterator[int]:
    for i in range(n):
        time.sleep(SLOW)
        yield i


def test_a_slow_middle_layer_is_named() -> None:
    report = af.run(
        range(150),
        af.Layer(_apass, name="read", maxsize=4),
        af.Layer(_slow, name="score", maxsize=4),
        af.Layer(_apass, name="save", maxsize=4),
    )
    bottleneck = report.bottleneck
    assert bottleneck is not None
    assert (bottleneck.stage, bottleneck.index) == ("score", 1)
    assert bottleneck.busy_fraction > 0.5
    assert bottleneck.advice.startswith("'score' was busy ")
    assert "'read' was blocked on its output" in bottleneck.advice
    assert bottleneck.advice.endswith(
        "give 'score' more workers (or backend='process' if it is CPU-bound)"
    )


def test_a_slow_collector_is_named_and_told_to_batch() -> None:
    report = af.run(
        range(150),
        af.Layer(_apass, name="read", maxsize=4),
        af.Layer(_pass, 2, name="score", maxsize=4),
        af.Layer(_slow, name="save", maxsize=4),
    )
    bottleneck = report.bottleneck
    assert bottleneck is not None
    assert bottleneck.stage == "save"
    assert "'score' was blocked on its output" in bottleneck.advice
    assert "af.batch()" in bottleneck.advice


def test_a_slow_source_is_named() -> None:
    report = af.run(
        _slow_source(120),
        af.Layer(_apass, 4, name="parse"),
        af.Layer(_apass, name="save"),
    )
    bottleneck = report.bottleneck
    assert bottleneck is not None
    assert (bottleneck.stage, bottleneck.index) == ("source", -1)
    assert "'parse' waited for input" in bottleneck.advice
    assert "make the source faster" in bottleneck.advice


def test_the_diagnosis_is_in_the_text_and_the_json() -> None:
    report = af.run(range(60), af.Layer(_slow, name="slow"))
    assert report.bottleneck is not None
    assert f"bottleneck: {report.bottleneck.advice}" in str(report)
    data = json.loads(report.to_json())
    assert data["bottleneck"]["stage"] == "slow"
    assert data["bottleneck"]["advice"] == report.bottleneck.advice


# --- the rules, on hand-made counters -------------------------------------------------------


def _stats(name: str, busy: float, wait: float, blocked: float, **kw: object) -> af.LayerStats:
    fields: dict[str, object] = {
        "name": name,
        "backend": "thread",
        "workers": 1,
        "received": 100,
        "emitted": 100,
        "failed": 0,
        "skipped": 0,
        "retried": 0,
        "restarts": 0,
        "busy_seconds": busy,
        "wait_seconds": wait,
        "blocked_seconds": blocked,
        "busy_workers": 0,
        "queued": 0,
        "maxsize": 8,
        "elapsed": 1.0,
    }
    fields.update(kw)
    return af.LayerStats(**fields)  # type: ignore[arg-type]


def _source(blocked: float, running: float = 1.0) -> af.SourceStats:
    return af.SourceStats(
        produced=100, blocked_seconds=blocked, elapsed=1.0, exhausted=True, running_seconds=running
    )


def test_the_example_sentence() -> None:
    layers = (_stats("read", 0.1, 0.0, 0.88), _stats("score", 0.97, 0.02, 0.0, backend="async"))
    bottleneck = diagnose(layers, _source(0.9))
    assert bottleneck is not None
    assert bottleneck.advice == (
        "'score' was busy 97% of the run while 'read' was blocked on its output 88%:"
        " give 'score' more workers, or batch its input with af.batch() so it does more per call"
    )


def test_a_collector_behind_a_batch_layer_is_told_to_take_larger_batches() -> None:
    layers = (
        _stats("parse", 0.1, 0.0, 0.9),
        _stats("batch", 0.0, 0.1, 0.9, emitted=10, backend="async"),
        _stats("save", 0.95, 0.0, 0.0, received=10, emitted=10),
    )
    bottleneck = diagnose(layers, _source(0.9))
    assert bottleneck is not None
    assert bottleneck.stage == "save"
    assert bottleneck.advice.endswith("or give it larger batches so it does more per call")


def test_a_process_layer_with_a_worker_per_cpu_is_told_to_scale_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    layers = (
        _stats("analyse", 1.9, 0.0, 0.0, backend="process", workers=2),
        _stats("save", 0.1, 0.9, 0.0),
    )
    bottleneck = diagnose(layers, _source(0.8))
    assert bottleneck is not None
    assert bottleneck.stage == "analyse"
    assert "a worker per CPU (2 on 2)" in bottleneck.advice
    assert "backend='ray'" in bottleneck.advice


def test_nothing_saturated_names_no_stage() -> None:
    layers = (_stats("a", 0.1, 0.8, 0.0), _stats("b", 0.2, 0.7, 0.0))
    bottleneck = diagnose(layers, _source(0.0, running=0.01))
    assert bottleneck is not None
    assert bottleneck.stage is None
    assert bottleneck.index is None
    assert "no stage was busy" in str(bottleneck)
    assert diagnose((), _source(0.0)) is None


def test_a_source_that_finished_early_is_not_blamed() -> None:
    layers = (_stats("score", 0.9, 0.0, 0.0),)
    bottleneck = diagnose(layers, _source(0.0, running=0.001))
    assert bottleneck is not None
    assert bottleneck.stage == "score"


def test_a_last_layer_blocked_on_its_output_names_the_stream_reader() -> None:
    # Only the reader of an open_stream can block the last layer: a collector has no outbox.
    layers = (_stats("parse", 0.05, 0.0, 0.9), _stats("score", 0.1, 0.0, 1.8, workers=2))
    bottleneck = diagnose(layers, _source(0.9))
    assert bottleneck is not None
    assert (bottleneck.stage, bottleneck.index) == ("reader", 2)
    assert bottleneck.busy_fraction == pytest.approx(0.9)
    assert bottleneck.advice == (
        "the code reading the stream was the limit: 'score' was blocked on its output 90% of the"
        " run: do less per item in the loop that reads the stream, or move that work into a"
        " layer of its own"
    )


def test_a_busier_layer_is_named_before_the_reader() -> None:
    layers = (_stats("score", 0.95, 0.0, 0.6),)
    bottleneck = diagnose(layers, _source(0.9))
    assert bottleneck is not None
    assert bottleneck.stage == "score"


# --- a slow reader of a stream, for real ------------------------------------------------------


def test_a_slow_for_loop_over_a_stream_is_named_as_the_bottleneck() -> None:
    # The loop sleeps per item; the layer does nothing. So the layer's workers spend the run
    # blocked on the stream's channel, every one of them (the counts of concurrent waits add up).
    with af.open_stream(range(400), af.Layer(_pass, 2, name="pass"), maxsize=4) as stream:
        for _ in stream:
            time.sleep(SLOW)
    report = stream.report
    assert report.layers[0].blocked_fraction > 0.5
    bottleneck = report.bottleneck
    assert bottleneck is not None
    assert (bottleneck.stage, bottleneck.index) == ("reader", 1)
    assert "'pass' was blocked on its output" in bottleneck.advice
    assert f"bottleneck: {bottleneck.advice}" in str(report)


def test_a_slow_async_for_over_a_stream_without_layers_blocks_the_source() -> None:
    async def main() -> af.Report:
        async with af.open_stream(range(200), maxsize=4) as stream:
            async for _ in stream:
                await asyncio.sleep(SLOW)
        return stream.report

    report = asyncio.run(main())
    assert report.source.blocked_fraction > 0.5
    assert report.bottleneck is None  # no layer: nothing to judge
