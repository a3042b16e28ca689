"""Events: the download history, the state changes that append them, and the outbox.

Each download, cache hit, failure, eviction, quarantine and forget appends a row to
`events`; a state change and its event commit together. Download and cache-hit
events are the outbox that `stats` mirrors to Supabase (failures stay local).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..records import EventKind, NewEvent, State
from .base import Base
from .claims import check, refresh

MIRRORED_KINDS = (EventKind.DOWNLOAD, EventKind.CACHE_HIT)
_MIRRORED_SQL = ", ".join(f"'{k.value}'" for k in MIRRORED_KINDS)

# A change of a file's row: (file_id, its event or None, the columns to set).
Change = tuple[str, NewEvent | None, Mapping[str, Any]]


def insert_event(conn: sqlite3.Connection, file_id: str, event: NewEvent, at: float) -> None:
    """Append one event inside the caller's transaction. Only a NewEvent record: a
    dict (how writers once passed events) raises TypeError, which rolls the caller's
    transaction back, so the row change it came with is not half-applied."""
    if not isinstance(event, NewEvent):
        raise TypeError(f"an event is written as a NewEvent record, not {type(event).__name__}")
    source = event.source.value if event.source is not None else None
    conn.execute(
        "INSERT INTO events (event_id, kind, file_id, provider, destination, bytes,"
        " duration_ms, cache_hit, sha256, error, at, source, resumed_from)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (str(uuid.uuid4()), event.kind.value, file_id, event.provider, event.destination,
         event.bytes, event.duration_ms, int(event.cache_hit), event.sha256, event.error, at,
         source, event.resumed_from),
    )


def _set_row(conn: sqlite3.Connection, file_id: str, fields: Mapping[str, Any]) -> None:
    cols = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE files SET {cols} WHERE file_id = ?", (*fields.values(), file_id))


class Events(Base):
    """State changes with their events, the history, and the outbox with its mirror."""

    def record(self, file_id: str, event: NewEvent | None,
               now: float | None = None, **fields: Any) -> None:
        """Change a file's row and append its event in one transaction."""
        self.record_many([(file_id, event, fields)], now)

    def record_many(self, changes: Sequence[Change], now: float | None = None) -> None:
        """Several record() calls in one transaction (the engine's group commit)."""
        with self.tx() as conn:
            now = time.time() if now is None else now  # under the lock: see wanted._now
            for file_id, event, fields in changes:
                _set_row(conn, file_id, {**fields, "updated_at": now})
                if event is not None:
                    insert_event(conn, file_id, event, now)
                if fields.get("state") == State.READY:
                    # Each claim's own sha256/size against the file it now is; a claim
                    # that fails no longer decides where the file goes first.
                    check(conn, file_id, now)
                    refresh(conn, file_id, now)

    def record_eviction(self, file_id: str, event: NewEvent,
                        now: float | None = None, *, ready_path: str | None,
                        expire: bool, **fields: Any) -> bool:
        """An eviction that ends wants (a release's last claim, a ttl expiry, a file
        nobody wants): with `expire`, every local claim stops wanting the file; then,
        unless a claim still wants it (the fleet's, or one made since the caller read
        the file), record() it. Returns False when a claim kept the file: its file was
        removed by the caller already, so it is queued again (when it was ready on
        `ready_path`) for the engine to put back. True when evicted or gone."""
        with self.tx() as conn:
            now = time.time() if now is None else now  # under the lock: see wanted._now
            if expire:
                conn.execute("UPDATE claims SET wanted = 0, pin = 0, updated_at = ?"
                             " WHERE file_id = ? AND substr(holder, 1, 6) != 'fleet:'",
                             (now, file_id))
            refresh(conn, file_id, now)
            row = conn.execute("SELECT wanted FROM files WHERE file_id = ?",
                               (file_id,)).fetchone()
            if row is None:
                return True  # forgotten meanwhile (its forget event marks it)
            if row[0]:
                conn.execute(
                    "UPDATE files SET state = 'queued', path = NULL, next_attempt_at = NULL,"
                    " updated_at = ? WHERE file_id = ? AND state = 'ready' AND path IS ?",
                    (now, file_id, ready_path))
                return False
            _set_row(conn, file_id, {**fields, "updated_at": now})
            insert_event(conn, file_id, event, now)
            return True

    def last_event_id(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM events").fetchone()
        return int(row[0] or 0)

    def touched_since(self, event_id: int, limit: int = 10_000) -> tuple[int, set[str]]:
        """file_ids with events after `event_id` (at most `limit` events, by primary key);
        returns the last event id looked at and the ids."""
        rows = self.conn.execute(
            "SELECT id, file_id FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (event_id, limit)).fetchall()
        if not rows:
            return event_id, set()
        return rows[-1][0], {r[1] for r in rows}

    def forgotten_since(self, ts: float, limit: int,
                        after_id: str = "") -> list[tuple[str, float]]:
        """(file_id, at) of entries forgotten strictly after (`ts`, `after_id`), whose
        row is still gone, ordered by (at, file_id), each id once at its latest forget,
        at most `limit`: what the fleet reporter tells the group this host no longer
        has. Pages like `changed_since`: the last page's last (at, file_id) as
        (`ts`, `after_id`) starts the next page right after it, so any number of
        forgets (even at one timestamp) is read once each, never a page again.
        Walks the (kind, at) index from `ts`."""
        return [(r[0], float(r[1])) for r in self.conn.execute(
            "SELECT e.file_id, max(e.at) AS last FROM events e"
            " WHERE e.kind = 'forget' AND e.at >= ?"
            " AND NOT EXISTS (SELECT 1 FROM files f WHERE f.file_id = e.file_id)"
            " GROUP BY e.file_id HAVING (last, e.file_id) > (?, ?)"
            " ORDER BY last, e.file_id LIMIT ?", (ts, ts, after_id, limit))]

    def download_destination(self, file_id: str, sha256: str) -> str | None:
        """Where the last download of these bytes for this file_id put them, relative
        to the root (an event outlives its row: `forget` then `want` again keeps the
        history)."""
        row = self.conn.execute(
            "SELECT destination FROM events WHERE file_id = ? AND kind = 'download'"
            " AND sha256 = ? AND destination IS NOT NULL ORDER BY id DESC LIMIT 1",
            (file_id, sha256)).fetchone()
        return row[0] if row else None

    # -- the outbox that stats mirrors ---------------------------------------------------

    def outbox(self, limit: int) -> list[dict[str, Any]]:
        """Events not yet mirrored, oldest first (failures stay local), as the rows the
        mirror sends."""
        return list(self.db.query(
            f"SELECT * FROM events WHERE pushed_at IS NULL AND kind IN ({_MIRRORED_SQL})"
            " ORDER BY id LIMIT ?", [limit]))

    def outbox_backlog(self) -> int:
        return int(self.conn.execute(
            "SELECT count(*) FROM events WHERE pushed_at IS NULL"
            f" AND kind IN ({_MIRRORED_SQL})").fetchone()[0])

    def mark_pushed(self, ids: Sequence[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as conn:
            conn.executemany("UPDATE events SET pushed_at = ? WHERE id = ?",
                             [(now, i) for i in ids])

    def mirror_state(self) -> dict[str, Any]:
        return next(iter(self.db.query("SELECT * FROM mirror WHERE id = 1")))

    def mirror_result(self, error: str | None, next_try_at: float | None,
                      now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as conn:
            if error is None:
                conn.execute("UPDATE mirror SET last_push_at = ?, failures = 0, next_try_at = NULL"
                             " WHERE id = 1", (now,))
            else:
                conn.execute("UPDATE mirror SET last_error = ?, last_error_at = ?,"
                             " failures = failures + 1, next_try_at = ? WHERE id = 1",
                             (error, now, next_try_at))

    def stats(self) -> list[dict[str, Any]]:
        """Local download statistics per provider."""
        return list(self.db.query(
            "SELECT provider, sum(kind = 'download') AS downloads,"
            " sum(kind = 'cache_hit') AS cache_hits, sum(kind = 'failure') AS failures,"
            " coalesce(sum(CASE WHEN kind = 'download' THEN bytes END), 0) AS bytes"
            " FROM events GROUP BY provider ORDER BY provider"))
