"""What was asked: wanting, unwanting and forgetting entries, all or nothing."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import EventKind, NewEvent, State
from .base import Base
from .events import insert_event


@dataclass(frozen=True)
class WantSpec:
    """One wanted file as a request states it; only file_id is required.

    `requested_by` is the uid asking (the local API sets its peer's); None means this
    process's own uid (the CLI and API in-process, the daemon's inbox).
    """

    file_id: str
    provider: str | None = None
    sha256: str | None = None
    size: int | None = None
    dest: str | None = None
    pin: bool = False
    ttl: float | None = None
    requested_by: int | None = None


class Wanted(Base):
    """The request side of the manifest: what is wanted, with which options."""

    def want(self, specs: Sequence[WantSpec], now: float | None = None) -> None:
        """Add or update wanted entries, all or nothing.

        An option a request gives (provider, sha256, size, dest, ttl, pin) replaces the
        entry's earlier value; an option it leaves out keeps the earlier one. Only
        `release` and `forget` clear them. A file already ready stays ready unless the
        request changes what it must be (another hash, dest or provider); then it is
        queued again and the fetch re-links or re-downloads as needed.
        """
        self.apply(specs, [], now=now)

    def apply(self, specs: Sequence[WantSpec], unwant: Sequence[str],
              forgets: Sequence[str] = (), now: float | None = None) -> list[str]:
        """Forgets, unwants and wants of one request in a single transaction (all or
        nothing), in that order, so `forget X` + `want X` in one request starts X afresh.

        Forgetting removes rows only: the caller removes a ready entry's file first
        (Prefetch.apply_request), so a crash in between leaves a row the daemon re-links,
        never a file no row knows. Returns the forgotten ids that were not there.
        """
        now = time.time() if now is None else now
        with self.tx() as conn:
            unknown = _forget(conn, forgets, now)
            conn.executemany(
                "UPDATE files SET wanted = 0, pin = 0, updated_at = ? WHERE file_id = ?",
                [(now, fid) for fid in unwant],
            )
            for s in specs:
                _want_one(conn, s, now)
        return unknown

    def forget(self, file_ids: Sequence[str], now: float | None = None) -> list[str]:
        """Remove entries with their options and state; their events stay (the history)
        and a `forget` event marks the point. Returns the ids that were not there."""
        now = time.time() if now is None else now
        with self.tx() as conn:
            return _forget(conn, file_ids, now)

    def unwant(self, file_ids: Sequence[str], now: float | None = None) -> list[str]:
        """Mark entries not wanted (retention deletes them later); returns unknown ids."""
        now = time.time() if now is None else now
        unknown = []
        with self.tx() as conn:
            for fid in file_ids:
                cur = conn.execute(
                    "UPDATE files SET wanted = 0, pin = 0, updated_at = ? WHERE file_id = ?",
                    (now, fid),
                )
                if cur.rowcount == 0:
                    unknown.append(fid)
        return unknown


def _want_one(conn: sqlite3.Connection, s: WantSpec, now: float) -> None:
    uid = os.getuid() if s.requested_by is None else s.requested_by
    row = conn.execute(
        "SELECT state, sha256, path, provider FROM files WHERE file_id = ?", (s.file_id,),
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO files (file_id, wanted, provider, expected_sha256,"
            " expected_size, dest, pin, ttl, requested_at, state, attempts, updated_at,"
            " requested_by) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (s.file_id, s.provider, s.sha256, s.size, s.dest, int(s.pin), s.ttl,
             now, State.QUEUED.value, now, uid),
        )
        return
    state, sha, path, provider = row
    requeue = state != State.READY or (
        (s.sha256 is not None and s.sha256 != sha)
        or (s.dest is not None and s.dest != path)
        or (s.provider is not None and s.provider != provider)
    )
    new_state = State.QUEUED if requeue and state != State.DOWNLOADING else State(state)
    # coalesce: an option left out keeps the entry's earlier value. The entry stays
    # the first asker's while it is wanted; a want after an unwant or release is new.
    conn.execute(
        "UPDATE files SET requested_by = CASE WHEN wanted = 0 OR requested_by IS NULL"
        " THEN ? ELSE requested_by END, wanted = 1, provider = coalesce(?, provider),"
        " expected_sha256 = coalesce(?, expected_sha256),"
        " expected_size = coalesce(?, expected_size), dest = coalesce(?, dest),"
        " pin = max(pin, ?), ttl = coalesce(?, ttl), requested_at = ?, state = ?,"
        " attempts = CASE WHEN ? = 'queued' THEN 0 ELSE attempts END,"
        " next_attempt_at = NULL, updated_at = ? WHERE file_id = ?",
        (uid, s.provider, s.sha256, s.size, s.dest, int(s.pin), s.ttl, now,
         new_state.value, new_state.value, now, s.file_id),
    )


def _forget(conn: sqlite3.Connection, file_ids: Sequence[str], now: float) -> list[str]:
    unknown = []
    for fid in dict.fromkeys(file_ids):
        row = conn.execute(
            "SELECT resolved_provider, provider, sha256, path FROM files WHERE file_id = ?",
            (fid,)).fetchone()
        if row is None:
            unknown.append(fid)
            continue
        conn.execute("DELETE FROM files WHERE file_id = ?", (fid,))
        insert_event(conn, fid, NewEvent(EventKind.FORGET, provider=row[0] or row[1],
                                         sha256=row[2], destination=row[3]), now)
    return unknown
