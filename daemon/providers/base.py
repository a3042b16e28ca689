"""The one small interface every provider implements, and the HTTP rules they share.

A provider turns a file_id into a stream of bytes, starting at an offset when it can.
It knows nothing of the manifest or the store: it raises TransientError or
PermanentError and the fetch engine decides what to do.
"""

from __future__ import annotations

import email.utils
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import NotFoundError, PermanentError, TransientError

TRANSIENT_STATUS = {408, 425, 429}
NOT_FOUND_STATUS = {404, 410}


@dataclass
class Body:
    """An open download.

    `offset` is where the bytes start (0 for a full body, the requested offset for a
    206). `total` is the size of the whole file when the provider says it. `validator`
    (ETag or Last-Modified) lets a later attempt resume with If-Range. Each chunk is
    handed over: the engine may write it to disk, or grow it, after the provider has
    moved on, so a provider never yields a buffer it reuses.
    """

    chunks: AsyncIterator[bytes | bytearray]
    offset: int = 0
    total: int | None = None
    name: str | None = None
    validator: str | None = None


class RangeNotSatisfiable(Exception):
    """416: the partial is not a prefix the server can continue; `total` if it said."""

    def __init__(self, total: int | None) -> None:
        super().__init__("416 Range Not Satisfiable")
        self.total = total


class Provider(ABC):
    """One configured provider instance (e.g. `kimi`, `mirror`, `http`)."""

    #: whether the bytes are the original upload (False for Moonshot's extracted text)
    returns_original: bool = True

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def open(
        self, file_id: str, offset: int = 0, validator: str | None = None
    ) -> AbstractAsyncContextManager[Body]:
        """Open the file's bytes from `offset` (when `validator` still matches)."""

    async def aclose(self) -> None:
        """Release connections."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds or an HTTP-date -> seconds to wait (None if absent/bad)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def raise_for_status(status: int, headers: Mapping[str, str], what: str) -> None:
    """Map an HTTP error status to the right error class (no body, no secrets)."""
    if status < 400:
        return
    if status in TRANSIENT_STATUS or status >= 500:
        raise TransientError(
            f"{what}: HTTP {status}", retry_after=parse_retry_after(headers.get("retry-after"))
        )
    if status in NOT_FOUND_STATUS:
        raise NotFoundError(f"{what}: HTTP {status} (not found at the provider)")
    if status in (401, 403):
        raise PermanentError(f"{what}: HTTP {status} (check the provider's credentials)")
    raise PermanentError(f"{what}: HTTP {status}")


_CR_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CR_STAR_RE = re.compile(r"bytes\s+\*/(\d+)")


def parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """'bytes 100-199/1000' -> (100, 1000); None if absent or malformed."""
    m = _CR_RE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def unsatisfiable_total(value: str | None) -> int | None:
    m = _CR_STAR_RE.match(value or "")
    return int(m.group(1)) if m else None


def range_headers(offset: int, validator: str | None) -> dict[str, str]:
    headers = {"Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    return headers


def body_from_response(
    status: int, headers: Mapping[str, str], offset: int, what: str
) -> tuple[int, int | None, str | None]:
    """(offset the body starts at, total size, validator) from a 200/206 response."""
    validator = headers.get("etag") or headers.get("last-modified")
    if validator and validator.startswith("W/"):
        validator = None  # weak ETags cannot be used with If-Range
    length = headers.get("content-length")
    if status == 206:
        cr = parse_content_range(headers.get("content-range"))
        if cr is None or cr[0] != offset:
            raise TransientError(f"{what}: 206 with a Content-Range that does not start at {offset}")
        return offset, cr[1], validator
    total = int(length) if length and length.isdigit() else None
    return 0, total, validator


def filename_from_disposition(value: str | None) -> str | None:
    if not value:
        return None
    m = re.search(r"filename\*=(?:UTF-8'')?([^;]+)", value, re.IGNORECASE)
    if m:
        return unquote(m.group(1).strip().strip('"'))
    m = re.search(r'filename="?([^";]+)"?', value, re.IGNORECASE)
    return m.group(1) if m else None
