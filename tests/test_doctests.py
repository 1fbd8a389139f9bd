"""The examples in the docstrings run as shown."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "async_flow._diagnosis",
    "async_flow._helpers",
    "async_flow._layer",
    "async_flow._pipeline",
    "async_flow._policy",
    "async_flow._source",
    "async_flow._progress",
    "async_flow._report",
    "async_flow._stats",
    "async_flow._timeline",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
