"""`http`: any http(s):// URL, with Range + If-Range resume.

Requests go through the lean h11 client in `h1` (keep-alive per origin); a URL that
a proxy from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) applies
to goes through httpx, which speaks to proxies. httpx is imported only then (and for
its trust store on the first https URL): it adds a tenth of a second to every start.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

import h11

from .. import __version__
from ..errors import PermanentError
from .base import (
    BlockingBody,
    Body,
    Provider,
    RangeNotSatisfiable,
    body_from_response,
    filename_from_disposition,
    raise_for_status,
    range_headers,
    unsatisfiable_total,
)
from .h1 import (
    MAX_REDIRECTS,
    REDIRECT_STATUS,
    TRANSPORT_ERRORS,
    AddressPolicy,
    AddressRefused,
    ConnectError,
    H1Client,
    InvalidURL,
    Origin,
    RawBody,
    Response,
    TooManyRedirects,
    proxied,
)
from .transport import transport_error

if TYPE_CHECKING:
    import httpx

USER_AGENT = f"prefetchd/{__version__}"


def trust_store() -> ssl.SSLContext:
    """The CA bundle httpx would use (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    import httpx

    return httpx.create_ssl_context()


def redact_url(url: str) -> str:
    """A URL without userinfo or query (which may carry tokens), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


@dataclass
class _Reply:
    """What either client answered: status, headers (lower-case names), final URL, body."""

    status: int
    headers: Mapping[str, str]
    url: str
    chunks: AsyncIterator[bytes | bytearray]
    h1: Response | None = None  # h1's response (whose body may go to a thread), not httpx's


class HttpProvider(Provider):
    kind = "http"  # the provider type its config section names (`type = "http"`)

    def __init__(  # noqa: PLR0913 - one keyword per setting of [providers.<name>]
        self, name: str, *, connect_timeout: float, stall_timeout: float,
        bearer_token: str | None = None, max_connections: int = 16,
        headers: dict[str, str] | None = None, allow_private_networks: bool = False,
    ) -> None:
        super().__init__(name)
        # Credentials go to the configured origin only, never to a redirect's host.
        self._credentials = dict(headers or {})
        if bearer_token:
            self._credentials["Authorization"] = f"Bearer {bearer_token}"
        self._connect_timeout = connect_timeout
        self._stall_timeout = stall_timeout
        self._lanes = asyncio.Semaphore(max_connections)
        self._policy: AddressPolicy | None = AddressPolicy(allow_private_networks)
        self._h1 = H1Client(connect_timeout=connect_timeout, read_timeout=stall_timeout,
                            ssl_context=trust_store, max_idle=max_connections,
                            user_agent=USER_AGENT, policy=self._policy)
        self._proxies = urllib.request.getproxies_environment()
        self._httpx: dict[str, httpx.AsyncClient] = {}  # by proxy URL

    def trust_configured_urls(self) -> None:
        """For a provider whose URLs come from its config, not from file_ids (supabase):
        they may point anywhere, loopback and private networks included."""
        self._policy = self._h1.policy = None

    def target(self, file_id: str) -> str:
        """The URL to GET for a file_id."""
        if not file_id[:8].lower().startswith(("http://", "https://")):
            raise PermanentError(f"{self.name}: {file_id[:80]!r} is not an http(s) URL")
        return file_id

    @asynccontextmanager
    async def _get(self, url: str, headers: dict[str, str]) -> AsyncIterator[_Reply]:
        """GET `url`, following redirects here, hop by hop: each hop goes through the
        proxy meant for its own URL (or none) and passes the address policy; credentials
        go to the first origin only."""
        async with self._lanes:
            first = Origin.of(url)
            for hop in range(MAX_REDIRECTS + 1):
                same = hop == 0 or Origin.of(url) == first
                credentials = self._credentials if same else {}
                async with self._hop(url, headers, credentials) as (reply, discard):
                    location = reply.headers.get("location")
                    if reply.status not in REDIRECT_STATUS or not location:
                        yield reply
                        return
                    await discard()
                url = urljoin(url, location.strip())
            raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    @asynccontextmanager
    async def _hop(self, url: str, headers: dict[str, str], credentials: dict[str, str]
                   ) -> AsyncIterator[tuple[_Reply, Callable[[], Awaitable[None]]]]:
        """One request, not following a redirect; with what discards a redirect's body."""
        proxy = self._proxy_for(url)
        if proxy is None:
            r = await self._h1.get(url, headers, credentials, follow_redirects=False)
            try:
                yield _Reply(r.status, r.headers, url, r, r), r.discard
            finally:
                await r.aclose()
            return
        if self._policy is not None:  # the proxy resolves names: literal addresses only
            self._policy.check_literal(urlsplit(url).hostname or "", resolved_elsewhere=True)
        import httpx

        try:
            async with self._proxy_client(proxy).stream(
                    "GET", url, headers={**headers, **credentials}) as resp:
                yield (_Reply(resp.status_code, resp.headers, url, _from_httpx(resp.aiter_raw())),
                       _nothing)  # an unread body closes its connection
        except httpx.TransportError as e:
            raise _as_transport_error(e, proxy) from e

    async def error_status(self, resp: _Reply) -> int:
        """The status an error answer stands for (the HTTP status; a provider whose
        server says the real one in its body reads it there)."""
        return resp.status

    def _proxy_for(self, url: str) -> str | None:
        """The proxy from the environment that `url` goes through (see `proxied`)."""
        if not proxied(url, self._proxies):
            return None
        scheme = urlsplit(url).scheme
        return self._proxies.get(scheme) or self._proxies.get("all")

    def _proxy_client(self, proxy: str) -> httpx.AsyncClient:
        """httpx speaks to proxies; one client per proxy, told which (not reading the
        environment itself, so it never sends directly what was decided to proxy)."""
        client = self._httpx.get(proxy)
        if client is None:
            import httpx

            client = self._httpx[proxy] = httpx.AsyncClient(
                proxy=proxy, headers={"User-Agent": USER_AGENT}, follow_redirects=False,
                verify=self._h1.ssl_context(), trust_env=False,
                timeout=httpx.Timeout(self._stall_timeout, connect=self._connect_timeout),
            )
        return client

    @asynccontextmanager
    async def open(
        self, file_id: str, offset: int = 0, validator: str | None = None
    ) -> AsyncIterator[Body]:
        url = self.target(file_id)
        what = f"{self.name} {redact_url(url)}"
        try:
            async with self._get(url, range_headers(offset, validator)) as resp:
                status = await self.error_status(resp) if resp.status >= 400 else resp.status
                if status == 416:
                    total = unsatisfiable_total(resp.headers.get("content-range"))
                    raise RangeNotSatisfiable(total)
                raise_for_status(status, resp.headers, what)
                encoding = resp.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise PermanentError(
                        f"{what}: the server sent Content-Encoding {encoding[:40]} although "
                        "identity was asked; prefetchd stores bytes as served, uncompressed")
                start, total, val, dated = body_from_response(
                    resp.status, resp.headers, offset, what)
                name = filename_from_disposition(resp.headers.get("content-disposition"))
                if not name:
                    name = unquote(urlsplit(resp.url).path.rsplit("/", 1)[-1]) or None
                yield Body(_chunks(resp.chunks, what), start, total, name, val, dated,
                           blocking=_blocking(resp.h1, what))
        except TooManyRedirects:
            raise PermanentError(f"{what}: too many redirects") from None
        except AddressRefused as e:
            # The section may not exist yet (the built-in `http`): say all it needs.
            fix = (f"; set allow_private_networks = true in [providers.{self.name}] (with "
                   f"type = \"{self.kind}\") to allow it" if e.fixable else "")
            raise PermanentError(f"{what}: {e}{fix}") from None
        except InvalidURL as e:
            raise PermanentError(f"{what}: {e}") from None
        except h11.LocalProtocolError as e:
            raise PermanentError(f"{what}: cannot send this request ({e})") from None
        except TRANSPORT_ERRORS as e:
            raise transport_error(e, what) from None

    async def aclose(self) -> None:
        await self._h1.aclose()
        for client in self._httpx.values():
            await client.aclose()
        self._httpx.clear()


async def _nothing() -> None:
    return None


async def _chunks(chunks: AsyncIterator[bytes | bytearray],
                  what: str) -> AsyncIterator[bytes | bytearray]:
    try:
        async for chunk in chunks:
            yield chunk
    except TRANSPORT_ERRORS as e:
        raise transport_error(e, what) from None


def _blocking(resp: Response | None, what: str) -> Callable[[], BlockingBody] | None:
    """What hands an h1 body to a thread, when it can go (see BlockingBody)."""
    if resp is None or not resp.can_hand_off():
        return None
    return lambda: _Blocking(resp.hand_off(), what)


class _Blocking:
    """h1's RawBody, its transport errors turned into prefetchd's (as `_chunks` does)."""

    def __init__(self, raw: RawBody, what: str) -> None:
        self._raw = raw
        self._what = what

    @property
    def left(self) -> int:
        return self._raw.left

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._raw.readinto(buf)
        except TRANSPORT_ERRORS as e:
            raise transport_error(e, self._what) from None

    def stop(self) -> None:
        self._raw.stop()


async def _from_httpx(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """httpx's body, its transport errors turned into ones caught where h1's are."""
    import httpx

    try:
        async for chunk in chunks:
            yield chunk
    except httpx.TransportError as e:
        raise _as_transport_error(e, None) from e


class ViaHttpxError(ConnectionError):
    """An httpx transport error (through a proxy), caught where h1's errors are; its
    cause is httpx's error, whose causes `transport_error` reads."""


def _as_transport_error(exc: Exception, proxy: str | None) -> ConnectionError:
    """A failure to reach the proxy names the proxy; anything else keeps httpx's words."""
    import httpx

    if proxy and isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        parts = urlsplit(proxy)
        if parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            return ConnectError(parts.hostname, parts.port or default, via="proxy ")
    return ViaHttpxError(str(exc))
