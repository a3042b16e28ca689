"""Display forms of file_ids: what may be shown, logged or mirrored.

A file_id can carry secrets: a URL's userinfo (`user:password@`) and a presigned
query (X-Amz-Signature, X-Amz-Credential, sig, token...). The manifest keeps the real
id; everything that leaves the process uses `display_id`, and free text (error
messages, log lines, CLI output, receipts) goes through `redact_text`, which rewrites
every URL in it. Both return their input unchanged, cheaply, when it holds no `://`,
because they run on every log line and every write of the CLI.
"""

from __future__ import annotations

import re
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:  # not loaded at run time: the CLI's socket path (quick.py) prints here
    from typing import Any, TextIO

MARK = "REDACTED"  # stands for each query value
USERINFO = "***"  # stands for `user:password` (the user name too: it may be a key id)

_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URL inside text runs to whitespace, a double quote, < > or a backquote; a
# backslash escape (JSON `\"`, `\u00e9`) is kept inside it so an escaped character
# cannot end the match early and leave the rest of a secret behind. The scheme is
# optional so that `://user:pw@...` cut from its scheme is still caught.
_URL_IN_TEXT = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*)?://(?:\\\S|[^\s\"<>`\\])*")
# Punctuation that usually closes the sentence or quote around a URL, not the URL.
_TRAILING = "'.,;:!?)]}"


def display_id(file_id: str) -> str:
    """The form of a file_id that may leave the process.

    For a URL (`scheme://...`): userinfo becomes `***@`, each query value becomes
    REDACTED (a bare query item too, it may be a token), the fragment is dropped. An
    id without userinfo, query or fragment, and any id that is not a URL, is returned
    unchanged, so upload rows keyed by provider ids still match in Supabase.
    """
    if "://" not in file_id:
        return file_id
    if _URL_START.match(file_id):
        return _display_url(file_id)
    return redact_text(file_id)


def redact_text(text: str) -> str:
    """`text` with every URL in it replaced by its display form."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(_display_match, text)


def redact_value(value: Any) -> Any:
    """`value` with redact_text applied to every string in it (dicts, lists, tuples
    nested to any depth, other objects by their str()); a `file_id` key's value gets
    display_id. For JSON documents (receipts, error files) and log events."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: display_id(v) if k == "file_id" and isinstance(v, str) else redact_value(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value)  # an exception or a Path in a log event is rendered as text anyway
    return redact_text(text) if "://" in text else value


def _display_match(m: re.Match[str]) -> str:
    url = m.group(0)
    core = url.rstrip(_TRAILING)
    return _display_url(core) + url[len(core):]


def _display_url(url: str) -> str:
    head, _, rest = url.partition("://")
    end = len(rest)
    for c in "/?#":  # the authority ends where urllib's urlsplit ends it
        i = rest.find(c)
        if i != -1 and i < end:
            end = i
    netloc, tail = rest[:end], rest[end:]
    _userinfo, at, hostport = netloc.rpartition("@")
    if not _port_ok(hostport):
        # `user:pass` cut before its `@`, or a password with a raw `/`: what follows
        # is not a host, and may be the rest of the password.
        return f"{head}://{USERINFO}"
    tail = tail.partition("#")[0]
    path, q, query = tail.partition("?")
    if q:
        query = _QUERY_ITEM.sub(_redact_item, query)
    # Built from the original pieces: an id with nothing to hide comes back unchanged.
    return f"{head}://{USERINFO + '@' if at else ''}{hostport}{path}{q}{query}"


def _port_ok(hostport: str) -> bool:
    """True when what follows the host (after its first `:`, or an IPv6 literal's `]:`)
    is a port number or nothing: else `host:rest` is not a host and port."""
    if hostport.startswith("["):  # [IPv6]:port
        close = hostport.find("]")
        if close == -1:
            return False
        rest = hostport[close + 1:]
        if not rest:
            return True
        if not rest.startswith(":"):
            return False
        port = rest[1:]
    else:
        port = hostport.partition(":")[2]
    return port == "" or (port.isascii() and port.isdigit())


# `&` and `;` both separate items (some servers take `;`): a bare token before a `;`
# must not pass for the name of the next item's key.
_QUERY_ITEM = re.compile(r"[^&;]+")


def _redact_item(m: re.Match[str]) -> str:
    item = m.group(0)
    key, eq, value = item.partition("=")
    if not eq:
        return MARK
    return f"{key}={MARK}" if value else item


class RedactingWriter:
    """A text stream that passes what is written through redact_text to `target`.

    Text is held until a line end (or, on flush, until the last whitespace), so that
    a URL written in pieces (json.dump writes a value in several calls) is redacted
    whole: a URL never spans whitespace. `close()` writes out what is left.
    """

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            text = self._pending + s
            cut = max(text.rfind("\n"), text.rfind("\r")) + 1  # \r: progress redraws
            self._pending = text[cut:]
            if cut:
                self.target.write(redact_text(text[:cut]))
        return len(s)

    def flush(self) -> None:
        with self._lock:
            text = self._pending
            cut = max((text.rfind(c) for c in " \t\f\v"), default=-1) + 1
            self._pending = text[cut:]
            if cut:
                self.target.write(redact_text(text[:cut]))
        self.target.flush()

    def close(self) -> None:
        """Write out the rest; the target stays open (it is usually sys.stdout)."""
        with self._lock:
            text, self._pending = self._pending, ""
            if text:
                self.target.write(redact_text(text))
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:
        return self.target.encoding
