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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from ..errors import NotFoundError, PermanentError, TransientError

READ_SIZE = 1 << 20  # body buffer: one wake-up, one disk write and one hash step each
TRANSIENT_STATUS = {408, 425, 429}
NOT_FOUND_STATUS = {404, 410}


@dataclass
class Body:
    """An open download.

    `offset` is where the bytes start (0 for a full body, the requested offset for a
    206). `total` is the size of the whole file when the provider says it. `validator`
    (ETag or Last-Modified) lets a later attempt resume with If-Range; `dated` says it
    only dates the file (see `resume_validator`), so a resume also needs an expected
    hash to catch a file rewritten with the same size and mtime. Each chunk is
    handed over: the engine may write it to disk, or grow it, after the provider has
    moved on, so a provider never yields a buffer it reuses.

    `blocking`, when the provider has it, hands the rest of a body of known length to
    a thread instead (see BlockingBody); after calling it, `chunks` is not read.
    """

    chunks: AsyncIterator[bytes | bytearray]
    offset: int = 0
    total: int | None = None
    name: str | None = None
    validator: str | None = None
    dated: bool = False
    blocking: Callable[[], BlockingBody] | None = None


class BlockingBody(Protocol):
    """The rest of a body of known length, read by one blocking thread straight into
    the caller's buffers, so the event loop sees none of its bytes.

    A large body costs the loop about 0.75 s of CPU per GiB in per-chunk wake-ups,
    futures and buffer hand-offs; a thread that receives into a reused buffer and
    writes it costs only the two copies the kernel makes. `readinto` raises the
    provider's TransientError when the connection breaks, stalls or ends early, and
    ReadStopped once `stop` was called (from any thread). The reading thread must be
    done before the provider's `open` block exits, which gives the connection back
    (the whole body was read) or closes it.
    """

    @property
    def left(self) -> int:
        """Bytes of the body not yet read."""

    def readinto(self, buf: memoryview) -> int:
        """Receive up to len(buf) bytes of the body into `buf` (at least one; 0 only
        when none are left)."""

    def stop(self) -> None:
        """Make a blocked or later `readinto` raise ReadStopped soon (any thread)."""


class ReadStopped(Exception):
    """A BlockingBody's reading was stopped (the download was cancelled)."""


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

    async def aclose(self) -> None:  # noqa: B027 - optional: most providers hold nothing
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
        raise TransientError(f"{what}: HTTP {status}", status=status,
                             retry_after=parse_retry_after(headers.get("retry-after")))
    if status in NOT_FOUND_STATUS:
        raise NotFoundError(f"{what}: HTTP {status} (not found at the provider)", status=status)
    if status in (401, 403):
        raise PermanentError(f"{what}: HTTP {status} (check the provider's credentials)",
                             status=status)
    raise PermanentError(f"{what}: HTTP {status}", status=status)


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
) -> tuple[int, int | None, str | None, bool]:
    """(offset the body starts at, total size, validator, dated) from a 200/206 response."""
    length = headers.get("content-length")
    if status == 206:
        cr = parse_content_range(headers.get("content-range"))
        if cr is None or cr[0] != offset:
            raise TransientError(
                f"{what}: 206 with a Content-Range that does not start at {offset}", status=206)
        start, total = offset, cr[1]
    else:
        start, total = 0, (int(length) if length and length.isdigit() else None)
    return (start, total, *resume_validator(headers, total))


def resume_validator(headers: Mapping[str, str], total: int | None) -> tuple[str | None, bool]:
    """The validator a later attempt may send in If-Range, and whether it is `dated`.

    A strong ETag that is not made of the file's metadata names the content: a resume
    with it is safe. Last-Modified, and the default ETags of nginx (`"mtime-size"`),
    Apache (`"size-mtime"`, `"inode-size-mtime"`) and lighttpd, only date the file:
    a file rewritten in place with the same size and mtime keeps them, and the server
    answers 206 with the new bytes after the old prefix. Such a validator is used only
    when it is strong per RFC 9110 8.8.2.2 (the response's Date at least one second
    after Last-Modified), and the engine resumes with it only when an expected hash
    will catch a mixed file (see fetch.Download._resume_offset). A weak ETag is never used.
    """
    etag = headers.get("etag")
    if etag and etag.startswith("W/"):
        etag = None
    if etag and not _from_metadata(etag, total):
        return etag, False
    lm = headers.get("last-modified")
    if not lm or not _settled(lm, headers.get("date")):
        return None, False
    return etag or lm, True


def _from_metadata(etag: str, total: int | None) -> bool:
    """Whether an ETag looks made of mtime and size: one of its dash-separated hex
    parts is the size (nginx, Apache, lighttpd's hex form), or it is a short decimal
    number (lighttpd's 32-bit hash of inode, mtime and size)."""
    tag = etag.strip('"')
    if tag.isdigit() and len(tag) <= 10:
        return True
    return total is not None and format(total, "x") in tag.lower().split("-")


def _settled(last_modified: str, date: str | None) -> bool:
    """RFC 9110 8.8.2.2: Last-Modified is strong when Date is at least 1 s later."""
    if not date:
        return False
    try:
        age = email.utils.parsedate_to_datetime(date) - email.utils.parsedate_to_datetime(
            last_modified)
    except (TypeError, ValueError):  # unparsable, or one with a zone and one without
        return False
    return age.total_seconds() >= 1


def filename_from_disposition(value: str | None) -> str | None:
    if not value:
        return None
    m = re.search(r"filename\*=(?:UTF-8'')?([^;]+)", value, re.IGNORECASE)
    if m:
        return unquote(m.group(1).strip().strip('"'))
    m = re.search(r'filename="?([^";]+)"?', value, re.IGNORECASE)
    return m.group(1) if m else None
