"""`openai`: an OpenAI-compatible files API through the `openai` SDK.

Bytes come from `files.with_streaming_response.content` (never `files.content()`,
which reads the whole body into memory); name and size from `files.retrieve`. The
SDK's GET requests travel over prefetchd's h1 connections (an httpx transport, see
`H1Transport`): its default transport costs about 1 s of CPU per GiB received, h1
a third of that. Through a proxy from the environment the SDK keeps its own. An
instance that serves Moonshot/Kimi gets extracted text, not the uploaded bytes:
`returns_original` is False there, so the upload's hash and size are never used to
check it and the file is named `<original>.extracted.txt`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import openai

try:  # openai>=3 ships its own fork of httpx; older releases use httpx itself
    import httpx2 as _sdk_httpx  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx as _sdk_httpx  # type: ignore[no-redef, unused-ignore]

from ..errors import DownloadError, PermanentError, TransientError, UsageError
from .base import (
    Body,
    Provider,
    RangeNotSatisfiable,
    body_from_response,
    raise_for_status,
    range_headers,
    unsatisfiable_total,
)
from .h1 import TRANSPORT_ERRORS, H1Client, proxied
from .h1 import Response as H1Response
from .http import USER_AGENT, trust_store
from .ids import check_openai_file_id
from .transport import transport_error

EXTRACTED_SUFFIX = ".extracted.txt"


class H1Transport(_sdk_httpx.AsyncBaseTransport):
    """The SDK's httpx client sends its GETs through an H1Client (the client still
    does redirects, auth headers and decoding); other methods go through httpx's own
    transport. h1's errors come out as the httpx errors the SDK maps."""

    def __init__(self, h1: H1Client) -> None:
        self._h1 = h1
        self._other: _sdk_httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: _sdk_httpx.Request) -> _sdk_httpx.Response:
        if request.method != "GET" or request.headers.get("content-length", "0") != "0":
            if self._other is None:
                self._other = _sdk_httpx.AsyncHTTPTransport(verify=self._h1.ssl_context())
            return await self._other.handle_async_request(request)
        headers = {k: v for k, v in request.headers.multi_items() if k.lower() != "host"}
        try:
            resp = await self._h1.get(str(request.url), headers, {}, follow_redirects=False)
        # `from e`: transport_error reads the cause (refused, DNS, certificate...).
        except TimeoutError as e:  # waiting for the response's head
            raise _sdk_httpx.TimeoutException(str(e) or "timed out", request=request) from e
        except TRANSPORT_ERRORS as e:
            raise _sdk_httpx.ConnectError(str(e), request=request) from e
        return _sdk_httpx.Response(resp.status, headers=resp.header_list,
                                   stream=_H1Stream(resp, request), request=request,
                                   extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        await self._h1.aclose()
        if self._other is not None:
            await self._other.aclose()


class _H1Stream(_sdk_httpx.AsyncByteStream):
    def __init__(self, resp: H1Response, request: _sdk_httpx.Request) -> None:
        self._resp = resp
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp:
                # A bytearray goes on uncopied: httpx only slices and joins body chunks.
                yield chunk  # type: ignore[misc]
        except TimeoutError as e:
            raise _sdk_httpx.ReadTimeout(str(e) or "timed out", request=self._request) from e
        except h11.RemoteProtocolError as e:
            raise _sdk_httpx.RemoteProtocolError(str(e), request=self._request) from e
        except TRANSPORT_ERRORS as e:
            raise _sdk_httpx.ReadError(str(e), request=self._request) from e

    async def aclose(self) -> None:
        await self._resp.aclose()


#: what the SDK raises when no HTTP status explains a failure (a refused or broken
#: connection, a timeout, too many redirects, a body that does not decode)
SDK_ERRORS = (openai.APIConnectionError, _sdk_httpx.HTTPError)


def sdk_error(exc: Exception, what: str) -> DownloadError:
    """One of SDK_ERRORS in words, as transport_error says them (never a class name)."""
    if isinstance(exc, _sdk_httpx.TooManyRedirects):
        return PermanentError(f"{what}: too many redirects")
    if isinstance(exc, _sdk_httpx.DecodingError):
        return TransientError(f"{what}: the body did not decode as its Content-Encoding says")
    return transport_error(exc, what)


def is_moonshot(name: str, base_url: str) -> bool:
    return name == "kimi" or "moonshot" in base_url


class OpenAIProvider(Provider):
    def __init__(  # noqa: PLR0913 - one keyword per setting of [providers.<name>]
        self, name: str, *, base_url: str, api_key: str | None, connect_timeout: float,
        stall_timeout: float, returns_original: bool | None = None, max_connections: int = 16,
    ) -> None:
        super().__init__(name)
        self.returns_original = (
            not is_moonshot(name, base_url) if returns_original is None else returns_original
        )
        timeout = openai.Timeout(stall_timeout, connect=connect_timeout)
        http_client = None
        #: the connections under the SDK; None through a proxy (the SDK's own transport)
        self.h1: H1Client | None = None
        if not proxied(base_url, urllib.request.getproxies_environment()):
            self.h1 = H1Client(connect_timeout=connect_timeout, read_timeout=stall_timeout,
                               ssl_context=trust_store, max_idle=max_connections,
                               user_agent=USER_AGENT)
            http_client = _sdk_httpx.AsyncClient(transport=H1Transport(self.h1),
                                                 timeout=timeout, follow_redirects=True)
        self.client = openai.AsyncOpenAI(
            # Servers without auth still need some key for the SDK to start.
            api_key=api_key or "unset",
            base_url=base_url,
            max_retries=0,  # the fetch engine retries, with its own backoff and resume
            timeout=timeout,
            http_client=http_client,
        )

    async def _retrieve(self, file_id: str, what: str) -> tuple[str | None, int | None]:
        try:
            obj = await self.client.files.retrieve(file_id)
        except openai.APIStatusError as e:
            raise_for_status(e.status_code, e.response.headers, what)
            raise PermanentError(f"{what}: HTTP {e.status_code}", status=e.status_code) from None
        except SDK_ERRORS as e:
            raise sdk_error(e, what) from None
        except (openai.APIResponseValidationError, ValueError):  # ValueError: not JSON
            raise TransientError(
                f"{what}: files.retrieve answered something that is not a file object"
            ) from None
        name = getattr(obj, "filename", None)
        size = getattr(obj, "bytes", None)
        return name, size if isinstance(size, int) else None

    @asynccontextmanager
    async def open(
        self, file_id: str, offset: int = 0, validator: str | None = None
    ) -> AsyncIterator[Body]:
        what = f"{self.name} file {file_id}"
        try:  # refused as a request already; this guards ids that came another way
            check_openai_file_id(file_id, self.name)
        except UsageError as e:
            raise PermanentError(str(e)) from None
        name, size = await self._retrieve(file_id, what)
        if not self.returns_original:
            # Extracted text: the upload's size says nothing about these bytes.
            size = None
            name = f"{name or file_id}{EXTRACTED_SUFFIX}"
        try:
            async with self.client.files.with_streaming_response.content(
                file_id, extra_headers=range_headers(offset, validator)
            ) as resp:
                http = resp.http_response
                start, total, val, dated = body_from_response(
                    http.status_code, http.headers, offset, what)
                if total is None:
                    total = size
                elif size is not None and total != size:
                    raise TransientError(
                        f"{what}: files.retrieve says {size} bytes, the content is {total}"
                    )
                yield Body(_chunks(resp, what), start, total, name, val, dated)
        except openai.APIStatusError as e:
            if e.status_code == 416:
                raise RangeNotSatisfiable(
                    unsatisfiable_total(e.response.headers.get("content-range"))
                ) from None
            raise_for_status(e.status_code, e.response.headers, what)
            raise PermanentError(f"{what}: HTTP {e.status_code}", status=e.status_code) from None
        except SDK_ERRORS as e:
            raise sdk_error(e, what) from None

    async def aclose(self) -> None:
        await self.client.close()


async def _chunks(resp: object, what: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.iter_bytes():  # type: ignore[attr-defined]
            yield chunk
    except SDK_ERRORS as e:
        raise sdk_error(e, what) from None
