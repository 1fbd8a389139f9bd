"""What a type checker infers for a ``Layer`` and the stream of a pipeline.

Checked by mypy (``[tool.mypy] files`` in pyproject.toml): a wrong ``assert_type`` fails the check,
and so does a ``# type: ignore`` that stops being needed (``warn_unused_ignores``). Nothing here is
executed: the checks sit in functions that are never called, and pytest does not collect this file.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from typing import Any, TypeVar, assert_type

import async_flow as af

T = TypeVar("T")

# --- functions, one per kind ---------------------------------------------------------------


def parse(line: str) -> int:
    return int(line)


async def fetch(key: int) -> bytes:
    return b""


def words(text: str) -> Iterator[str]:
    yield from text.split()


def evens(n: int) -> Generator[int, None, None]:
    if n % 2 == 0:
        yield n


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def pair(x: int) -> list[int]:
    return [x, x]


def scaled(x: int, factor: float = 1.0) -> float:
    return x * factor


def add(x: int, y: int) -> int:
    return x + y


def check_function_kinds() -> None:
    assert_type(af.Layer(parse), af.Layer[str, int])
    assert_type(af.Layer(fetch, 8), af.Layer[int, bytes])
    # A generator function is a flat map: each yielded value is one output.
    assert_type(af.Layer(words), af.Layer[str, str])
    assert_type(af.Layer(evens), af.Layer[int, int])
    assert_type(af.Layer(chunks, backend="async"), af.Layer[bytes, bytes])
    # A plain function returning a list passes the list on.
    assert_type(af.Layer(pair), af.Layer[int, list[int]])
    # Extra parameters with defaults are fine; a partial is a callable like any other.
    assert_type(af.Layer(scaled), af.Layer[int, float])
    # typeshed's partial takes any arguments: the input is Any, the output is kept.
    assert_type(af.Layer(functools.partial(scaled, factor=2.0)), af.Layer[Any, float])
    # Builtins and methods.
    assert_type(af.Layer(str.upper), af.Layer[str, str])
    assert_type(af.Layer(print), af.Layer[object, None])
    # A class without __call__ is called per item like a function (here: its constructor).
    assert_type(af.Layer(str), af.Layer[object, str])


def check_options_keep_the_types() -> None:
    layer = af.Layer(
        parse,
        af.Auto(min=1, max=4),
        backend="process",
        maxsize=16,
        ordered=True,
        name="parse",
        options={"start_method": "spawn"},
        on_error=af.Skip(),
        timeout=2.5,
    )
    assert_type(layer, af.Layer[str, int])


# --- classes whose instances are called per item ---------------------------------------------


class Model:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, features: list[float]) -> float:
        return sum(features)


class Client:
    async def __call__(self, url: str) -> bytes:
        return url.encode()


class Splitter:
    def __call__(self, text: str) -> Iterator[str]:
        yield from text.split()


class Pages:
    async def __call__(self, url: str) -> AsyncIterator[bytes]:
        yield url.encode()


def check_worker_classes() -> None:
    assert_type(af.Layer(Model, 2, args=("model.bin",)), af.Layer[list[float], float])
    assert_type(af.Layer(Client, kwargs={}), af.Layer[str, bytes])
    assert_type(af.Layer(Splitter), af.Layer[str, str])
    assert_type(af.Layer(Pages), af.Layer[str, bytes])
    # An instance is a callable: it is typed like a function.
    assert_type(af.Layer(Model("model.bin")), af.Layer[list[float], float])


def same(x: T) -> T:
    return x


def check_lambdas_and_generic_functions() -> None:
    # A lambda takes its types from where the layer goes, and its body is checked against them.
    squares: af.Layer[int, int] = af.Layer(lambda x: x * x)
    wrong: af.Layer[str, int] = af.Layer(lambda x: x + 1)  # type: ignore[operator]
    del squares, wrong
    # A generic function matches every overload; the types are spelled out instead.
    assert_type(af.Layer[int, int](same), af.Layer[int, int])


def check_wrong_declarations() -> None:
    # Constructor arguments are for a class; the run would refuse them for a function.
    af.Layer(parse, args=(1,))  # type: ignore[call-overload]
    # fn is called with one item.
    af.Layer(add)  # type: ignore[arg-type]


# --- composing ------------------------------------------------------------------------------


def check_variance() -> None:
    # A layer consumes In and produces Out: it fits wherever a narrower input and a wider
    # output are expected.
    layer: af.Layer[bool, object] = af.Layer(pair)
    wider: af.Layer[Any, object] = af.Layer(fetch)
    del layer, wider


def check_helpers() -> None:
    assert_type(af.batch(100), af.Layer[Any, list[Any]])
    assert_type(af.flatten(), af.Layer[Iterable[Any], Any])
    assert_type(af.sinks.sqlite("out.db"), af.Layer[Any, None])


def check_streams(lines: list[str], keys: AsyncIterator[int]) -> None:
    # The stream yields the last layer's outputs, or the source's items without layers.
    assert_type(af.open_stream(lines), af.Stream[str])
    assert_type(af.open_stream(keys, maxsize=8), af.Stream[int])
    assert_type(af.open_stream(af.merge(range(3), [4, 5])), af.Stream[int])
    # merge()'s result can be named, to annotate a function that builds a source.
    merged: af.Merge[str] = af.merge(lines, ["x"])
    assert_type(af.open_stream(merged, af.Layer(parse)), af.Stream[int])
    assert_type(af.open_stream(lines, af.Layer(parse)), af.Stream[int])
    assert_type(af.open_stream(lines, af.Layer(words), af.Layer(len)), af.Stream[int])
    assert_type(af.open_stream(lines, af.Layer(parse), af.batch(10), af.Layer(sum)), af.Stream[int])
    assert_type(
        af.open_stream(keys, af.Layer(fetch), af.Layer(chunks), af.flatten()), af.Stream[Any]
    )
    with af.open_stream(lines, af.Layer(parse)) as numbers:
        for n in numbers:
            assert_type(n, int)
    # A loop factory (uvloop.new_event_loop, say) leaves the item type alone.
    loops = asyncio.new_event_loop
    assert_type(af.open_stream(lines, af.Layer(parse), loop_factory=loops), af.Stream[int])
    assert_type(af.run(lines, af.Layer(parse), loop_factory=loops), af.Report)
    af.run(lines, loop_factory=asyncio.get_event_loop_policy)  # type: ignore[arg-type]


async def check_async_stream(lines: list[str]) -> None:
    async with af.open_stream(lines, af.Layer(words, ordered=True)) as stream:
        async for word in stream:
            assert_type(word, str)


# --- chains: each layer takes what the one before it gives ------------------------------------


def check_chains(lines: list[str], keys: AsyncIterator[int]) -> None:
    # Up to eight layers are typed one by one (tests/type_tests/fail_wrong_chain.py holds the
    # chains that must be refused).
    eight = af.open_stream(
        lines,
        af.Layer(parse),
        af.Layer(pair),
        af.flatten(),
        af.Layer(scaled),
        af.Layer(str),
        af.Layer(words),
        af.Layer(len),
        af.Layer(evens),
    )
    assert_type(eight, af.Stream[int])
    # A layer taking a wider type than it is given fits (its input is contravariant).
    assert_type(af.run(keys, af.Layer(print)), af.Report)
    assert_type(af.open_stream(lines, af.Layer(str), af.Layer(len)), af.Stream[int])
    # Helpers and sinks fit anywhere their input does.
    assert_type(af.run(lines, af.Layer(parse), af.batch(100), af.sinks.sqlite("x.db")), af.Report)
    # Past eight layers the items are Any.
    nine = af.open_stream(lines, *(af.Layer(str),) * 9)
    assert_type(nine, af.Stream[Any])


async def check_typed_pipeline(lines: list[str]) -> None:
    assert_type(await af.pipeline(lines, af.Layer(parse), af.Layer(fetch)), af.Report)
