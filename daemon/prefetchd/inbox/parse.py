"""Request files, parsed: bytes in, request entries out (pure: no I/O, no manifest).

`*.json` holds one request object or a list of them; any other name holds one
file_id per line, `#` starting a comment. Every error is a RequestError naming the
entry or line and what was wrong, so the whole file is rejected with one line.
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from ..config.words import say
from ..requests import MAX_FILE_ID, RequestEntry, RequestError

__all__ = ["FAILED", "MAX_BYTES", "MAX_ENTRIES", "PROCESSED", "RequestError", "ignored",
           "parse_request"]

MAX_BYTES = 1 << 20
MAX_ENTRIES = 10_000
PROCESSED, FAILED = "processed", "failed"
_COMMENT_RE = re.compile(r"(^|\s)#.*$")


def ignored(name: str) -> bool:
    """Names the watcher leaves alone until they are renamed."""
    return name.startswith(".") or name.endswith((".tmp", ".part")) or name in (PROCESSED, FAILED)


def parse_request(name: str, data: bytes) -> list[RequestEntry]:
    """Bytes of a request file -> entries, or RequestError naming the problem."""
    if len(data) > MAX_BYTES:
        raise RequestError(f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"not UTF-8 (byte {e.start})") from None
    entries = _parse_json(text) if name.endswith(".json") else _parse_lines(text)
    if not entries:
        raise RequestError("no entries")
    return entries


def _parse_json(text: str) -> list[RequestEntry]:
    """One request object or a list of them."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RequestError(f"not valid JSON: {e}") from None
    items = doc if isinstance(doc, list) else [doc]
    if len(items) > MAX_ENTRIES:
        raise RequestError(f"more than {MAX_ENTRIES} entries")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(f"entry {i}: expected an object, got {type(item).__name__}")
        try:
            entries.append(RequestEntry.model_validate(item))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "entry"
            raise RequestError(f"entry {i}: {loc}: {say(err)}") from None
    return entries


def _parse_lines(text: str) -> list[RequestEntry]:
    """One file_id per line; `#` at the start of a line or after a space comments."""
    entries: list[RequestEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fid = _COMMENT_RE.sub("", line).strip()
        if not fid:
            continue
        if len(entries) >= MAX_ENTRIES:
            raise RequestError(f"more than {MAX_ENTRIES} entries")
        if "\x00" in fid or len(fid) > MAX_FILE_ID:
            raise RequestError(f"line {lineno}: not a file_id")
        entries.append(RequestEntry(file_id=fid))
    return entries
