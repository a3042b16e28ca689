"""What the end of a download writes: the entry's row and event, the log line, the metric.

Ready (downloaded or a cache hit) or failed, every way out of a download is
recorded here, so the event kinds, states and fields are decided in one place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import DownloadError
from ..links import sync
from ..log import get_logger
from ..manifest import Manifest
from ..records import BytesSource, Entry, EventKind, NewEvent, State
from ..store import Store

log = get_logger("prefetchd.fetch")
_INFO = logging.getLogger("prefetchd.fetch")  # the standard logger `log` writes to


class Observe(Protocol):
    """Told each outcome (`retry`, an event kind, a state) with its provider, the bytes
    downloaded and, for a finished download, its duration: the metrics' feed."""

    def __call__(self, kind: str, provider: str, nbytes: int,
                 seconds: float | None = None, /) -> None: ...


@dataclass(frozen=True)
class Outcome:
    file_id: str
    path: Path
    sha256: str
    size: int
    provider: str
    cache_hit: bool


@dataclass(frozen=True)
class Placed:
    """A verified file: its object `sha`, `size` bytes, linked at `rel` under `name`."""

    sha: str
    size: int
    name: str | None
    rel: str


Change = tuple[NewEvent, dict[str, Any]]  # an event and the row's new fields


class Ledger:
    """Records downloads and failures in the manifest, the log and the metrics."""

    def __init__(self, manifest: Manifest, store: Store, observe: Observe) -> None:
        self.manifest = manifest
        self.store = store
        self.observe = observe

    def ready_change(  # noqa: PLR0913 - what each way to a ready file says, as keywords
            self, row: Entry, label: str, placed: Placed, *, cache_hit: bool, started: float,
            record_state: bool = True, source: BytesSource | None = None,
            resumed_from: int | None = None) -> Change:
        """The event and the row fields that say a file is ready at `placed.rel`.

        `source` says where the bytes came from: by default this store for a cache
        hit, the origin for a download; the fleet passes `storage` for bytes from
        its Storage cache; `resumed_from`, a download's bytes a resume found on disk."""
        if source is None:
            source = BytesSource.LOCAL if cache_hit else BytesSource.ORIGIN
        event = NewEvent(EventKind.CACHE_HIT if cache_hit else EventKind.DOWNLOAD,
                         provider=label, destination=placed.rel, bytes=placed.size,
                         duration_ms=int((time.monotonic() - started) * 1000),
                         cache_hit=cache_hit, sha256=placed.sha, source=source,
                         resumed_from=resumed_from)
        fields: dict[str, Any] = {}
        if record_state or row.state != State.READY:
            fields = dict(state=State.READY, sha256=placed.sha, size=placed.size,
                          name=placed.name, path=placed.rel, resolved_provider=label,
                          error=None, error_detail=None, next_attempt_at=None,
                          min_size=None, note=None,
                          ready_at=time.time())
        return event, fields

    def cache_hit(self, row: Entry, label: str, placed: Placed, *, started: float,
                  record_state: bool = True) -> Outcome:
        """Record a file made ready without downloading (its bytes were stored)."""
        event, fields = self.ready_change(row, label, placed, cache_hit=True, started=started,
                                          record_state=record_state)
        self.manifest.record(row.file_id, event, **fields)
        self.moved(row, placed.rel)
        return self.announce(row.file_id, label, placed, event)

    def moved(self, row: Entry, rel: str) -> None:
        """The file is ready at `rel`: link it where its other claims want it, and
        remove its link at an old place no claim names any more."""
        sync(self.manifest, self.store, row.file_id,
             gone=[row.path] if row.path and row.path != rel else [], linked=rel,
             old_sha=row.sha256)

    def announce(self, file_id: str, label: str, placed: Placed,
                 event: NewEvent) -> Outcome:
        """Log, count and return a ready file; the log line's `path` and the Outcome's
        (what `get` returns) are absolute: the root joined to the event's destination."""
        cache_hit, duration_ms = event.cache_hit, event.duration_ms or 0
        path = self.store.root / placed.rel
        self.observe(event.kind, label, 0 if cache_hit else placed.size, duration_ms / 1000)
        if _INFO.isEnabledFor(logging.INFO):  # a line a file: skip building it unread
            log.info("download", file_id=file_id, provider=label, bytes=placed.size,
                     path=str(path), duration_ms=duration_ms,
                     outcome="cache_hit" if cache_hit else "downloaded",
                     resumed_from=event.resumed_from or 0)
        return Outcome(file_id, path, placed.sha, placed.size, label, cache_hit)

    def failed(self, row: Entry, label: str, err: DownloadError, *, state: State,
               attempts: int, **fields: Any) -> None:
        """Record a fetch that ended without the file; `attempts` counts this fetch's
        tries on top of earlier fetches'. `fields` (next_attempt_at, min_size) go to
        the row too."""
        err.recorded = True  # Download.run records the failures no step recorded
        self.observe(state, label, 0)
        log.warning("download", file_id=row.file_id, provider=label, outcome=state,
                    error=str(err))
        fields.setdefault("next_attempt_at", None)
        fields.setdefault("note", None)
        self.manifest.record(
            row.file_id,
            NewEvent(EventKind.FAILURE, provider=label, error=str(err)),
            state=state, error=str(err), error_detail=json.dumps(err.to_json()),
            attempts=row.attempts + attempts, **fields,
        )
