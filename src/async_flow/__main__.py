"""The command line: ``python -m async_flow demo`` (also the ``async-flow`` console script).

Example::

    $ python -m async_flow demo --limit 200 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return the exit status."""
    parser = argparse.ArgumentParser(prog="async-flow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser(
        "demo", help="index the Python standard library into SQLite", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from ._demo import demo
        from ._errors import Interrupted

        _log_progress_to_stderr()
        try:
            demo(rest)
        except Interrupted as stop:  # Ctrl-C: drained (or aborted); exit as shells expect
            print(stop.report, file=sys.stderr)
            return stop.exit_code
    return 0


def _log_progress_to_stderr() -> None:
    """Off a terminal, progress comes as log lines: make sure they are shown."""
    if sys.stderr is not None and not sys.stderr.isatty():
        logger = logging.getLogger("async_flow.progress")
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
