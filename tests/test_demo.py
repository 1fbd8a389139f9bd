"""The demo end to end on a few files: the database holds what the source listed."""

from __future__ import annotations

import ast
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from async_flow._demo import analyse, complexity, demo, stdlib_files

DEMO_ARGS = ("--limit", "6", "--workers", "2", "--backend", "thread", "--no-progress")


def test_demo_indexes_files_into_sqlite(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    db = tmp_path / "index.db"
    png = tmp_path / "run.png"
    out = io.StringIO()
    report = demo(
        [*DEMO_ARGS, "--db", str(db), "--plot", str(png)],
        out=out,
    )
    files = stdlib_files(6)
    connection = sqlite3.connect(db)
    try:
        rows = dict(connection.execute("SELECT path, functions FROM files").fetchall())
        (functions,) = connection.execute("SELECT COUNT(*) FROM functions").fetchone()
        top = connection.execute(
            "SELECT path, name, complexity FROM functions ORDER BY complexity DESC LIMIT 1"
        ).fetchone()
    finally:
        connection.close()
    assert sorted(rows) == sorted(files)
    assert functions == sum(rows.values()) > 0
    # The stored scores are the ones analyse computes from the file itself.
    with open(top[0], "rb") as f:
        tree = ast.parse(f.read())
    scores = [
        complexity(node)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    assert top[2] == max(scores)
    text = out.getvalue()
    assert "the ten most complex functions:" in text
    assert f"{top[2]:4d}  {top[1]}" in text
    assert "bottleneck:" in text
    assert png.stat().st_size > 0
    assert report.layer("commit").received == report.layer("batch").emitted
    assert report.layer("analyse").received == 6


def test_analyse_scores_branches_and_survives_bad_syntax() -> None:
    source = b"""
class A:
    def m(self, x):
        if x and y or z:
            return [i for i in x if i]
        for _ in x:
            pass
        def inner():
            while True:
                pass
"""
    info = analyse(("a.py", source))
    assert info.classes == 1
    assert info.error is None
    # m: 1 + if + (and/or: 2) + comprehension (1 + 1 if) + for = 7; inner: 1 + while = 2.
    assert sorted(info.functions) == [("A.m", 3, 7), ("A.m.inner", 8, 2)]
    broken = analyse(("b.py", b"def (:\n"))
    assert broken.error is not None
    assert broken.error.startswith("SyntaxError")
    assert broken.functions == ()


def test_the_command_line_runs_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "async_flow",
            "demo",
            "--limit",
            "5",
            "--backend",
            "thread",
            "--db",
            str(tmp_path / "x.db"),
            "--plot",
            "",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "async_flow run completed" in result.stdout
    # Off a terminal the progress arrives as log lines on stderr.
    assert "async_flow completed" in result.stderr
    connection = sqlite3.connect(tmp_path / "x.db")
    try:
        assert connection.execute("SELECT COUNT(*) FROM files").fetchone() == (5,)
    finally:
        connection.close()


#: A ``sitecustomize`` that makes this interpreter behave as if Ray were not installed.
NO_RAY = """
import importlib.abc
import sys


class _NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoRay())
"""


def test_ray_without_its_backend_is_a_clear_error(tmp_path: Path) -> None:
    # Run where Ray is installed or not: a child interpreter with Ray hidden.
    hide = tmp_path / "no_ray"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(NO_RAY)
    src = Path(__file__).parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(src)])}
    hidden = subprocess.run(
        [sys.executable, "-c", "import ray"], capture_output=True, text=True, env=env, timeout=50
    )
    assert "ModuleNotFoundError: No module named 'ray'" in hidden.stderr
    db = tmp_path / "x.db"
    result = subprocess.run(
        [sys.executable, "-m", "async_flow", "demo", "--ray", "--limit", "1", "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "the 'ray' backend is not available here" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


def test_demo_on_worker_processes(tmp_path: Path) -> None:
    from async_flow._demo import _available

    if not _available("process"):
        pytest.skip("the process backend is not in this tree")
    db = tmp_path / "index.db"
    report = demo(
        [
            "--limit",
            "4",
            "--workers",
            "2",
            "--backend",
            "process",
            "--no-progress",
            "--db",
            str(db),
            "--plot",
            "",
        ],
        out=io.StringIO(),
    )
    assert report.layer("analyse").backend == "process"
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("SELECT COUNT(*) FROM files").fetchone() == (4,)
    finally:
        connection.close()
