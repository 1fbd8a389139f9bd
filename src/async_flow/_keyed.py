"""Keyed items: the envelope a checkpointed run moves between layers, and the call that unwraps it.

Under a checkpoint every item travels as :class:`Keyed` (its source item's key, the value). A layer
sees only values: the runtime gives its workers a copy of the layer (:func:`keyed_layer`) whose
worker call unwraps the value, calls the user's function and wraps each output with the same key.
The wrapping happens where the function runs (thread, process, Ray actor), built there from the
layer copy, so nothing unpicklable crosses and a run without a checkpoint pays nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ._layer import Kind, Layer

__all__ = ("LEDGER_TABLE", "META_TABLE", "Keyed", "keyed_call", "keyed_layer")

#: The table of finished source keys, in the checkpoint's database (one column, ``k``).
LEDGER_TABLE = "_af_ledger"
#: Name/value pairs about the checkpoint (the pipeline's fingerprint).
META_TABLE = "_af_meta"


class Keyed:
    """A value with the key of the source item it came from.

    ``final`` is set by the runtime on the last envelope of a source item to reach the collector:
    the collector records the key as finished when it commits that envelope.
    """

    __slots__ = ("final", "key", "value")

    def __init__(self, key: Any, value: Any, final: bool = False) -> None:
        self.key = key
        self.value = value
        self.final = final

    def __repr__(self) -> str:
        return f"Keyed({self.key!r}, {self.value!r}{', final' if self.final else ''})"


class _KeyedLayer(Layer[Any, Any]):
    """A layer whose workers unwrap :class:`Keyed` inputs and wrap their outputs."""

    keyed = True


def keyed_layer(layer: Layer[Any, Any]) -> Layer[Any, Any]:
    """A copy of ``layer`` that works on :class:`Keyed` items (the original is left untouched)."""
    copy: Layer[Any, Any] = _KeyedLayer.__new__(_KeyedLayer)
    for name in Layer.__slots__:
        setattr(copy, name, getattr(layer, name))
    return copy


def keyed_call(call: Callable[[Any], Any], kind: Kind) -> Callable[[Any], Any]:
    """Wrap a worker's callable so that it takes and returns :class:`Keyed` items."""
    if kind is Kind.MAP:

        def keyed_map(env: Keyed) -> Keyed:
            return Keyed(env.key, call(env.value))

        return keyed_map
    if kind is Kind.FLAT:

        def keyed_flat(env: Keyed) -> Iterator[Keyed]:
            key = env.key
            for out in call(env.value):
                yield Keyed(key, out)

        return keyed_flat
    if kind is Kind.AMAP:

        async def keyed_amap(env: Keyed) -> Keyed:
            return Keyed(env.key, await call(env.value))

        return keyed_amap

    async def keyed_aflat(env: Keyed) -> AsyncIterator[Keyed]:
        key = env.key
        async for out in call(env.value):
            yield Keyed(key, out)

    return keyed_aflat
