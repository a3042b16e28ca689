"""What the Python API accepts and how its calls travel: argument forms and wire forms.

Apart from api.py so that the facade stays one method per operation. An agent author
expects `want("a/b.txt")` to want one file (a str is one id, never its characters),
`timeout=10` and `timeout="10s"` to mean the same, and a bad argument to be a
ValueError (BadRequest) whichever way the call goes: in this process or through the
daemon's socket. The wire forms turn a request into the JSON body of the local API
and a `get --json` row back into the GetResult the in-process `get` returns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..config import parse_duration
from ..errors import BadRequest, PrefetchError, UsageError, from_json
from ..fetch import Progress
from ..ops.results import GetResult
from ..requests import Options
from ..shapes import GetLine
from .client import Transfer, WantBody, Watch

FileIds = str | Iterable[str]
"""One file_id (a str, never taken as its characters) or an iterable of them."""



def file_id_list(file_ids: FileIds) -> list[str]:
    """A str is one file_id (never its characters); another iterable holds several."""
    if isinstance(file_ids, str):
        return [file_ids]
    if isinstance(file_ids, (bytes, bytearray)) or not isinstance(file_ids, Iterable):
        raise BadRequest(f"file_ids: expected a str or an iterable of str, "
                         f"not {type(file_ids).__name__}")
    ids = list(file_ids)
    for fid in ids:
        if not isinstance(fid, str):
            raise BadRequest(f"file_ids: each file_id is a str, not {type(fid).__name__}")
    return ids


def timeout_seconds(timeout: float | str | None) -> float | None:
    """`timeout=10`, `timeout=2.5` and `timeout="10s"` alike; None waits until settled."""
    if timeout is None:
        return None
    try:
        return parse_duration(timeout)
    except ValueError as e:
        raise BadRequest(f"timeout: {timeout!r}: {e}") from None


def options(  # noqa: PLR0913 - one keyword per request field
    *, provider: str | None = None, sha256: str | None = None, size: int | None = None,
    dest: str | None = None, pin: bool = False, ttl: str | float | None = None,
) -> Options:
    """A want's options; `pin` must be a bool (pin="no" would otherwise pin)."""
    if not isinstance(pin, bool):
        raise BadRequest(f"pin: expected True or False, not {pin!r}")
    return Options(provider=provider, sha256=sha256, size=size, dest=dest, pin=pin, ttl=ttl)


def want_body(file_ids: list[str], o: Options) -> WantBody:
    """The JSON body of a want through the socket: the options that were given."""
    body: WantBody = {"file_ids": file_ids, "pin": o.pin}
    if o.provider is not None:
        body["provider"] = o.provider
    if o.sha256 is not None:
        body["sha256"] = o.sha256
    if o.size is not None:
        body["size"] = o.size
    if o.dest is not None:
        body["dest"] = o.dest
    if o.ttl is not None:
        body["ttl"] = o.ttl
    return body


def result_of(row: GetLine, file_id: str) -> GetResult:
    """The GetResult of the daemon's get row for `file_id` (the id as given: the row
    shows a URL in its display form). Its error is the one the daemon had, rebuilt
    from its code and attributes (errors.from_json)."""
    path = Path(row["path"]) if row["path"] is not None else None
    if row["error"] is None:
        return GetResult(file_id, path, None, row["state"], row.get("sha256"),
                         row.get("size"))
    detail = row.get("detail")
    error = (from_json(detail) if isinstance(detail, dict)
             else PrefetchError(row["error"]))  # a daemon older than error codes
    if error.file_id is not None:
        error.file_id = file_id  # the real id, where the daemon wrote its display form
    return GetResult(file_id, path, error, row["state"])


@contextlib.contextmanager
def bad_request() -> Iterator[None]:
    """A request refused here is a BadRequest, as it is through the daemon."""
    try:
        yield
    except BadRequest:
        raise
    except UsageError as e:
        raise BadRequest(str(e), file_id=e.file_id, path=e.path) from e


def watcher(progress: Progress | None, watch: Watch | None) -> Watch | None:
    """One Watch for the daemon's progress lines, feeding both callbacks."""
    if progress is None:
        return watch

    def both(t: Transfer) -> None:
        progress(t.file_id, t.done, t.total)
        if watch is not None:
            watch(t)

    return both


def progress_of(progress: Progress | None, watch: Watch | None) -> Progress | None:
    """One engine progress callback feeding both (no file name, no resume point here)."""
    if watch is None:
        return progress

    def both(file_id: str, done: int, total: int | None) -> None:
        if progress is not None:
            progress(file_id, done, total)
        watch(Transfer(file_id, None, done, total))

    return both


def writable(path: Path) -> bool:
    """Whether this process may write `path`, or create it (then its nearest existing
    parent decides)."""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def flat(file_ids: tuple[FileIds, ...]) -> list[str]:
    """The ids of `want("a", "b")` and of `want(["a", "b"])`."""
    return [fid for group in file_ids for fid in file_id_list(group)]


