"""What a newcomer trips on: a generator function passed uncalled, lambdas' names, a run
without layers, and the guide's pointers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import async_flow as af

DOCS = Path(__file__).resolve().parent.parent / "docs"


def rows() -> Iterator[int]:
    yield from range(3)


async def arows() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(("source", "call"), [(rows, "rows()"), (arows, "arows()")])
def test_a_generator_function_passed_uncalled_asks_for_the_call(source: object, call: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"got function: did you mean {call}?")):
        af.run(source, af.Layer(str), progress=False)  # type: ignore[call-overload]


def test_a_value_that_is_no_source_gets_no_call_hint() -> None:
    with pytest.raises(TypeError, match=r"got int$"):
        af.run(5, af.Layer(str), progress=False)  # type: ignore[call-overload]


def test_a_lambdas_layer_is_named_for_its_place() -> None:
    def main() -> af.Report:
        return af.run(
            range(5),
            af.Layer(lambda x: x + 1),
            af.Layer(str),
            af.Layer(lambda s: s * 2),
            af.Layer(lambda s: s, name="keep"),
            progress=False,
        )

    report = main()
    assert [s.name for s in report.layers] == [
        "layer 1 (lambda)",
        "str",
        "layer 3 (lambda)",
        "keep",
    ]
    assert "layer 3 (lambda)" in str(report)


def test_a_lambdas_error_note_names_its_place() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        af.run(range(3), af.Layer(str), af.Layer(lambda s: 1 / 0), progress=False)
    assert info.value.__notes__[0].startswith("async_flow: raised in layer 'layer 2 (lambda)'")


def test_a_nested_functions_layer_is_called_by_its_own_name() -> None:
    def parse(x: int) -> int:
        return x

    assert af.Layer(parse).name == "parse"  # not "test_...<locals>.parse"


def test_a_run_without_layers_drains_its_source() -> None:
    yielded: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10):
            yielded.append(i)
            yield i

    report = af.run(source(), progress=False)
    assert yielded == list(range(10))  # read to its end
    assert report.layers == ()
    assert (report.source.produced, report.source.exhausted) == (10, True)
    assert report.bottleneck is None
    assert str(report).splitlines()[1] == (
        "no layers: the source was read to its end and its items dropped"
    )


def test_the_guide_points_to_every_page_and_the_whole_signature() -> None:
    index = (DOCS / "index.md").read_text()
    next_steps = index.split("## Where to go next", 1)[1]
    for page in sorted(p.name for p in DOCS.glob("*.md")):
        if page != "index.md":
            assert f"({page})" in next_steps, page
    layers = (DOCS / "layers.md").read_text()
    signature = layers.split("```python", 1)[1].split("```", 1)[0]
    for parameter in (
        "backend",
        "maxsize",
        "ordered",
        "name",
        "args",
        "kwargs",
        "options",
        "on_error",
        "timeout",
    ):
        assert f"{parameter}=" in signature, parameter
