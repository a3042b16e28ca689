"""What `get` returns for each file_id, and how long it waits: shared by the wait on a
running daemon (ops.get) and the download in this process (ops.here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import GaveUpError as GaveUpError  # defined with every public error
from ..errors import PrefetchError, TimeoutExpired
from ..fetch import Progress

POLL_INTERVAL = 0.05

Notice = Callable[[str], None]
"""Where `get` says what it is waiting for (a terminal, in the CLI)."""


@dataclass(frozen=True)
class GetResult:
    """What `get` did for one file_id: a path, or the error that stopped it.

    `state` is the entry's manifest state when `get` returned (None if it has none).
    """

    file_id: str
    path: Path | None
    error: PrefetchError | None = None
    state: str | None = None
    sha256: str | None = None  # the file's, when ready
    size: int | None = None


@dataclass(frozen=True)
class Wait:
    """How a `get` waits: at most `timeout` seconds (None: until every id settled),
    drawing `progress` and saying what it waits for through `notice`."""

    timeout: float | None = None
    progress: Progress | None = None
    notice: Notice | None = None

    def tell(self, message: str) -> None:
        if self.notice is not None:
            self.notice(message)


def format_duration(seconds: float) -> str:
    """Seconds as the config writes them ('3s', '2m', '1m30s', '0.5s')."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


def timed_out(file_id: str, timeout: float | None, detail: str) -> GetResult:
    """The result of an id not ready when the wait's --timeout ran out."""
    assert timeout is not None
    return GetResult(file_id, None, TimeoutExpired(
        f"{file_id}: not ready within {format_duration(timeout)}{detail}"))
