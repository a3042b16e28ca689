"""`openai`: an OpenAI-compatible files API through the `openai` SDK.

Bytes come from `files.with_streaming_response.content` (never `files.content()`,
which reads the whole body into memory); name and size from `files.retrieve`. An
instance that serves Moonshot/Kimi gets extracted text, not the uploaded bytes:
`returns_original` is False there, so the upload's hash and size are never used to
check it and the file is named `<original>.extracted.txt`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai

try:  # openai>=3 ships its own fork of httpx; older releases use httpx itself
    import httpcore2 as _sdk_httpcore  # type: ignore[import-not-found]
    import httpx2 as _sdk_httpx  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpcore as _sdk_httpcore  # type: ignore[no-redef]
    import httpx as _sdk_httpx  # type: ignore[no-redef]

from ..errors import PermanentError, TransientError
from .base import (
    Body,
    Provider,
    RangeNotSatisfiable,
    body_from_response,
    raise_for_status,
    range_headers,
    unsatisfiable_total,
)
from .http import large_reads, transport_error

EXTRACTED_SUFFIX = ".extracted.txt"
large_reads(_sdk_httpcore.AsyncHTTP11Connection)


def is_moonshot(name: str, base_url: str) -> bool:
    return name == "kimi" or "moonshot" in base_url


class OpenAIProvider(Provider):
    def __init__(
        self, name: str, *, base_url: str, api_key: str | None, connect_timeout: float,
        stall_timeout: float, returns_original: bool | None = None,
    ) -> None:
        super().__init__(name)
        self.returns_original = (
            not is_moonshot(name, base_url) if returns_original is None else returns_original
        )
        self.client = openai.AsyncOpenAI(
            # Servers without auth still need some key for the SDK to start.
            api_key=api_key or "unset",
            base_url=base_url,
            max_retries=0,  # the fetch engine retries, with its own backoff and resume
            timeout=openai.Timeout(stall_timeout, connect=connect_timeout),
        )

    async def _retrieve(self, file_id: str, what: str) -> tuple[str | None, int | None]:
        try:
            obj = await self.client.files.retrieve(file_id)
        except openai.APIStatusError as e:
            raise_for_status(e.status_code, e.response.headers, what)
            raise
        except (openai.APIConnectionError, _sdk_httpx.TransportError) as e:
            raise transport_error(e, what) from None
        name = getattr(obj, "filename", None)
        size = getattr(obj, "bytes", None)
        return name, size if isinstance(size, int) else None

    @asynccontextmanager
    async def open(
        self, file_id: str, offset: int = 0, validator: str | None = None
    ) -> AsyncIterator[Body]:
        what = f"{self.name} file {file_id}"
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
                start, total, val = body_from_response(http.status_code, http.headers, offset, what)
                if total is None:
                    total = size
                elif size is not None and total != size:
                    raise TransientError(
                        f"{what}: files.retrieve says {size} bytes, the content is {total}"
                    )
                yield Body(_chunks(resp, what), start, total, name, val)
        except openai.APIStatusError as e:
            if e.status_code == 416:
                raise RangeNotSatisfiable(
                    unsatisfiable_total(e.response.headers.get("content-range"))
                ) from None
            raise_for_status(e.status_code, e.response.headers, what)
            raise PermanentError(f"{what}: HTTP {e.status_code}") from None
        except (openai.APIConnectionError, _sdk_httpx.TransportError) as e:
            raise transport_error(e, what) from None

    async def aclose(self) -> None:
        await self.client.close()


async def _chunks(resp: object, what: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.iter_bytes():  # type: ignore[attr-defined]
            yield chunk
    except (openai.APIConnectionError, _sdk_httpx.TransportError) as e:
        raise transport_error(e, what) from None
