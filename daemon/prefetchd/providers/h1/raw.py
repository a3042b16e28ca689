"""A Content-Length body read by a blocking thread straight from the socket."""

from __future__ import annotations

import socket
import struct

import h11

from ..base import ReadStopped
from .wire import LINGER

#: a blocking receive returns once this much has arrived (or LINGER passes): one system
#: call per quarter MiB rather than per 64 KiB segment
LOW_WATER = 256 << 10
_NO_TIMEOUT = struct.pack("ll", 0, 0)
_SLICE = struct.pack("ll", 0, int(LINGER * 1_000_000))


class RawBody:
    """The rest of a Content-Length body on a plain TCP connection, for one thread.

    Made on the event loop: the transport stops reading (asyncio no longer watches the
    socket), and the bytes that came with the head or wait in the wire's spare buffer
    are read first. The thread then receives on a duplicate of the socket, blocking,
    with SO_RCVTIMEO of LINGER (so it notices `stop` and counts a stall) and
    SO_RCVLOWAT (fewer, larger receives). `close`, on the event loop once the thread
    is done, makes the socket non-blocking again for asyncio.
    """

    def __init__(self, fd: int, early: bytes, left: int, read_timeout: float) -> None:
        self.left = left
        self._early = memoryview(early)
        self._timeout = read_timeout
        self._stopped = False
        self._sock = socket.socket(fileno=socket.dup(fd))
        self._sock.setblocking(True)  # the file description is asyncio's too: see close
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _SLICE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOW_WATER)

    def readinto(self, buf: memoryview) -> int:
        """Receive up to len(buf) bytes of the body (at least one; 0 when none are left).
        TimeoutError after the read timeout without a byte; RemoteProtocolError when the
        server closes within the body; ReadStopped after `stop`."""
        if self._early:
            n = min(len(buf), len(self._early))
            buf[:n] = self._early[:n]
            self._early = self._early[n:]
            self.left -= n
            return n
        if self.left <= 0:
            return 0
        view = buf[:min(len(buf), self.left)]  # never a byte past the body
        idle = 0.0
        while True:
            if self._stopped:
                raise ReadStopped
            try:
                n = self._sock.recv_into(view)
            except BlockingIOError:  # SO_RCVTIMEO passed without a byte
                idle += LINGER
                if idle >= self._timeout:
                    raise TimeoutError(
                        "no bytes from the server within the stall timeout") from None
                continue
            if not n:
                raise h11.RemoteProtocolError(
                    "peer closed connection without sending complete message body")
            self.left -= n
            return n

    def stop(self) -> None:
        self._stopped = True  # seen within LINGER by a blocked readinto

    def close(self) -> bool:
        """Give the socket back to asyncio as it was (non-blocking, default timeouts);
        False when that failed (the connection must not be used again)."""
        if self._sock.fileno() < 0:
            return False
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            self._sock.setblocking(False)
            return True
        except OSError:
            return False
        finally:
            self._sock.close()
