"""The outbox -> Supabase mirror: download events sent exactly once, in batches.

Events are rows of the local `events` table. A batch is sent through
`public.prefetchd_record_downloads(events jsonb)` (supabase-py `rpc`), and marked
pushed only after the call succeeded. The function ignores event_ids it already
has, so a batch resent after a crash or a timeout is stored and counted once.
While Supabase is down the daemon backs off (doubling up to 15 minutes) and the
outbox keeps every event.

A file_id or destination that carries secrets (a URL's password, a presigned
query) is sent in its display form; ids without secrets go unchanged, so the
(provider, file_id) match against provider_file_uploads still counts them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from .config import Settings
from .errors import PrefetchError
from .log import get_logger
from .manifest import Manifest
from .redact import display_id, redact_text
from .supa import api_error, api_errors, host_name, make_client

log = get_logger("prefetchd.mirror")
MAX_BACKOFF = 900.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def payload(rows: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    """Outbox rows -> the JSON objects the SQL function takes (its documented keys, and
    `source`: whether the bytes came from the origin, the fleet's Storage cache or
    this host's store)."""
    return [{
        "event_id": r["event_id"],
        "host": host,
        "provider": r["provider"] or "unknown",
        "file_id": display_id(r["file_id"]),
        "destination": redact_text(r["destination"]) if r["destination"] else r["destination"],
        "bytes": r["bytes"],
        "duration_ms": r["duration_ms"],
        "cache_hit": bool(r["cache_hit"]),
        "sha256": r["sha256"],
        "downloaded_at": _iso(r["at"]),
        "source": r.get("source"),  # origin | storage | local (None: unknown)
    } for r in rows]


class Mirror:
    """The outbox's way to Supabase. One per settings: it keeps its supabase-py client
    between pushes; the manifest is the caller's (each thread has its own)."""

    def __init__(self, settings: Settings) -> None:
        if settings.supabase is None:
            raise PrefetchError("stats --push needs a [supabase] section in the config")
        self.settings = settings
        self.cfg = settings.supabase
        self.host = host_name(settings)
        self._client: Any = None

    def due(self, manifest: Manifest, now: float | None = None) -> bool:
        """False while backing off after a failure."""
        nxt = manifest.mirror_state()["next_try_at"]
        return nxt is None or (time.time() if now is None else now) >= nxt

    def push(self, manifest: Manifest) -> int:
        """Send the whole outbox in batches; returns how many events were sent."""
        sent = 0
        try:
            if self._client is None:
                self._client = make_client(self.settings)
            while rows := manifest.outbox(self.cfg.batch_size):
                try:
                    self._client.rpc("prefetchd_record_downloads",
                                     {"events": payload(rows, self.host)}).execute()
                except api_errors() as e:  # the batch stays in the outbox
                    raise api_error(e, "prefetchd_record_downloads") from None
                manifest.mark_pushed([r["id"] for r in rows])
                sent += len(rows)
        except PrefetchError as e:
            failures = manifest.mirror_state()["failures"]
            delay = min(MAX_BACKOFF, self.cfg.push_interval * (2 ** failures))
            manifest.mirror_result(str(e), time.time() + delay)
            log.warning("mirror_failed", error=str(e), sent=sent, retry_in_s=round(delay),
                        backlog=manifest.outbox_backlog())
            raise
        manifest.mirror_result(None, None)
        if sent:
            log.info("mirrored", events=sent)
        return sent
