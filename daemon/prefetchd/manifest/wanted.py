"""What was asked: wanting, unwanting and forgetting entries, all or nothing.

Two sources ask, kept apart: local users and jobs (`local_want`) and the fleet's
shared wanted-set (`fleet_want`). `wanted` is always their OR. One source's unwant or
forget clears only its own want; an entry the other side still wants keeps its row,
its options and its file (a forget reports it as kept).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import EventKind, NewEvent, Removal, State, WantSource
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
    """The request side of the manifest: what is wanted, by whom, with which options."""

    def want(self, specs: Sequence[WantSpec], now: float | None = None, *,
             source: WantSource = WantSource.LOCAL) -> None:
        """Add or update wanted entries, all or nothing.

        An option a request gives (provider, sha256, size, dest, ttl, pin) replaces the
        entry's earlier value; an option it leaves out keeps the earlier one. Only
        `release` and `forget` clear them. A file already ready stays ready unless the
        request changes what it must be (another hash, dest or provider); then it is
        queued again and the fetch re-links or re-downloads as needed.
        """
        self.apply(specs, [], now=now, source=source)

    def apply(self, specs: Sequence[WantSpec], unwant: Sequence[str],
              forgets: Sequence[str] = (), now: float | None = None, *,
              source: WantSource = WantSource.LOCAL) -> Removal:
        """Forgets, unwants and wants of one request in a single transaction (all or
        nothing), in that order, so `forget X` + `want X` in one request starts X afresh.

        Forgetting removes rows only: the caller removes a ready entry's file first
        (ops.want.apply), so a crash in between leaves a row the daemon re-links,
        never a file no row knows. Returns the forgotten ids that were not there, with
        `.kept`: those the other source still wants (only this source's want went).
        """
        src = WantSource(source)
        with self.tx() as conn:
            return _apply(conn, src, specs, unwant, forgets, _now(now))

    def apply_fleet(self, specs: Sequence[WantSpec], unwant: Sequence[str],
                    forgets: Sequence[str], revision: int,
                    now: float | None = None) -> Removal:
        """One batch of the fleet's wanted-set changes, as source `fleet`, and the
        revision it brings the host to (mark `revision`), in one transaction: a batch
        is applied with its revision or not at all, so a crash never skips or repeats
        half a batch. Returns what `apply` returns. Files of forgotten entries are the
        caller's to remove first (ops.forget.apply_fleet does both)."""
        with self.tx() as conn:
            out = _apply(conn, WantSource.FLEET, specs, unwant, forgets, _now(now))
            _set_mark(conn, "revision", str(int(revision)))
        return out

    def forget(self, file_ids: Sequence[str], now: float | None = None, *,
               source: WantSource = WantSource.LOCAL) -> Removal:
        """Remove entries with their options and state; their events stay (the history)
        and a `forget` event marks the point. An entry the other source still wants
        only loses this source's want (it is in `.kept`). Returns the ids that were
        not there."""
        src = WantSource(source)
        with self.tx() as conn:
            return _forget(conn, src, file_ids, _now(now))

    def unwant(self, file_ids: Sequence[str], now: float | None = None, *,
               source: WantSource = WantSource.LOCAL) -> list[str]:
        """Clear this source's want (retention deletes an entry nobody wants later);
        returns unknown ids."""
        src = WantSource(source)
        with self.tx() as conn:
            return _unwant(conn, src, file_ids, _now(now))

    def fleet_wanted_ids(self) -> list[str]:
        """file_ids the fleet wants (`fleet_want = 1`), in file_id order: when the host
        moves to another group, the caller unwants these as source fleet (the old
        group's wants must not outlive the move; local wants stay)."""
        return [r[0] for r in self.conn.execute(
            "SELECT file_id FROM files WHERE fleet_want = 1 ORDER BY file_id")]

    # -- the fleet sync's marks -----------------------------------------------------------

    def fleet_mark(self, key: str) -> str | None:
        """A value the fleet sync stored (`revision`, `reported_at`), or None."""
        row = self.conn.execute("SELECT value FROM fleet_marks WHERE key = ?",
                                (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_fleet_mark(self, key: str, value: str) -> None:
        with self.tx() as conn:
            _set_mark(conn, key, value)


def _now(now: float | None) -> float:
    """The time a change is stamped with (`updated_at`). Taken once the write lock is
    held, so it is within a transaction's length of its commit: the fleet reporter's
    watermark over updated_at then misses nothing that commits late."""
    return time.time() if now is None else now


def _set_mark(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO fleet_marks (key, value) VALUES (?, ?)"
                 " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def _apply(conn: sqlite3.Connection, src: WantSource, specs: Sequence[WantSpec],
           unwant: Sequence[str], forgets: Sequence[str], now: float) -> Removal:
    out = _forget(conn, src, forgets, now)
    _unwant(conn, src, unwant, now)
    for s in specs:
        _want_one(conn, src, s, now)
    return out


def _unwant(conn: sqlite3.Connection, src: WantSource, file_ids: Sequence[str],
            now: float) -> list[str]:
    # wanted becomes the other source's want; pin goes only with the last want.
    mine, other = src.column, src.other.column
    unknown = []
    for fid in file_ids:
        cur = conn.execute(
            f"UPDATE files SET {mine} = 0, wanted = {other},"
            f" pin = CASE WHEN {other} = 1 THEN pin ELSE 0 END, updated_at = ?"
            " WHERE file_id = ?", (now, fid))
        if cur.rowcount == 0:
            unknown.append(fid)
    return unknown


def _want_one(conn: sqlite3.Connection, src: WantSource, s: WantSpec, now: float) -> None:
    local = src is WantSource.LOCAL
    # requested_by names the local user who asked; a fleet want names nobody.
    uid = (os.getuid() if s.requested_by is None else s.requested_by) if local else None
    row = conn.execute(
        "SELECT state, sha256, path, provider FROM files WHERE file_id = ?", (s.file_id,),
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO files (file_id, wanted, local_want, fleet_want, provider,"
            " expected_sha256, expected_size, dest, pin, ttl, requested_at, state, attempts,"
            " updated_at, requested_by) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (s.file_id, int(local), int(not local), s.provider, s.sha256, s.size, s.dest,
             int(s.pin), s.ttl, now, State.QUEUED.value, now, uid),
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
    # the first local asker's while a local user wants it; a local want after a local
    # unwant or release is new. A fleet want leaves requested_by as it is.
    conn.execute(
        "UPDATE files SET requested_by = CASE WHEN ? AND (local_want = 0"
        " OR requested_by IS NULL) THEN ? ELSE requested_by END,"
        f" wanted = 1, {src.column} = 1, provider = coalesce(?, provider),"
        " expected_sha256 = coalesce(?, expected_sha256),"
        " expected_size = coalesce(?, expected_size), dest = coalesce(?, dest),"
        " pin = max(pin, ?), ttl = coalesce(?, ttl), requested_at = ?, state = ?,"
        " attempts = CASE WHEN ? = 'queued' THEN 0 ELSE attempts END,"
        " next_attempt_at = NULL, note = NULL, updated_at = ? WHERE file_id = ?",
        (int(local), uid, s.provider, s.sha256, s.size, s.dest, int(s.pin), s.ttl, now,
         new_state.value, new_state.value, now, s.file_id),
    )


def _forget(conn: sqlite3.Connection, src: WantSource, file_ids: Sequence[str],
            now: float) -> Removal:
    out = Removal()
    other = src.other
    for fid in dict.fromkeys(file_ids):
        row = conn.execute(
            "SELECT resolved_provider, provider, sha256, path,"
            f" {other.column} FROM files WHERE file_id = ?", (fid,)).fetchone()
        if row is None:
            out.append(fid)
            continue
        if row[4]:  # the other side still wants it: only this side's want goes
            conn.execute(f"UPDATE files SET {src.column} = 0, updated_at = ?"
                         " WHERE file_id = ?", (now, fid))
            out.kept[fid] = other
            continue
        conn.execute("DELETE FROM files WHERE file_id = ?", (fid,))
        insert_event(conn, fid, NewEvent(EventKind.FORGET, provider=row[0] or row[1],
                                         sha256=row[2], destination=row[3]), now)
    return out
