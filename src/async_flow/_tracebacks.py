"""Tracebacks that start with the user's code: the library's own frames are left out.

An error from a layer travels through the run's task groups, the layer's workers and the event
loop before it reaches the caller; printed in full, a dozen frames of async_flow and asyncio stand
between the caller's ``af.run(...)`` line and the user's function that raised. At the public entry
points (:func:`~async_flow.run`, :func:`~async_flow.pipeline`, a stream's iteration) those frames
are cut from the exception's traceback (and from the tracebacks of its ``__cause__`` and
``__context__``), so the user's frames and the note naming the layer and the item come first.
``ASYNC_FLOW_FULL_TRACEBACK=1`` in the environment keeps every frame, for debugging the library.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

__all__ = (
    "ENV_FULL",
    "full_tracebacks",
    "hide_library_frames",
    "shown_error",
    "trim",
    "user_facing",
)

#: The environment variable that keeps the library's frames in tracebacks.
ENV_FULL = "ASYNC_FLOW_FULL_TRACEBACK"

# Frames from these files are the library's (async_flow itself) or its plumbing (the event loop,
# thread pools, context managers) that a user's error passed through on its way out.
_OWN = str(Path(__file__).resolve().parent) + os.sep
_PLUMBING = tuple(
    str(Path(module.__file__).resolve().parent if module.__file__ else "") + os.sep
    for module in (asyncio, concurrent.futures)
) + tuple(
    str(Path(module.__file__).resolve()) for module in (contextlib, threading) if module.__file__
)

F = TypeVar("F", bound=Callable[..., Any])


def full_tracebacks() -> bool:
    """True when ``ASYNC_FLOW_FULL_TRACEBACK`` asks for every frame (any value but ``""``/``0``)."""
    return os.environ.get(ENV_FULL, "") not in ("", "0")


def _is_own(filename: str) -> bool:
    return filename.startswith(_OWN)


def _is_plumbing(filename: str) -> bool:
    return filename.startswith(_PLUMBING)


def trim(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without the library's frames.

    async_flow's own frames go wherever they are; the event loop's and the thread pools' frames
    go until the first frame of the user's code (below it they are part of what the user's code
    called, and stay).
    """
    kept: list[TracebackType] = []
    reached_user = False
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not _is_own(filename) and (reached_user or not _is_plumbing(filename)):
            kept.append(tb)
            reached_user = True
        tb = tb.tb_next
    for upper, lower in itertools.pairwise(kept):
        upper.tb_next = lower
    if kept:
        kept[-1].tb_next = None
        return kept[0]
    return None


def hide_library_frames(error: BaseException) -> BaseException:
    """Cut the library's frames from ``error``'s traceback and its chain's (in place).

    Returns ``error``. Does nothing with ``ASYNC_FLOW_FULL_TRACEBACK`` set.
    """
    if full_tracebacks():
        return error
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = trim(exc.__traceback__)
        stack.extend((exc.__cause__, exc.__context__))
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
    return error


def shown_error(error: BaseException) -> bool:
    """False for what is control flow, not a failure to read: iteration's end, cancellation."""
    return not isinstance(error, (StopIteration, StopAsyncIteration, asyncio.CancelledError))


def user_facing(fn: F) -> F:
    """Decorate a public entry point: an error leaving it has the library's frames cut.

    The wrapper's own frame is cut too (a bare ``raise`` adds none back), so the frame above the
    user's first one is the caller's.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except BaseException as error:
                if shown_error(error):
                    hide_library_frames(error)
                raise

        return cast(F, awrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as error:
            if shown_error(error):
                hide_library_frames(error)
            raise

    return cast(F, wrapper)
