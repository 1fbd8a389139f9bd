"""The public surface: exactly what __all__ says, each name documented."""

from __future__ import annotations

import dataclasses

import pytest

import async_flow as af


def test_all_is_a_sorted_tuple_of_existing_names() -> None:
    assert isinstance(af.__all__, tuple)
    assert list(af.__all__) == sorted(af.__all__)
    for name in af.__all__:
        assert hasattr(af, name), name


def test_no_public_name_is_missing_from_all() -> None:
    public = {n for n in vars(af) if not n.startswith("_")}
    # Submodules imported as a side effect are not API.
    public -= {"backends"}
    assert public <= set(af.__all__), public - set(af.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in af.__all__:
        obj = getattr(af, name)
        if name == "__version__":
            continue
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_layer_stats_and_report_are_frozen() -> None:
    report = af.run(range(3), af.Layer(str))
    stats = report.layers[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.received = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.status = "failed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.source.produced = 99  # type: ignore[misc]
    # Its collections are immutable too: a report cannot be changed through them.
    assert isinstance(report.layers, tuple)
    assert isinstance(report.scaling, tuple)
    assert isinstance(report.failures, tuple)
    assert (report.status, stats.received, report.source.produced) == ("completed", 3, 3)
    assert report.to_dict()["layers"][0]["received"] == 3
    assert "str" in str(report)
