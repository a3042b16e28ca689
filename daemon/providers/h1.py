"""A lean HTTP/1.1 GET client: h11 over asyncio streams, keep-alive per origin.

Why not httpx here: for thousands of small files the per-request CPU of httpx +
httpcore + anyio (about 0.6 ms a request, measured with bench/run.py) cost more
than the transfers themselves, and prefetchd runs the whole pipeline on one event
loop. h11 does the protocol (message framing, chunked bodies, keep-alive rules)
for about a seventh of that (0.18 s against 1.2 s for 2,000 requests); this module only manages connections, timeouts and
redirects. Requests through a proxy from the environment go through httpx
instead (see HttpProvider).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

import h11

READ_SIZE = 1 << 20  # per socket read; large reads keep per-read overhead off big files
STREAM_LIMIT = 1 << 20  # asyncio buffers up to twice this before it pauses the socket
MAX_REDIRECTS = 10
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_HEADER_BYTES = 64 << 10
DRAIN_LIMIT = 64 << 10  # a redirect's body read to keep its connection, at most

#: what a broken, refused, reset, timed-out or garbled connection raises here
TRANSPORT_ERRORS = (OSError, TimeoutError, EOFError, h11.RemoteProtocolError)


class TooManyRedirects(Exception):
    pass


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

    __slots__ = ("origin", "proto", "reader", "reused", "writer")

    def __init__(self, origin: Origin, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.proto = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reused = False

    def alive(self) -> bool:
        """Whether an idle connection can carry another request (the server may have
        closed it meanwhile: asyncio has already seen that EOF)."""
        return (self.proto.our_state is h11.IDLE and not self.reader.at_eof()
                and not self.writer.is_closing())

    def abort(self) -> None:
        self.writer.transport.abort()


class Response:
    """Status, headers (lower-case names) and final URL of a GET; iterate for the body."""

    def __init__(self, client: H1Client, conn: _Conn, event: h11.Response, url: str) -> None:
        self._client = client
        self._conn = conn
        self.status = event.status_code
        self.url = url
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        self.complete = False
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

    async def __anext__(self) -> bytes:
        if self.complete:
            raise StopAsyncIteration
        if self._left is not None:
            return await self._next_counted()
        event = await self._client._next_event(self._conn)
        if type(event) is h11.Data:
            return event.data  # type: ignore[no-any-return]
        if type(event) is h11.EndOfMessage:
            self.complete = True
            raise StopAsyncIteration
        raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    async def _next_counted(self) -> bytes:
        assert self._left is not None
        if self._left == 0:
            self.complete = True
            raise StopAsyncIteration
        if self._early:
            data, self._early = self._early, b""
            if len(data) > self._left:  # bytes past the body: never reuse this connection
                data, self.keep_alive = data[:self._left], False
        else:
            async with asyncio.timeout(self._client.read_timeout):
                data = await self._conn.reader.read(min(READ_SIZE, self._left))
            if not data:
                raise h11.RemoteProtocolError(
                    "peer closed connection without sending complete message body")
        self._left -= len(data)
        return data

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


class H1Client:
    """GET with keep-alive connections per origin, redirects, and timeouts.

    `connect_timeout` bounds connecting (with TLS); `read_timeout` bounds each wait
    for bytes, so a stalled server fails fast while a slow one streams on.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 ssl_context: ssl.SSLContext, max_idle: int, user_agent: str) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ssl_context = ssl_context
        self.max_idle = max_idle
        self.user_agent = user_agent
        self._idle: dict[Origin, list[_Conn]] = {}

    @asynccontextmanager
    async def stream(self, url: str, headers: dict[str, str],
                     credentials: dict[str, str]) -> AsyncIterator[Response]:
        """GET `url`, following redirects. `credentials` (headers such as Authorization)
        go to the first origin only, never to another host a redirect names."""
        first = Origin.of(url)
        for _ in range(MAX_REDIRECTS + 1):
            origin = Origin.of(url)
            sent = {**headers, **(credentials if origin == first else {})}
            resp = await self._send(origin, url, sent)
            location = resp.headers.get("location")
            if resp.status not in REDIRECT_STATUS or not location:
                break
            await self._finish(resp, drain=True)
            url = urljoin(url, location.strip())
        else:  # every response was a redirect, each already finished above
            raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
        try:
            yield resp
        finally:
            await self._finish(resp, drain=False)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.writer.close()
        self._idle.clear()

    # -- one request ----------------------------------------------------------------

    async def _send(self, origin: Origin, url: str, headers: dict[str, str]) -> Response:
        """Send on an idle connection, or a new one; a reused connection that the
        server closed before answering is retried once on a fresh one (GET is safe)."""
        conn = self._checkout(origin)
        request = self._request(origin, url, headers)
        while True:
            if conn is None:
                conn = await self._connect(origin)
            try:
                conn.writer.write(conn.proto.send(request))
                conn.writer.write(conn.proto.send(h11.EndOfMessage()))
                event = await self._next_event(conn)
                while type(event) is h11.InformationalResponse:
                    event = await self._next_event(conn)
                if type(event) is not h11.Response:
                    raise h11.RemoteProtocolError("the server closed without answering")
                return Response(self, conn, event, url)
            except TRANSPORT_ERRORS:
                conn.abort()
                if not conn.reused:
                    raise
                conn = None
            except BaseException:
                conn.abort()
                raise

    def _request(self, origin: Origin, url: str, headers: dict[str, str]) -> h11.Request:
        parts = urlsplit(url)
        # Keep escapes the URL already has; escape what a request line cannot carry.
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        fields = [("Host", origin.host_header()), ("User-Agent", self.user_agent),
                  ("Accept", "*/*")]
        if parts.username is not None and "authorization" not in {k.lower() for k in headers}:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            fields.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode()))
        fields.extend(headers.items())
        return h11.Request(method="GET", target=target, headers=fields)

    async def _next_event(self, conn: _Conn) -> h11.Event:
        proto = conn.proto
        while True:
            event = proto.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(self.read_timeout):
                data = await conn.reader.read(READ_SIZE)
            proto.receive_data(data)  # b"" is the end of the stream

    async def _finish(self, resp: Response, *, drain: bool) -> None:
        """Give the connection back when its exchange ended cleanly, else close it."""
        conn = resp._conn
        if conn.proto.our_state is h11.CLOSED or conn.writer.is_closing():
            return
        if not resp.complete and drain:
            try:
                await resp.drain(DRAIN_LIMIT)
            except TRANSPORT_ERRORS:
                conn.abort()  # a broken redirect body only costs this connection
                return
        if not resp.reusable():
            conn.abort()
        elif resp._left is not None:
            # h11 never saw that body: a fresh state machine for the next exchange.
            conn.proto = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
            self._checkin(conn)
        else:
            conn.proto.start_next_cycle()
            self._checkin(conn)

    # -- connections ----------------------------------------------------------------

    def _checkout(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.alive():
                conn.reused = True
                return conn
            conn.abort()
        return None

    def _checkin(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.writer.close()

    async def _connect(self, origin: Origin) -> _Conn:
        tls = self.ssl_context if origin.scheme == "https" else None
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                origin.host, origin.port, ssl=tls, limit=STREAM_LIMIT,
                server_hostname=origin.host if tls else None,
            )
        return _Conn(origin, reader, writer)
