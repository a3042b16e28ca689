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
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

import h11

READ_SIZE = 1 << 20  # body buffer: one wake-up, one disk write and one hash step each
SPARE_SIZE = 256 << 10  # bytes that arrive while no body buffer is posted, at most
LINGER = 0.1  # a body buffer that stops filling is handed over after this many seconds
MAX_REDIRECTS = 10
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_HEADER_BYTES = 64 << 10
DRAIN_LIMIT = 64 << 10  # a redirect's body read to keep its connection, at most

#: what a broken, refused, reset, timed-out or garbled connection raises here
TRANSPORT_ERRORS = (OSError, TimeoutError, EOFError, h11.RemoteProtocolError)


def proxied(url: str, proxies: dict[str, str]) -> bool:
    """Whether a proxy from the environment (urllib.request.getproxies_environment(),
    NO_PROXY applied) is meant for `url`; h1 talks to origins directly only."""
    if not proxies:
        return False
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


class TooManyRedirects(Exception):
    pass


class ConnectError(ConnectionError):
    """Connecting (TCP, then TLS) to `host`:`port` failed; the cause says why. It names
    the place for messages: a redirect or a proxy may take a request elsewhere."""

    def __init__(self, host: str, port: int, via: str = "") -> None:
        super().__init__(f"cannot connect to {via}{host}:{port}")
        self.host = host
        self.port = port
        self.via = via  # "proxy " when it is the proxy that was asked

    @property
    def peer(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.via}{host}:{self.port}"


class InvalidURL(ValueError):
    """Not an http(s) URL with a host (also a redirect's Location)."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: cloud metadata services outside link-local (AWS IPv6, Alibaba); 169.254.169.254
#: (AWS, GCP, Azure, OpenStack...) is link-local, which is always refused
METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: someone's inside
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The policy forbids connecting to `address` (which `host` named or resolved to)."""

    def __init__(self, host: str, address: IPAddress, why: str, fixable: bool) -> None:
        named = "" if host == str(address) else f" ({host})"
        super().__init__(f"refusing to connect to {address}{named}: {why}")
        self.fixable = fixable  # allow_private_networks would allow it


class AddressPolicy:
    """Where the http provider may connect: never to link-local or cloud metadata
    addresses, to loopback and private ranges only when `allow_private` (a provider's
    allow_private_networks). Agents may be steered by untrusted text to ask for any URL:
    the check is on the address actually connected to, after DNS (a name that resolves
    differently later gains nothing), on every redirect hop."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def check(self, host: str, address: IPAddress) -> None:
        ip = embedded_ipv4(address)
        if ip.is_link_local or ip in METADATA:
            raise AddressRefused(host, ip, "a link-local or cloud metadata address", False)
        if ip.is_multicast:
            raise AddressRefused(host, ip, "a multicast address", False)
        if self.allow_private:
            return
        if ip.is_loopback or ip.is_private or ip.is_unspecified or ip in SHARED:
            raise AddressRefused(host, ip, "a loopback or private address", True)

    def check_literal(self, host: str, *, resolved_elsewhere: bool = False) -> IPAddress | None:
        """Check `host` when it is an IP address in any form a resolver accepts (dotted,
        decimal 2852039166, hex, octal, IPv6); the address, or None for a name. When a
        proxy will resolve the name (`resolved_elsewhere`), `localhost` and `*.localhost`
        count as loopback (RFC 6761); other names are the proxy's to check."""
        address = literal_ip(host)
        if address is not None:
            self.check(host, address)
        elif resolved_elsewhere and (host == "localhost" or host.endswith(".localhost")):
            self.check(host, ipaddress.ip_address("127.0.0.1"))
        return address


def literal_ip(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one; inet_aton reads the old forms (2852039166,
    0xa9fea9fe, 0251.0376.0251.0376) that resolvers and browsers accept too."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one leads to (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d,
    NAT64 64:ff9b::/96), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or address
    if isinstance(address, ipaddress.IPv6Address):
        packed = address.packed
        if packed[:12] == bytes(12) and packed[12:] not in (bytes(4), b"\0\0\0\1"):
            return ipaddress.IPv4Address(packed[12:])
        if address in NAT64:
            return ipaddress.IPv4Address(packed[12:])
    return address


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


class _Wire(asyncio.BufferedProtocol):
    """A socket's incoming bytes, received straight into the reader's buffer.

    asyncio's StreamReader copies every byte twice (into its buffer, then out of it)
    and shifts its buffer on every read: about 1 s of CPU per GiB here, against 0.2 s
    for recv_into the buffer that goes to disk. `fill()` posts such a buffer and wakes
    its reader only when it is full (or the stream ends); bytes that arrive while no
    buffer is posted (headers, or between two fills) land in a small spare buffer, and
    the socket pauses while that is full.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._spare = bytearray(SPARE_SIZE)
        self._have = 0  # bytes waiting in the spare buffer
        self._target: memoryview | None = None  # the reader's buffer being filled
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self.eof = False
        self._error: BaseException | None = None
        self._paused = False

    # -- protocol callbacks (event loop) ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._filled:]
        return memoryview(self._spare)[self._have:]  # never empty: full means paused

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._filled += nbytes
            if self._filled == len(self._target):
                self._target = None
                self._wake()
            return
        self._have += nbytes
        if self._have == len(self._spare) and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- reading (the connection's task) ---------------------------------------------

    @property
    def buffered(self) -> bool:
        return self._have > 0

    async def read_some(self, timeout: float) -> bytes:
        """Whatever has arrived (waiting up to `timeout` for something); b"" at the end."""
        while not self._have and not self.eof:
            if not await self._wait(timeout):
                raise TimeoutError("no bytes from the server within the stall timeout")
        if not self._have and self._error is not None:
            raise self._error
        data = bytes(memoryview(self._spare)[:self._have])
        self._have = 0
        self._resume()
        return data

    async def fill(self, buf: memoryview, timeout: float) -> int:
        """Receive into `buf` until it is full, the stream ends, or LINGER seconds pass
        with it part-filled (a slow stream still hands over what it has, so a cancelled
        download keeps it); returns the count. TimeoutError when `timeout` passes with
        no byte at all."""
        n = min(self._have, len(buf))
        if n:
            buf[:n] = memoryview(self._spare)[:n]
            rest = self._have - n
            self._spare[:rest] = self._spare[n:self._have]  # same size: no reallocation
            self._have = rest
        if n < len(buf) and not self.eof:
            self._target, self._filled = buf, n
            self._resume()
            idle = 0.0
            try:
                while self._target is not None and not self.eof:
                    if await self._wait(LINGER):
                        continue  # woken: full, or the end
                    if self._filled > n:
                        break  # a slow stream: hand over what came
                    idle += LINGER
                    if idle >= timeout:
                        raise TimeoutError("no bytes from the server within the stall timeout")
            finally:
                self._target = None  # later bytes go to the spare buffer, not to `buf`
            n = self._filled
        self._resume()
        if not n and self._error is not None:
            raise self._error
        return n

    async def _wait(self, timeout: float) -> bool:
        """Wait for a wake-up (bytes, the end, or a full buffer); False on timeout."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            done, _ = await asyncio.wait((self._waiter,), timeout=timeout)
        finally:
            self._waiter = None
        return bool(done)

    def _resume(self) -> None:
        if self._paused and self._have < len(self._spare) and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()


class _Conn:
    """One socket and the h11 state of the message exchange on it."""

    __slots__ = ("origin", "proto", "reused", "transport", "wire")

    def __init__(self, origin: Origin, transport: asyncio.Transport, wire: _Wire) -> None:
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
            return event.data  # type: ignore[no-any-return]
        if type(event) is h11.EndOfMessage:
            self.complete = True
            raise StopAsyncIteration
        raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    async def _next_counted(self) -> bytes | bytearray:
        assert self._left is not None
        if self._left == 0:
            self.complete = True
            raise StopAsyncIteration
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


class H1Client:
    """GET with keep-alive connections per origin, redirects, and timeouts.

    `connect_timeout` bounds connecting (with TLS); `read_timeout` bounds each wait
    for bytes, so a stalled server fails fast while a slow one streams on.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 ssl_context: Callable[[], ssl.SSLContext], max_idle: int,
                 user_agent: str, policy: AddressPolicy | None = None) -> None:
        self.policy = policy  # None: connect anywhere (a configured, trusted base URL)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._make_ssl_context = ssl_context
        self._ssl_context: ssl.SSLContext | None = None
        self.max_idle = max_idle
        self.user_agent = user_agent
        self._idle: dict[Origin, list[_Conn]] = {}

    async def get(self, url: str, headers: dict[str, str], credentials: dict[str, str],
                  *, follow_redirects: bool = True) -> Response:
        """GET `url`; the caller reads the body and must `aclose()` the response.
        `credentials` (headers such as Authorization) go to the first origin only,
        never to another host a redirect names. `headers` replace the defaults of the
        same name (User-Agent, Accept)."""
        origin = first = Origin.of(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = {**headers, **(credentials if origin == first else {})}
            resp = await self._send(origin, url, sent)
            location = resp.headers.get("location")
            if not follow_redirects or resp.status not in REDIRECT_STATUS or not location:
                return resp
            await self._finish(resp, drain=True)
            url = urljoin(url, location.strip())
            origin = Origin.of(url)
        # every response was a redirect, each already finished above
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    @asynccontextmanager
    async def stream(self, url: str, headers: dict[str, str], credentials: dict[str, str],
                     *, follow_redirects: bool = True) -> AsyncIterator[Response]:
        """GET `url` (see `get`), for `async with`."""
        resp = await self.get(url, headers, credentials, follow_redirects=follow_redirects)
        try:
            yield resp
        finally:
            await resp.aclose()

    def ssl_context(self) -> ssl.SSLContext:
        """Made on first use: loading a CA bundle costs 50 ms that plain http never needs."""
        if self._ssl_context is None:
            self._ssl_context = self._make_ssl_context()
        return self._ssl_context

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.transport.close()
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
                conn.transport.write(conn.proto.send(request))
                conn.transport.write(conn.proto.send(h11.EndOfMessage()))
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
        given = {k.lower() for k in headers}
        fields = [("Host", origin.host_header())]
        fields += [(k, v) for k, v in (("User-Agent", self.user_agent), ("Accept", "*/*"))
                   if k.lower() not in given]
        if parts.username is not None and "authorization" not in given:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            fields.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode()))
        fields += [(k, v) for k, v in headers.items() if k.lower() != "host"]
        return h11.Request(method="GET", target=target, headers=fields)

    async def _next_event(self, conn: _Conn) -> h11.Event:
        proto = conn.proto
        while True:
            event = proto.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await conn.wire.read_some(self.read_timeout)
            proto.receive_data(data)  # b"" is the end of the stream

    async def _finish(self, resp: Response, *, drain: bool) -> None:
        """Give the connection back when its exchange ended cleanly, else close it."""
        if resp.finished:
            return
        resp.finished = True
        conn = resp._conn
        if conn.proto.our_state is h11.CLOSED or conn.transport.is_closing():
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
            conn.transport.close()

    async def _connect(self, origin: Origin) -> _Conn:
        """Resolve, check each address against the policy, and connect to the first
        allowed one that answers (TLS names the host, not the address)."""
        tls = self.ssl_context() if origin.scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._addresses(origin)
                for i, address in enumerate(addresses):
                    try:
                        transport, wire = await loop.create_connection(
                            _Wire, address, origin.port, ssl=tls,
                            server_hostname=origin.host if tls else None,
                        )
                        break
                    except ssl.SSLError:
                        raise  # the server answered: its certificate is the answer
                    except OSError:
                        if i == len(addresses) - 1:
                            raise
        except (OSError, TimeoutError) as e:
            raise ConnectError(origin.host, origin.port) from e
        return _Conn(origin, transport, wire)

    async def _addresses(self, origin: Origin) -> list[str]:
        """The addresses to try, in the resolver's order, those the policy refuses left
        out; AddressRefused (for the first refused) if none is left."""
        if self.policy is None:
            return [origin.host]  # asyncio resolves it
        literal = self.policy.check_literal(origin.host)
        if literal is not None:
            return [str(literal)]
        infos = await asyncio.get_running_loop().getaddrinfo(
            origin.host, origin.port, type=socket.SOCK_STREAM)
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed: list[str] = []
        refused: AddressRefused | None = None
        for address in found:
            try:
                self.policy.check(origin.host, ipaddress.ip_address(address))
                allowed.append(address)
            except AddressRefused as e:
                refused = refused or e
        if not allowed and refused is not None:
            raise refused
        return allowed
