"""Chains a type checker must refuse: each marked line is an error that mypy must report.

Not part of the normal mypy run (``exclude`` in pyproject.toml): ``tests/test_typed_chain.py``
runs mypy on this file alone and compares its errors with the ``# error:`` comments, line by line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import async_flow as af


def ints() -> Iterator[int]:
    yield from range(3)


def takes_str(text: str) -> int:
    return len(text)


def takes_int(n: int) -> str:
    return str(n)


def takes_bytes(data: bytes) -> bytes:
    return data


def wrong_first_layer() -> None:
    af.run(ints(), af.Layer(takes_str))  # error: run
    asyncio.run(af.pipeline(ints(), af.Layer(takes_str)))  # error: pipeline
    af.open_stream(ints(), af.Layer(takes_str))  # error: open_stream


def wrong_middle_layer() -> None:
    # int -> str -> (str expected, bytes taken)
    af.run(ints(), af.Layer(takes_int), af.Layer(takes_bytes))  # error: run
    af.run(ints(), af.Layer(takes_int), af.Layer(takes_str), af.Layer(takes_str))  # error: run


def wrong_layer_deep_in_a_chain() -> None:
    seven = (af.Layer(takes_int), af.Layer(takes_str)) * 3 + (af.Layer(takes_int),)
    af.run(ints(), *seven, af.Layer(takes_bytes))  # error: run


def wrong_after_a_helper() -> None:
    # af.flatten() takes iterables: an int is none.
    af.run(ints(), af.flatten())  # error: run
