"""Write the typed overloads of ``run``, ``pipeline`` and ``open_stream`` into ``_pipeline.py``.

Each function gets one overload per chain length, 0 to :data:`MAX_LAYERS` layers, in which layer
``k`` takes what layer ``k - 1`` gives (``Layer[T(k-1), Tk]``, the source giving ``T0``): a type
checker then reports the layer whose input does not match the previous output. Longer chains
fall back to ``Layer[Any, Any]``. The overloads live between the markers of each block in
``src/async_flow/_pipeline.py``; run this script after changing a signature there, and
``tests/test_typed_chain.py`` checks that the file is up to date.

Usage: ``python scripts/gen_overloads.py`` (rewrite) or ``--check`` (exit 1 if out of date).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: Chains longer than this are typed ``Layer[Any, Any]``.
MAX_LAYERS = 8

TARGET = Path(__file__).resolve().parent.parent / "src" / "async_flow" / "_pipeline.py"

SOURCE = "Iterable[{t}] | AsyncIterable[{t}] | Merge[{t}]"

#: name -> (prefix, keyword-only parameters, return type of an n-layer chain)
FUNCTIONS = {
    "pipeline": (
        "async def",
        [
            "progress: ProgressOption = None",
            "total: int | None = None",
            "checkpoint: Checkpoint | None = None",
            "drain_timeout: float = DEFAULT_DRAIN_TIMEOUT",
            "handle_signals: bool = True",
        ],
        "Report",
    ),
    "run": (
        "def",
        [
            "progress: ProgressOption = None",
            "total: int | None = None",
            "checkpoint: Checkpoint | None = None",
            "drain_timeout: float = DEFAULT_DRAIN_TIMEOUT",
            "handle_signals: bool = True",
            "loop_factory: LoopFactory | None = None",
        ],
        "Report",
    ),
    "open_stream": (
        "def",
        [
            "maxsize: int | None = None",
            "progress: ProgressOption = None",
            "total: int | None = None",
            "loop_factory: LoopFactory | None = None",
        ],
        "Stream[{last}]",
    ),
}


def begin(name: str) -> str:
    return f"# --- BEGIN GENERATED {name} (scripts/gen_overloads.py; do not edit) ---"


def end(name: str) -> str:
    return f"# --- END GENERATED {name} ---"


def _overload(name: str, params: list[str], returns: str, prefix: str, keywords: list[str]) -> str:
    lines = ["@overload", f"{prefix} {name}("]
    lines += [f"    {p}," for p in params]
    lines += [f"    {k}," for k in keywords]
    lines.append(f") -> {returns}: ...")
    return "\n".join(lines)


def block(name: str) -> str:
    prefix, keywords, returns = FUNCTIONS[name]
    parts = [begin(name)]
    for n in range(MAX_LAYERS + 1):
        params = [f"source: {SOURCE.format(t='_T0')}"]
        params += [f"l{k}: Layer[_T{k - 1}, _T{k}]" for k in range(1, n + 1)]
        params += ["/", "*"]
        parts.append(_overload(name, params, returns.format(last=f"_T{n}"), prefix, keywords))
    # Longer chains: one explicit layer more than the typed ones, then any number.
    params = ["source: Source"]
    params += [f"l{k}: _L" for k in range(1, MAX_LAYERS + 2)]
    params += ["/", "*rest: _L"]
    parts.append(_overload(name, params, returns.format(last="Any"), prefix, keywords))
    parts.append(end(name))
    return "\n\n\n".join(parts)


def typevars() -> str:
    names = [f"_T{k}" for k in range(MAX_LAYERS + 1)]
    lines = [begin("chain"), "# The item types along a chain: the source gives _T0, layer k _Tk."]
    lines += [f'{t} = TypeVar("{t}")' for t in names]
    lines.append(end("chain"))
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` (the module) with every generated block rewritten."""
    blocks = {"chain": typevars(), **{name: block(name) for name in FUNCTIONS}}
    for name, fresh in blocks.items():
        pattern = re.compile(re.escape(begin(name)) + r".*?" + re.escape(end(name)), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{TARGET}: no generated block for {name!r}")
        text = pattern.sub(lambda _, fresh=fresh: fresh, text)
    return text


def main(argv: list[str]) -> int:
    text = TARGET.read_text()
    fresh = render(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{TARGET} is out of date: run python scripts/gen_overloads.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
