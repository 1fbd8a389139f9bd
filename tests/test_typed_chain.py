"""The typed chain: mypy refuses a layer whose input does not match the previous layer's output.

``tests/type_tests/fail_wrong_chain.py`` holds chains that must fail, each line marked with the
function whose type parameter cannot be inferred; it is excluded from the normal mypy run, and this
test runs the venv's mypy on it alone. The overloads are generated: the generator must have
nothing left to change.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAILING = ROOT / "tests" / "type_tests" / "fail_wrong_chain.py"
MARK = re.compile(r"#\s*error:\s*(\w+)\s*$")
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")


def _expected() -> set[tuple[int, str]]:
    marked = set()
    for number, line in enumerate(FAILING.read_text().splitlines(), 1):
        if match := MARK.search(line):
            marked.add((number, match.group(1)))
    return marked


@pytest.mark.timeout(300)
def test_mypy_reports_each_wrong_chain_on_its_line() -> None:
    pytest.importorskip("mypy")
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}  # this checkout's async_flow
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            str(FAILING.relative_to(ROOT)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    found = set()
    for line in done.stdout.splitlines():
        match = ERROR.match(line)
        assert match is not None, f"unexpected mypy output: {line}"
        assert Path(match["path"]).name == FAILING.name, line
        name = re.search(r'Cannot infer value of type parameter "_T\d" of "(\w+)"', line)
        assert name is not None, f"not a chain error: {line}"
        found.add((int(match["line"]), name.group(1)))
    expected = _expected()
    assert len(expected) >= 7
    assert found == expected


def test_the_failing_file_is_kept_out_of_the_normal_mypy_run() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "tests/type_tests" in config["files"]
    path = FAILING.relative_to(ROOT).as_posix()
    assert re.search(config["exclude"][0], path)
    assert not re.search(config["exclude"][0], "tests/type_tests/check_layer_types.py")


def test_the_generated_overloads_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_overloads.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
