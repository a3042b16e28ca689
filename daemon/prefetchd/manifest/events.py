"""Events: the download history, the state changes that append them, and the outbox.

Each download, cache hit, failure, eviction, quarantine and forget appends a row to
`events`; a state change and its event commit together. Download and cache-hit
events are the outbox that `stats` mirrors to Supabase (failures stay local).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..records import EventKind, NewEvent, State
from .base import Base
from .claims import check_ready, refresh

MIRRORED_KINDS = (EventKind.DOWNLOAD, EventKind.CACHE_HIT)
_MIRRORED_SQL = ", ".join(f"'{k.value}'" for k in MIRRORED_KINDS)

# A change of a file's row: (file_id, its event or None, the columns to set).
Change = tuple[str, NewEvent | None, Mapping[str, Any]]


_EVENT_COLUMNS = ("INSERT INTO events (event_id, kind, file_id, provider, destination, bytes,"
                  " duration_ms, cache_hit, sha256, error, at, source, resumed_from) VALUES ")
_EVENT_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?)"
_PER_STATEMENT = 500  # rows a multi-row statement carries (13 columns: 6,500 variables)
# UPDATE ... FROM (SQLite 3.33): a group's rows in one statement.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


def insert_event(conn: sqlite3.Connection, file_id: str, event: NewEvent, at: float) -> None:
    """Append one event inside the caller's transaction (see insert_events)."""
    insert_events(conn, [(file_id, event)], at)


def insert_events(conn: sqlite3.Connection, events: Sequence[tuple[str, NewEvent]],
                  at: float) -> None:
    """Append events, in order, inside the caller's transaction: one INSERT of up to 500
    rows, their event_ids (random UUIDs, as uuid4 makes them) from one os.urandom call.
    Only NewEvent records: a dict (how writers once passed events) raises TypeError,
    which rolls the caller's transaction back, so the row change it came with is not
    half-applied."""
    for _fid, event in events:
        if not isinstance(event, NewEvent):
            raise TypeError("an event is written as a NewEvent record, not "
                            f"{type(event).__name__}")
    raw = os.urandom(16 * len(events))
    for i in range(0, len(events), _PER_STATEMENT):
        part = events[i:i + _PER_STATEMENT]
        params: list[Any] = []
        for j, (file_id, event) in enumerate(part, start=i):
            event_id = uuid.UUID(bytes=raw[16 * j:16 * j + 16], version=4)
            params += (str(event_id), event.kind.value, file_id, event.provider,
                       event.destination, event.bytes, event.duration_ms,
                       int(event.cache_hit), event.sha256, event.error, at,
                       event.source.value if event.source is not None else None,
                       event.resumed_from)
        conn.execute(_EVENT_COLUMNS + ",".join([_EVENT_VALUES] * len(part)), params)


def _set_row(conn: sqlite3.Connection, file_id: str, fields: Mapping[str, Any]) -> None:
    cols = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE files SET {cols} WHERE file_id = ?", (*fields.values(), file_id))


def _set_rows(conn: sqlite3.Connection, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """_set_row() of many files: rows that set the same columns go in one
    `UPDATE ... FROM (VALUES ...)` of up to 500 (a group commit's files all do). A
    file named twice is updated row by row, in order (one statement cannot)."""
    ids = [fid for fid, _ in rows]
    if not _UPDATE_FROM or len(set(ids)) != len(ids):
        for fid, fields in rows:
            _set_row(conn, fid, fields)
        return
    same: dict[tuple[str, ...], list[tuple[str, Mapping[str, Any]]]] = {}
    for fid, fields in rows:
        same.setdefault(tuple(fields), []).append((fid, fields))
    for cols, group in same.items():
        if len(group) == 1:
            _set_row(conn, *group[0])
            continue
        sets = ", ".join(f"{c} = v.column{k}" for k, c in enumerate(cols, start=2))
        one = "(" + ",".join("?" * (len(cols) + 1)) + ")"
        step = max(1, 6000 // (len(cols) + 1))
        for i in range(0, len(group), step):
            part = group[i:i + step]
            params = [x for fid, fields in part for x in (fid, *fields.values())]
            conn.execute(f"UPDATE files SET {sets} FROM (VALUES {','.join([one] * len(part))})"
                         " AS v WHERE files.file_id = v.column1", params)


class Events(Base):
    """State changes with their events, the history, and the outbox with its mirror."""

    def record(self, file_id: str, event: NewEvent | None,
               now: float | None = None, **fields: Any) -> None:
        """Change a file's row and append its event in one transaction."""
        self.record_many([(file_id, event, fields)], now)

    def record_many(self, changes: Sequence[Change], now: float | None = None) -> None:
        """Several record() calls in one transaction (the engine's group commit): a
        few statements for the whole group (the rows, the events, the claims to
        check), not five a file."""
        with self.tx() as conn:
            now = time.time() if now is None else now  # under the lock: see wanted._now
            _set_rows(conn, [(fid, {**fields, "updated_at": now}) for fid, _e, fields in changes])
            insert_events(conn, [(fid, e) for fid, e, _f in changes if e is not None], now)
            # Each claim's own sha256/size against the file it now is; a claim that
            # fails no longer decides where the file goes first, so the files whose
            # claims changed are refreshed (the others' shared columns are what their
            # claims made them: every change of a claim refreshes its file).
            ready = [fid for fid, _e, fields in changes if fields.get("state") == State.READY]
            for file_id in check_ready(conn, ready, now):
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
        return list(self.rows_of(
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
        return next(iter(self.rows_of("SELECT * FROM mirror WHERE id = 1")))

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
        return list(self.rows_of(
            "SELECT provider, sum(kind = 'download') AS downloads,"
            " sum(kind = 'cache_hit') AS cache_hits, sum(kind = 'failure') AS failures,"
            " coalesce(sum(CASE WHEN kind = 'download' THEN bytes END), 0) AS bytes"
            " FROM events GROUP BY provider ORDER BY provider"))
