"""The frames a ``"process"`` worker and its parent exchange over their socket pair.

A frame is a 9-byte header (payload length, then one opcode byte) and a payload, usually a pickle.
Batches and their results travel whole, one frame each, so a batch costs one write and one read on
either side. Exceptions travel as :data:`RemoteError` tuples: the pickled exception if it pickles,
plus its type, message and formatted traceback, so that the parent can always raise something
that names what went wrong.
"""

from __future__ import annotations

import io
import socket
import struct
import traceback
import types
from typing import Any

from .._tracebacks import hide_library_frames

__all__ = (
    "BAD_BATCH",
    "BATCH",
    "CLOSE",
    "CLOSED",
    "HEADER",
    "INIT",
    "INIT_FAILED",
    "READY",
    "RESULT",
    "FrameSocket",
    "RemoteError",
    "dump_error",
    "dumps_with_filenames",
)

HEADER = struct.Struct("<QB")

# parent -> worker
INIT = 1  # (sys.path, pickled layer)
BATCH = 2  # pickled list of items
CLOSE = 3  # close the instance and exit
# worker -> parent
READY = 11  # the callable is built
INIT_FAILED = 12  # RemoteError: building the callable raised
RESULT = 13  # (outputs, done, RemoteError | None)
BAD_BATCH = 14  # the batch could not be unpickled: the reason, as text
CLOSED = 15  # RemoteError | None from closing the instance

#: (pickled exception or None, qualified type name, message, formatted traceback)
RemoteError = tuple[bytes | None, str, str, str]


def dump_error(exc: BaseException) -> RemoteError:
    """Package an exception raised in a worker for the trip to the parent."""
    import cloudpickle

    # The user's frames, not the worker loop's (unless ASYNC_FLOW_FULL_TRACEBACK is set).
    text = "".join(traceback.format_exception(hide_library_frames(exc)))
    try:
        blob: bytes | None = cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - the parent gets the type, message and traceback instead
        blob = None
    kind = type(exc)
    return (blob, f"{kind.__module__}.{kind.__qualname__}", str(exc), text)


#: What cloudpickle writes as the file name of the code it ships by value.
_DYNAMIC = "<dynamic-code>"


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    """Unpickling side of :func:`dumps_with_filenames`: the code object under its real file."""
    return code.replace(co_filename=filename)


def dumps_with_filenames(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, keeping the file names of the functions shipped by value.

    cloudpickle replaces a function's file name with ``"<dynamic-code>"`` (for a deterministic
    payload), so a traceback from a worker would point nowhere. The worker runs on this machine,
    where the file is, so each code object travels with its real name and gets it back on
    arrival: the worker's tracebacks show the user's file, line and source text.
    """
    import cloudpickle

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, value: Any) -> Any:
            if isinstance(value, types.CodeType) and value.co_filename != _DYNAMIC:
                # The stand-in comes back here with the marker and takes cloudpickle's path.
                return _with_filename, (value.replace(co_filename=_DYNAMIC), value.co_filename)
            return super().reducer_override(value)

    buffer = io.BytesIO()
    Pickler(buffer).dump(obj)
    return buffer.getvalue()


class FrameSocket:
    """Blocking frame reads and writes on the worker's end of the socket."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock

    def _exactly(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if k == 0:
                raise EOFError("the parent closed the connection")
            got += k
        return buf

    def receive(self) -> tuple[int, Any]:
        """The next frame's opcode and payload; ``EOFError`` when the parent has gone."""
        size, op = HEADER.unpack(self._exactly(HEADER.size))
        return op, self._exactly(size) if size else b""

    def send(self, op: int, payload: bytes) -> None:
        """Write one frame."""
        self._sock.sendall(HEADER.pack(len(payload), op) + payload)
