"""One connection, and one request/response exchange over it.

An `Exchange` sends a GET on a `Conn`, reads the response's head and then its body,
and at the end gives the connection back (to whoever lent it) when the exchange ended
cleanly at a message boundary, else closes it. A `Response` (response.py) reads its
body through its exchange alone, as httpx's Response holds only a stream; the client
(client.py) keeps the pool of idle connections and never reaches inside either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h11

from ..base import READ_SIZE
from .raw import RawBody
from .wire import Wire

MAX_HEADER_BYTES = 64 << 10
DRAIN_LIMIT = 64 << 10  # a redirect's body read to keep its connection, at most

#: what a broken, refused, reset, timed-out or garbled connection raises here
TRANSPORT_ERRORS = (OSError, TimeoutError, EOFError, h11.RemoteProtocolError)


class InvalidURL(ValueError):
    """Not an http(s) URL with a host (also a redirect's Location)."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURL(f"not an http(s) URL with a host: {url[:80]!r}")
        return cls(scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Conn:
    """One socket and the h11 state of the message exchange on it."""

    __slots__ = ("origin", "proto", "reused", "transport", "wire")

    def __init__(self, origin: Origin, transport: asyncio.Transport, wire: Wire) -> None:
        self.origin = origin
        self.transport = transport
        self.wire = wire
        self.proto = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reused = False

    def alive(self) -> bool:
        """Whether an idle connection can carry another request (the server may have
        closed it meanwhile: asyncio has already seen that EOF; bytes it sent
        unasked mean the connection is out of step)."""
        return (self.proto.our_state is h11.IDLE and not self.wire.eof
                and not self.wire.buffered and not self.transport.is_closing())

    def abort(self) -> None:
        self.transport.abort()

    def close(self) -> None:
        self.transport.close()


class Exchange:
    """One GET and its response over `conn`; `give_back(conn)` takes the connection
    when the exchange ends cleanly (the client's idle pool)."""

    def __init__(self, conn: Conn, read_timeout: float,
                 give_back: Callable[[Conn], None]) -> None:
        self.conn = conn
        self.read_timeout = read_timeout
        self._give_back = give_back
        self.complete = False  # the body was read to its end
        self.finished = False  # the connection was given back or closed
        # A Content-Length body is read straight from the socket: h11 copies every
        # byte three times on the way, which costs more than the rest on a 1 GiB file.
        # h11 still parses the headers and frames chunked or close-delimited bodies.
        self._left: int | None = None
        self._early = b""
        self._keep_alive = False
        self._raw: RawBody | None = None  # the body handed to a thread (hand_off)

    async def send(self, request: h11.Request) -> h11.Response:
        """Send the request; return the response's head (after any 1xx)."""
        conn = self.conn
        conn.transport.write(conn.proto.send(request))
        conn.transport.write(conn.proto.send(h11.EndOfMessage()))
        event = await self._next_event()
        while type(event) is h11.InformationalResponse:
            event = await self._next_event()
        if type(event) is not h11.Response:
            raise h11.RemoteProtocolError("the server closed without answering")
        self._frame(event)
        return event

    def _frame(self, head: h11.Response) -> None:
        """Read a Content-Length body ourselves (see __init__)."""
        length = _field(head, b"content-length")
        if (length.isdigit() and not _field(head, b"transfer-encoding")
                and head.status_code >= 200 and head.status_code not in (204, 304)):
            self._left = int(length)
            self._early = self.conn.proto.trailing_data[0]  # read with the headers
            self._keep_alive = (head.http_version == b"1.1"
                                and "close" not in _field(head, b"connection").lower())

    def can_hand_off(self) -> bool:
        """Whether the body can go to a thread (hand_off): a Content-Length body on a
        plain TCP connection that is still open, not begun, with the whole request sent
        (the thread makes the socket blocking: asyncio must have nothing to write)."""
        conn = self.conn
        return (self._left is not None and self._raw is None and not self.complete
                and not self.finished and not conn.wire.eof and not conn.transport.is_closing()
                and conn.transport.get_write_buffer_size() == 0
                and conn.transport.get_extra_info("sslcontext") is None
                and conn.transport.get_extra_info("socket") is not None)

    def hand_off(self) -> RawBody:
        """The rest of the body for one blocking thread (see RawBody); `receive` is not
        called after. The thread must be done before `finish`."""
        assert self.can_hand_off() and self._left is not None
        early = self._early + self.conn.wire.hand_off()
        self._early = b""
        if len(early) > self._left:  # bytes past the body: never reuse this connection
            early, self._keep_alive = early[:self._left], False
        sock = self.conn.transport.get_extra_info("socket")
        self._raw = RawBody(sock.fileno(), early, self._left, self.read_timeout)
        return self._raw

    async def receive(self) -> bytes | bytearray | None:
        """The next piece of the body; None at its end."""
        if self.complete:
            return None
        if self._left is not None:
            return await self._next_counted()
        event = await self._next_event()
        if type(event) is h11.Data:
            return event.data
        if type(event) is h11.EndOfMessage:
            self.complete = True
            return None
        if type(event) is h11.ConnectionClosed:
            raise h11.RemoteProtocolError("the server closed the connection within the body")
        raise h11.RemoteProtocolError("the server sent something other than the body")

    async def _next_counted(self) -> bytes | bytearray | None:
        assert self._left is not None
        if self._left == 0:
            self.complete = True
            return None
        data: bytes | bytearray
        if self._early:
            data, self._early = self._early, b""
            if len(data) > self._left:  # bytes past the body: never reuse this connection
                data, self._keep_alive = data[:self._left], False
        else:
            buf = bytearray(min(READ_SIZE, self._left))
            with memoryview(buf) as view:
                n = await self.conn.wire.fill(view, self.read_timeout)
            if not n:
                raise h11.RemoteProtocolError(
                    "peer closed connection without sending complete message body")
            data = buf if n == len(buf) else buf[:n]
        self._left -= len(data)
        return data

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next event, reading from the socket while h11 needs more bytes."""
        conn, proto = self.conn, self.conn.proto
        while True:
            hung_up = (proto.their_state is h11.SEND_RESPONSE
                       and proto.trailing_data == (b"", True))
            try:
                event = proto.next_event()
            except h11.RemoteProtocolError as e:
                if hung_up:  # h11's words: "can't handle event type ConnectionClosed..."
                    raise h11.RemoteProtocolError(
                        "the server closed the connection without answering") from e
                raise
            if event is not h11.NEED_DATA:
                return cast(h11.Event | type[h11.PAUSED], event)  # `is not` does not narrow
            data = await conn.wire.read_some(self.read_timeout)
            proto.receive_data(data)  # b"" is the end of the stream

    async def finish(self, *, drain: bool) -> None:
        """Give the connection back when the exchange ended cleanly, else close it;
        with `drain`, first read the rest of a short body (a redirect's) to keep it."""
        if self.finished:
            return
        self.finished = True
        conn = self.conn
        if self._raw is not None:
            self._left = self._raw.left
            if not self._raw.close():
                self._keep_alive = False
            self.complete = self._left == 0
            conn.wire.take_back()
        if conn.proto.our_state is h11.CLOSED or conn.transport.is_closing():
            return
        if not self.complete and drain and self._raw is None:
            try:
                await self._drain(DRAIN_LIMIT)
            except TRANSPORT_ERRORS:
                conn.abort()  # a broken redirect body only costs this connection
                return
        if not self._reusable():
            conn.abort()
        elif self._left is not None:
            # h11 never saw that body: a fresh state machine for the next exchange.
            conn.proto = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
            self._give_back(conn)
        else:
            conn.proto.start_next_cycle()
            self._give_back(conn)

    def _reusable(self) -> bool:
        """Whether the exchange ended cleanly with the connection at a message boundary."""
        proto = self.conn.proto
        if self._left is not None:
            return self._left == 0 and self._keep_alive and proto.our_state is h11.DONE
        return (self.complete and proto.our_state is h11.DONE
                and proto.their_state is h11.DONE)

    async def _drain(self, limit: int) -> None:
        got = 0
        while (chunk := await self.receive()) is not None:
            got += len(chunk)
            if got > limit:
                return


def _field(head: h11.Response, name: bytes) -> str:
    """A header's value (h11 gives names in lower case); repeated ones joined by ", "."""
    return ", ".join(v.decode("latin-1") for k, v in head.headers if k == name)
