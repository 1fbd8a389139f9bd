"""Report.plot: a readable PNG of the run, and a clear error without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import async_flow as af


def _pass(x: int) -> int:
    return x


def test_plot_writes_a_readable_png(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    report = af.run(range(200), af.Layer(_pass, 2, name="a"), af.Layer(_pass, name="b"))
    path = tmp_path / "run.png"
    report.plot(path)
    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert (width, height) == (1000, 750)
    # Not a blank canvas: the panels drew lines in more than one colour.
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::97]}) > 3


def test_plot_without_matplotlib_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = af.run(range(3), af.Layer(_pass))
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'async_flow\[plot\]'"):
        report.plot(tmp_path / "run.png")
    assert not (tmp_path / "run.png").exists()


def test_a_report_without_a_timeline_cannot_be_plotted(tmp_path: Path) -> None:
    report = af.run(range(3), af.Layer(_pass))
    bare = af.Report(layers=report.layers, source=report.source, elapsed=report.elapsed)
    with pytest.raises(ValueError, match="no timeline"):
        bare.plot(tmp_path / "run.png")
