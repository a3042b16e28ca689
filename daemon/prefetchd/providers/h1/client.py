"""H1Client: GET with keep-alive connections per origin, redirects and timeouts.

Each request is one `Exchange` (exchange.py) on a connection from the idle pool or a
new one; the exchange hands the connection back to the pool (`_checkin`) when done.
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
from urllib.parse import quote, unquote, urljoin, urlsplit

import h11

from .exchange import TRANSPORT_ERRORS, Conn, Exchange, Origin
from .policy import AddressPolicy, AddressRefused
from .response import Response
from .wire import Wire

MAX_REDIRECTS = 10
REDIRECT_STATUS = {301, 302, 303, 307, 308}


def proxied(url: str, proxies: dict[str, str]) -> bool:
    """Whether a proxy from the environment (urllib.request.getproxies_environment(),
    NO_PROXY applied) is meant for `url`; h1 talks to origins directly only."""
    if not proxies:
        return False
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    # Undocumented in typeshed, public in urllib.request: NO_PROXY as urllib applies it.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return not bypass(parts.hostname or "", proxies)


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
        self._idle: dict[Origin, list[Conn]] = {}

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
            await resp.discard()
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
                conn.close()
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
            exchange = Exchange(conn, self.read_timeout, self._checkin)
            try:
                return Response(exchange, await exchange.send(request), url)
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

    # -- connections ----------------------------------------------------------------

    def _checkout(self, origin: Origin) -> Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.alive():
                conn.reused = True
                return conn
            conn.abort()
        return None

    def _checkin(self, conn: Conn) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, origin: Origin) -> Conn:
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
                            Wire, address, origin.port, ssl=tls,
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
        return Conn(origin, transport, wire)

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
