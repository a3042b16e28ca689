"""One connection's exchange state, and a response whose body is read from it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11

from ..base import READ_SIZE
from .wire import Wire

if TYPE_CHECKING:
    from .client import H1Client

MAX_HEADER_BYTES = 64 << 10


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


class _Conn:
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


class Response:
    """Status, headers (lower-case names) and final URL of a GET; iterate for the body."""

    def __init__(self, client: H1Client, conn: _Conn, event: h11.Response, url: str) -> None:
        self._client = client
        self._conn = conn
        self.status = event.status_code
        self.url = url
        self.header_list: list[tuple[bytes, bytes]] = list(event.headers)
        headers: dict[str, str] = {}
        for name, value in self.header_list:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        self.complete = False
        self.finished = False  # connection given back or closed (see H1Client._finish)
        # A Content-Length body is read straight from the socket: h11 copies every
        # byte three times on the way, which costs more than the rest on a 1 GiB file.
        # h11 still parses the headers and frames chunked or close-delimited bodies.
        self._left: int | None = None
        self._early = b""
        self.keep_alive = False
        length = headers.get("content-length", "")
        if (length.isdigit() and "transfer-encoding" not in headers
                and self.status >= 200 and self.status not in (204, 304)):
            self._left = int(length)
            self._early = conn.proto.trailing_data[0]  # read with the headers
            self.keep_alive = (event.http_version == b"1.1"
                               and "close" not in headers.get("connection", "").lower())

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes | bytearray:
        if self.complete:
            raise StopAsyncIteration
        if self._left is not None:
            return await self._next_counted()
        event = await self._client._next_event(self._conn)
        if type(event) is h11.Data:
            return event.data
        if type(event) is h11.EndOfMessage:
            self.complete = True
            raise StopAsyncIteration
        if type(event) is h11.ConnectionClosed:
            raise h11.RemoteProtocolError("the server closed the connection within the body")
        raise h11.RemoteProtocolError("the server sent something other than the body")

    async def _next_counted(self) -> bytes | bytearray:
        assert self._left is not None
        if self._left == 0:
            self.complete = True
            raise StopAsyncIteration
        data: bytes | bytearray
        if self._early:
            data, self._early = self._early, b""
            if len(data) > self._left:  # bytes past the body: never reuse this connection
                data, self.keep_alive = data[:self._left], False
        else:
            buf = bytearray(min(READ_SIZE, self._left))
            with memoryview(buf) as view:
                n = await self._conn.wire.fill(view, self._client.read_timeout)
            if not n:
                raise h11.RemoteProtocolError(
                    "peer closed connection without sending complete message body")
            data = buf if n == len(buf) else buf[:n]
        self._left -= len(data)
        return data

    async def aclose(self) -> None:
        """Done with this response: its connection goes back to the pool if the body
        was read to the end, else it is closed."""
        await self._client._finish(self, drain=False)

    async def discard(self) -> None:
        """Done with a redirect: read its short body, if any, to keep the connection."""
        await self._client._finish(self, drain=True)

    def reusable(self) -> bool:
        """Whether the exchange ended cleanly with the connection at a message boundary."""
        proto = self._conn.proto
        if self._left is not None:
            return self._left == 0 and self.keep_alive and proto.our_state is h11.DONE
        return (self.complete and proto.our_state is h11.DONE
                and proto.their_state is h11.DONE)

    async def drain(self, limit: int) -> None:
        """Read the rest of a short body (a redirect's) so the connection can be reused."""
        got = 0
        async for chunk in self:
            got += len(chunk)
            if got > limit:
                return
