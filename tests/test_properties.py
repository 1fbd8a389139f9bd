"""Property: a pipeline of map / filter / flat-map / batch layers equals a plain loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import async_flow as af


def _add(k: int) -> Any:
    def add(x: int) -> int:
        return x + k

    return add


def _keep(m: int) -> Any:
    def keep(x: int) -> Iterator[int]:
        if x % m:
            yield x

    return keep


def _repeat(n: int) -> Any:
    def repeat(x: int) -> Iterator[int]:
        for _ in range(n):
            yield x

    return repeat


def _async_add(k: int) -> Any:
    async def add(x: int) -> int:
        return x + k

    return add


OPS = st.one_of(
    st.tuples(st.just("add"), st.integers(-5, 5)),
    st.tuples(st.just("aadd"), st.integers(-5, 5)),
    st.tuples(st.just("keep"), st.integers(2, 4)),
    st.tuples(st.just("repeat"), st.integers(0, 3)),
    st.tuples(st.just("batch"), st.integers(1, 5)),
)

STEP = st.tuples(
    OPS,
    st.integers(1, 4),  # workers
    st.integers(1, 6),  # maxsize
    st.booleans(),  # ordered
    st.sampled_from(["async", "thread"]),
)


def _sequential(ops: list[tuple[str, int]], items: list[int]) -> list[int]:
    for op, arg in ops:
        if op in ("add", "aadd"):
            items = [x + arg for x in items]
        elif op == "keep":
            items = [x for x in items if x % arg]
        elif op == "repeat":
            items = [x for x in items for _ in range(arg)]
        # batch + flatten is the identity on the flat sequence
    return items


def _layers(steps: list[Any]) -> list[af.Layer[Any, Any]]:
    layers: list[af.Layer[Any, Any]] = []
    for (op, arg), workers, maxsize, ordered, backend in steps:
        if op == "batch":
            layers += [af.batch(arg, name="batch"), af.flatten(workers, name="flatten")]
            layers[-1].ordered = ordered
            continue
        fn = {"add": _add, "aadd": _async_add, "keep": _keep, "repeat": _repeat}[op](arg)
        if op == "aadd":
            backend = "async"
        layers.append(af.Layer(fn, workers, maxsize=maxsize, ordered=ordered, backend=backend))
    return layers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(-100, 100), max_size=60), st.lists(STEP, min_size=1, max_size=4))
def test_pipeline_equals_sequential(items: list[int], steps: list[Any]) -> None:
    layers = _layers(steps)
    with af.open_stream(items, *layers) as results:
        got = list(results)
    expected = _sequential([s[0] for s in steps], items)
    assert Counter(got) == Counter(expected)
    if all(layer.ordered or layer.stream is not None for layer in layers):
        assert got == expected
