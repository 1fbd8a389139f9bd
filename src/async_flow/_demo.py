"""The demo: index the Python standard library's source into SQLite (``python -m async_flow demo``).

A realistic job on data every machine has: the source lists the ``.py`` files of the running
interpreter's standard library; ``read`` loads them (threads: it waits on the disk); ``analyse``
parses each with :mod:`ast`, counts functions, classes and lines, scores each function's
complexity and hashes the file (worker processes: it is CPU-bound); ``batch`` groups the results;
and the collector commits each group to SQLite in one transaction.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import sqlite3
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ._helpers import batch
from ._layer import Layer
from ._pipeline import run
from ._report import Report

__all__ = (
    "FileInfo",
    "SQLiteWriter",
    "analyse",
    "complexity",
    "demo",
    "read",
    "stdlib_files",
)


#: Directories never indexed: installed third-party packages.
_THIRD_PARTY = frozenset({"site-packages", "dist-packages"})
#: The standard library's own test suites: more than half its files; indexed with ``--tests``.
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


def stdlib_files(limit: int | None = None, *, tests: bool = False) -> list[str]:
    """The ``.py`` files of the running interpreter's standard library, sorted (installed
    third-party packages excluded; the standard library's test suites too unless ``tests``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = _THIRD_PARTY if tests else _THIRD_PARTY | _TEST_DIRS
    files: list[str] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skip)
        files.extend(os.path.join(directory, n) for n in sorted(names) if n.endswith(".py"))
        if limit is not None and len(files) >= limit:
            break
    return files[:limit] if limit is not None else files


def read(path: str) -> tuple[str, bytes]:
    """Load one file (the ``read`` layer)."""
    with open(path, "rb") as f:
        return path, f.read()


_BRANCHES = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.IfExp,
    ast.ExceptHandler,
    ast.Assert,
    ast.match_case,
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def complexity(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A cyclomatic complexity score: 1 plus one per decision point in the function's own body
    (branches, loops, handlers, boolean operators, comprehension clauses; nested functions and
    classes are scored on their own)."""
    score = 1
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPES):
            continue
        if isinstance(node, _BRANCHES):
            score += 1
        elif isinstance(node, ast.BoolOp):
            score += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            score += 1 + len(node.ifs)
        stack.extend(ast.iter_child_nodes(node))
    return score


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``analyse`` learnt about one file."""

    path: str
    lines: int
    classes: int
    sha256: str
    error: str | None = None
    #: (qualified name, line, complexity) of every function and method.
    functions: tuple[tuple[str, int, int], ...] = field(default_factory=tuple)


def _functions(tree: ast.Module) -> tuple[list[tuple[str, int, int]], int]:
    found: list[tuple[str, int, int]] = []
    classes = 0
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found.append((name, child.lineno, complexity(child)))
                stack.append((child, name + "."))
            elif isinstance(child, ast.ClassDef):
                classes += 1
                stack.append((child, prefix + child.name + "."))
            else:
                stack.append((child, prefix))
    return found, classes


def analyse(item: tuple[str, bytes]) -> FileInfo:
    """Parse one file and measure it (the ``analyse`` layer). A file that does not parse (the
    standard library's tests hold a few on purpose) is recorded with its error."""
    path, data = item
    digest = hashlib.sha256(data).hexdigest()
    lines = data.count(b"\n") + (not data.endswith(b"\n") and bool(data))
    try:
        tree = ast.parse(data, filename=path)
    except (SyntaxError, ValueError) as exc:
        return FileInfo(path, lines, 0, digest, error=f"{type(exc).__name__}: {exc}")
    functions, classes = _functions(tree)
    return FileInfo(path, lines, classes, digest, functions=tuple(functions))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, lines INTEGER, functions INTEGER, classes INTEGER,
    sha256 TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS functions (
    path TEXT, name TEXT, line INTEGER, complexity INTEGER
);
"""


class SQLiteWriter:
    """The collector: commits each batch of :class:`FileInfo` to SQLite in one transaction.

    Built once in its worker (the connection belongs to that thread) and closed at the end.
    """

    def __init__(self, db: str) -> None:
        self.connection = sqlite3.connect(db)
        self.connection.executescript(_SCHEMA)

    def __call__(self, infos: list[FileInfo]) -> int:
        with self.connection:  # one transaction per batch
            self.connection.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [(i.path, i.lines, len(i.functions), i.classes, i.sha256, i.error) for i in infos],
            )
            self.connection.executemany(
                "DELETE FROM functions WHERE path = ?", [(i.path,) for i in infos]
            )
            self.connection.executemany(
                "INSERT INTO functions VALUES (?, ?, ?, ?)",
                [(i.path, *f) for i in infos for f in i.functions],
            )
        return len(infos)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def _available(backend: str) -> bool:
    from .backends import get_backend

    try:
        get_backend(backend)
    except ModuleNotFoundError:
        return False
    return True


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m async_flow demo",
        description="Index the Python standard library's source into SQLite.",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="analyse workers")
    parser.add_argument("--db", default="async_flow_demo.db", help="SQLite database to write")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N files")
    parser.add_argument(
        "--plot", default="async_flow_demo.png", help="PNG picture of the run ('' for none)"
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=("async", "thread", "process", "ray"),
        help="backend of the analyse layer (default: process where available, else thread)",
    )
    parser.add_argument("--ray", action="store_true", help="run the analyse layer on Ray")
    parser.add_argument(
        "--tests", action="store_true", help="index the standard library's test suites too"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="live progress (a table on a terminal, log lines otherwise)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    return args


def demo(argv: Sequence[str] | None = None, out: TextIO | None = None) -> Report:
    """Run the demo with command-line arguments ``argv``; print to ``out`` (default stdout)."""
    args = _arguments(argv)
    out = out if out is not None else sys.stdout
    backend = "ray" if args.ray else args.backend
    if backend is None:
        backend = "process" if _available("process") else "thread"
    if not _available(backend):
        extra = " (pip install 'async_flow[ray]')" if backend == "ray" else ""
        raise SystemExit(f"the {backend!r} backend is not available here{extra}")
    files = stdlib_files(args.limit, tests=args.tests)
    root = sysconfig.get_paths()["stdlib"]
    db = args.db
    if os.path.exists(db):
        os.remove(db)
    print(
        f"indexing {len(files)} files under {root} into {db} ({backend} x{args.workers})", file=out
    )
    report = run(
        files,
        Layer(read, 4, name="read"),
        Layer(analyse, args.workers, backend=backend, name="analyse"),
        batch(200, timeout=0.5),
        Layer(SQLiteWriter, 1, args=(db,), name="commit"),
        progress=args.progress,
    )
    print(report, file=out)
    _answer(db, root, out)
    if args.plot:
        try:
            report.plot(args.plot)
        except ModuleNotFoundError as exc:
            print(f"no picture: {exc}", file=out)
        else:
            print(f"picture of the run: {args.plot}", file=out)
    return report


def _answer(db: str, root: str, out: TextIO) -> None:
    connection = sqlite3.connect(db)
    try:
        files, lines, errors = connection.execute(
            "SELECT COUNT(*), SUM(lines), COUNT(error) FROM files"
        ).fetchone()
        (functions,) = connection.execute("SELECT COUNT(*) FROM functions").fetchone()
        top = connection.execute(
            "SELECT name, path, line, complexity FROM functions"
            " ORDER BY complexity DESC, path, line LIMIT 10"
        ).fetchall()
    finally:
        connection.close()
    print(
        f"\n{db}: {files} files, {lines or 0:,} lines, {functions:,} functions"
        f" ({errors} file(s) that do not parse)",
        file=out,
    )
    print("the ten most complex functions:", file=out)
    for name, path, line, score in top:
        print(f"  {score:4d}  {name}  ({os.path.relpath(path, root)}:{line})", file=out)
