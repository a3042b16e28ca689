"""The JSON shapes prefetchd prints and writes, as TypedDicts.

Each shape is a documented contract (README, "JSON output"): scripts read these keys,
so they change only with the README. The operations build them, the CLI prints them
as they are, and mypy checks that nobody adds or drops a key on the way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NotRequired, TypedDict


class ClaimRow(TypedDict):
    """One claim of an `ls --json` row: one requester's interest in the file."""

    holder: str  # uid:1000, uid:1000/job-42, fleet:<group>
    wanted: bool
    pin: bool
    dest: str | None  # as the claim gave it (relative to the root), or None: the default
    path: str | None  # absolute: this claim's link while the file is ready, else None
    sha256: str | None  # the claim's own expectation
    size: int | None  # the claim's own expectation
    ttl: float | None  # seconds
    error: str | None  # why this claim alone failed (its expectation does not match)


class LsRow(TypedDict):
    """One file of `ls --json`, with its claims."""

    file_id: str
    state: str
    wanted: bool
    pin: bool
    provider: str | None
    size: int | None
    sha256: str | None
    path: str | None  # absolute, or None when not in place
    error: str | None
    updated_at: float | None  # Unix seconds
    claims: list[ClaimRow]


class DaemonInfo(TypedDict):
    running: bool
    pid: int | None


class StoreTotals(TypedDict):
    objects: int
    bytes: int


class MirrorInfo(TypedDict):
    configured: bool
    last_push_at: float | None
    last_error: str | None
    last_error_at: float | None


class LastError(TypedDict):
    file_id: str
    state: str
    error: str
    updated_at: float | None


class FleetInfo(TypedDict):
    """`status --json` "fleet", with [fleet] only: this host's sync with its group."""

    group: str
    host: str
    revision: int  # of the group's wanted-set, applied here
    polled_at: float | None  # last successful poll of the wanted-set
    reported_at: float | None  # last successful report of states and heartbeat
    last_error: str | None  # of a failed poll or report, until that job works again


class ClaimCounts(TypedDict):
    total: int
    wanted: int
    failed: int  # claims whose own sha256/size does not match their file


class Status(TypedDict):
    """`status --json`."""

    daemon: DaemonInfo
    root: str
    state_dir: str
    states: dict[str, int]  # every state, with 0 for the empty ones
    queue: int  # queued + retrying + downloading + waiting_space
    claims: ClaimCounts
    stalled: int  # `downloading` with nobody downloading them (an interrupted get)
    ready_bytes: int
    store: StoreTotals
    outbox_backlog: int  # download and cache-hit events not yet mirrored
    mirror: MirrorInfo
    last_errors: list[LastError]
    fleet: NotRequired[FleetInfo]


class GetRow(TypedDict):
    """One element of `get --json`, in the order the ids were given."""

    file_id: str
    state: str | None  # the entry's state when `get` returned
    path: str | None
    error: str | None  # the one-line message, or None when ready


class GetLine(GetRow):
    """One row of the local API's get result: a GetRow, and the error as the API sends
    errors (code, exit_code, attributes: errors.PrefetchError.to_json)."""

    detail: dict[str, Any] | None
    sha256: str | None  # the file's, when ready (MCP's prefetch_get answers with it)
    size: int | None


class VerifyRow(TypedDict):
    """One element of `verify --json`: a ready file that was re-hashed."""

    file_id: str
    ok: bool
    sha256: str | None
    # Only for a bad file re-fetched in this process (no daemon ran): whether that worked.
    refetched: NotRequired[bool]


class StatsRow(TypedDict):
    """One element of `stats --json`: one provider's local statistics."""

    provider: str | None
    downloads: int
    cache_hits: int
    failures: int
    bytes: int  # downloaded (cache hits cost nothing)
    hit_rate: float | None  # cache_hits / (downloads + cache_hits), None when neither


class GcDeletion(TypedDict):
    file_id: str
    path: str | None
    kind: str  # unwanted, expired, evicted
    reason: str


class GcResult(TypedDict):
    """What one retention pass (`gc`) removed, or would remove with --dry-run."""

    deleted: list[GcDeletion]
    objects_removed: list[str]  # sha256 of objects nothing linked
    strays_removed: list[str]  # paths of links no entry accounted for


class ScrubResult(TypedDict):
    objects: int
    bytes: int
    bad: list[str]  # sha256 of objects that no longer hash to their name
    requeued: list[str]  # file_ids queued again because their object was bad


class ReceiptEntry(TypedDict):
    """One entry of `processed/<name>.receipt.json`."""

    file_id: str
    action: str  # want, unwant, forget
    state: str  # the entry's state, or `forgotten`
    path: str | None  # absolute, once ready
    error: str | None  # why it failed


class Receipt(TypedDict):
    """`processed/<name>.receipt.json`."""

    request: str
    complete: bool  # every wanted entry has settled
    updated_at: str  # ISO 8601, UTC
    entries: list[ReceiptEntry]


class RequestRejected(TypedDict):
    """`failed/<name>.error.json`."""

    request: str
    error: str
    at: str  # ISO 8601, UTC



# -- arrays a row at a time -----------------------------------------------------------
# A long answer (`GET /v1/ls` of a million files) is written and read a row at a time,
# never held whole: `[`, then each row on its own line, every row after the first
# starting with its comma (so a row's line ends when the row is sent), then `]`.
# Any JSON reader takes it as the one array it is; array_rows reads it row by row (a
# row encoded without indent is one line: JSON escapes the newlines in strings).


def array_rows(lines: Iterable[str]) -> Iterator[Any]:
    """The rows of such an array, from its lines; an array that ends before its `]` (a
    cut connection) raises ValueError."""
    for raw in lines:
        line = raw.strip()
        if line in ("", "["):
            continue
        if line in ("]", "[]"):
            return
        yield json.loads(line[1:] if line.startswith(",") else line)
    raise ValueError("the array ended before its `]`")
