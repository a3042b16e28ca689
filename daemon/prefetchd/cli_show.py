"""How the command line shows things: sizes for people, JSON, status, a progress bar.

Apart from cli.py so that the command functions stay a few lines each over one
library call; nothing here calls the library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Protocol

from .api import GetResult
from .errors import PrefetchError
from .shapes import Status


class Stream(Protocol):
    """What the CLI writes to: a text stream (in practice a RedactingWriter)."""

    def write(self, s: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def human(n: float) -> str:
    """Bytes with a binary unit: '512 B', '1.5 KiB', '3.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def print_json(obj: Any, out: Stream) -> None:
    """The --json output: indented, one trailing newline."""
    json.dump(obj, out, indent=2)
    out.write("\n")


class Progress:
    """A one-line progress bar on a terminal (stderr), redrawn at most 10 times a second."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.files: dict[str, tuple[int, int | None]] = {}
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, file_id: str, done: int, total: int | None) -> None:
        self.files[file_id] = (done, total)
        now = time.monotonic()
        if now - self.last < 0.1 and not (total is not None and done >= total):
            return
        self.last = now
        got = sum(d for d, _ in self.files.values())
        known = [t for _, t in self.files.values() if t is not None]
        # A fraction only when every file's total is known (and not all empty).
        whole = sum(known) if len(known) == len(self.files) else 0
        rate = got / max(now - self.started, 1e-6)
        if whole:
            frac = got / whole
            bar = "#" * int(frac * 30)
            line = f"[{bar:<30}] {frac:6.1%} {human(got)}/{human(whole)}"
        else:
            line = f"{human(got)}"
        self.stream.write(f"\r{line} {human(rate)}/s  {len(self.files)} file(s) ")
        self.stream.flush()

    def close(self) -> None:
        if self.files:
            self.stream.write("\n")
            self.stream.flush()


def status_lines(s: Status) -> Iterator[str]:
    """`status` for people; `status --json` prints `s` itself."""
    d = s["daemon"]
    yield f"daemon:   {'running, pid ' + str(d['pid']) if d['running'] else 'not running'}"
    yield f"root:     {s['root']}"
    yield f"queue:    {s['queue']}"
    states = ", ".join(f"{k} {v}" for k, v in s["states"].items() if v)
    yield f"states:   {states or 'empty'}"
    yield f"store:    {s['store']['objects']} objects, {human(s['store']['bytes'])}"
    m = s["mirror"]
    mirror = "Supabase" if m["configured"] else "not configured (statistics stay local)"
    yield f"outbox:   {s['outbox_backlog']} events not yet mirrored; mirror: {mirror}"
    if m["last_error"]:
        yield f"mirror:   last error: {m['last_error']}"
    for e in s["last_errors"]:
        yield f"error:    {e['file_id']} ({e['state']}): {e['error']}"


def get_json(r: GetResult) -> dict[str, Any]:
    """The stable `get --json` shape (documented in the README)."""
    return {"file_id": r.file_id, "state": r.state,
            "path": str(r.path) if r.path is not None else None,
            "error": str(r.error) if r.error is not None else None}


def get_error(file_id: str, error: PrefetchError) -> str:
    """`get`'s message for an id that is not ready, naming the id once.

    An error that carries its `file_id` names it in its message already; one without
    the attribute (not every error carries it yet) is searched for the id instead.
    """
    message = str(error)
    about = getattr(error, "file_id", None)
    if about is None and file_id in message:
        about = file_id
    return message if about == file_id else f"{file_id}: {message}"


def os_error(e: BaseException) -> str:
    """An OSError as `path: reason`, else the error's message (or its class)."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e) or type(e).__name__
