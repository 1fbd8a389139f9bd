"""The frames a ``"process"`` worker and its parent exchange over their socket pair.

A frame is a 9-byte header (payload length, then one opcode byte) and a payload, usually a pickle.
Batches and their results travel whole, one frame each, so a batch costs one write and one read on
either side. Exceptions travel as :data:`RemoteError` tuples: the pickled exception if it pickles,
plus its type, message and formatted traceback, so that the parent can always raise something
that names what went wrong.
"""

from __future__ import annotations

import socket
import struct
import traceback
from typing import Any

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

    text = "".join(traceback.format_exception(exc))
    try:
        blob: bytes | None = cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - the parent gets the type, message and traceback instead
        blob = None
    kind = type(exc)
    return (blob, f"{kind.__module__}.{kind.__qualname__}", str(exc), text)


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
