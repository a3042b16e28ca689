"""What was asked: claims made, changed and dropped, all or nothing.

Every request acts for one holder (`uid:1000`, `uid:1000/job-42`, `fleet:<group>`)
and changes only that holder's claims: options it names replace that claim's values,
options it leaves out keep them, and no other holder's claim is touched. The file's
shared columns follow in the same transaction (claims.refresh).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..records import EventKind, NewEvent, Removal, State, WantSource, is_fleet, uid_holder
from .base import Base
from .claims import check, refresh
from .events import insert_event

Named = str | tuple[str, str]
"""A file_id a request names: alone (the request's holder's claim), or with the
holder of the claim it means (a sub-holder, from a request file's entry)."""

# A want of a file in these states starts it again (a fresh attempt count, now).
_RESTART = (State.QUEUED, State.RETRYING, State.WAITING_SPACE, State.FAILED, State.EVICTED,
            State.QUARANTINED)


@dataclass(frozen=True)
class WantSpec:
    """One wanted file as a request states it; only file_id is required.

    `holder` is whose claim this is; None: the caller's (the `holder` the manifest
    call is given, by default this process's uid).
    """

    file_id: str
    provider: str | None = None
    sha256: str | None = None
    size: int | None = None
    dest: str | None = None
    pin: bool = False
    ttl: float | None = None
    holder: str | None = None


def own_holder() -> str:
    """The holder of this process's requests: its uid."""
    return uid_holder(os.getuid())


class Wanted(Base):
    """The request side of the manifest: claims, by holder."""

    def want(self, specs: Sequence[WantSpec], now: float | None = None, *,
             holder: str | None = None) -> None:
        """Make or change claims, all or nothing (see the module docstring). A file
        already ready stays ready: a claim's sha256/size is checked against it at
        once, and a claim's dest is linked by the caller (links.sync)."""
        self.apply(specs, [], now=now, holder=holder)

    def apply(self, specs: Sequence[WantSpec], unwant: Sequence[Named],
              forgets: Sequence[Named] = (), now: float | None = None, *,
              holder: str | None = None) -> Removal:
        """Forgets, unwants and wants of one request in a single transaction, in that
        order (so `forget X` + `want X` starts X's claim afresh), for `holder` (None:
        this process's uid; a spec may name its own, a sub-holder).

        A forget drops the holder's claim; the file's row goes with its last claim
        (the caller removes the links first, so a crash in between leaves a row the
        daemon re-links, never a file no row knows). Returns the forgotten ids that
        had no such claim, with `.kept`: files other claims still hold."""
        who = holder or own_holder()
        with self.tx() as conn:
            return _apply(conn, who, specs, unwant, forgets, _now(now))

    def apply_fleet(self, specs: Sequence[WantSpec], unwant: Sequence[Named],
                    forgets: Sequence[Named], revision: int, holder: str,
                    now: float | None = None) -> Removal:
        """One batch of the fleet's wanted-set changes, as the group's `holder`, and
        the revision it brings the host to, in one transaction: a batch is applied
        with its revision or not at all."""
        with self.tx() as conn:
            out = _apply(conn, holder, specs, unwant, forgets, _now(now))
            _set_mark(conn, "revision", str(int(revision)))
        return out

    def forget(self, file_ids: Sequence[str], now: float | None = None, *,
               holder: str | None = None) -> Removal:
        """Drop the holder's claims; a file's row goes with its last claim (its events
        stay, and a `forget` event marks the point). Returns the ids the holder had no
        claim on, with `.kept`: files other claims still hold."""
        who = holder or own_holder()
        return self.forget_claims([(f, who) for f in file_ids], now)

    def forget_claims(self, pairs: Sequence[tuple[str, str]],
                      now: float | None = None) -> Removal:
        """forget() of these (file_id, holder) claims, in one transaction."""
        with self.tx() as conn:
            return _forget(conn, pairs, _now(now))

    def unwant(self, file_ids: Sequence[str], now: float | None = None, *,
               holder: str | None = None) -> list[str]:
        """The holder no longer wants these (retention deletes a file nobody wants,
        later); its claims stay, unpinned. Returns the ids it had no claim on."""
        who = holder or own_holder()
        with self.tx() as conn:
            return _unwant(conn, who, file_ids, _now(now))

    def drop_claims(self, pairs: Sequence[tuple[str, str]],
                    now: float | None = None) -> dict[str, int]:
        """Remove these (file_id, holder) claims now (release); returns file_id -> how
        many claims the file has left. The file's row stays (its state is the
        caller's: evicted with its last claim)."""
        left: dict[str, int] = {}
        with self.tx() as conn:
            stamp = _now(now)
            for fid, holder in pairs:
                conn.execute("DELETE FROM claims WHERE file_id = ? AND holder = ?",
                             (fid, holder))
            for fid in dict.fromkeys(f for f, _ in pairs):
                refresh(conn, fid, stamp)
                left[fid] = conn.execute("SELECT count(*) FROM claims WHERE file_id = ?",
                                         (fid,)).fetchone()[0]
        return left

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


def pair(item: Named, holder: str) -> tuple[str, str]:
    return item if isinstance(item, tuple) else (item, holder)


def _apply(conn: sqlite3.Connection, holder: str, specs: Sequence[WantSpec],
           unwant: Sequence[Named], forgets: Sequence[Named], now: float) -> Removal:
    out = _forget(conn, [pair(f, holder) for f in forgets], now)
    for fid, who in (pair(u, holder) for u in unwant):
        _unwant(conn, who, [fid], now)
    _want_all(conn, holder, specs, now)
    return out


def _want_all(conn: sqlite3.Connection, holder: str, specs: Sequence[WantSpec],
              now: float) -> None:
    """Each spec's want, in order. The states of the files are read 500 at a time, and
    the files no row knows yet (a bulk request's case) are inserted with their one
    claim 500 at a time: a few statements for a thousand new files, not three each."""
    states = _states(conn, [s.file_id for s in specs])
    new: list[tuple[str, WantSpec]] = []
    for s in specs:
        who = s.holder or holder
        if s.file_id not in states:
            new.append((who, s))
            states[s.file_id] = None  # a row now (once `new` is written)
            continue
        if new:  # the same file again, or an order that matters: write the new ones
            _first_claims(conn, new, now)
            new = []
        states[s.file_id] = _want_one(conn, who, s, states[s.file_id], now)
    _first_claims(conn, new, now)


def _states(conn: sqlite3.Connection, file_ids: Sequence[str]) -> dict[str, str | None]:
    """file_id -> state of the files in the manifest among `file_ids`."""
    ids = list(dict.fromkeys(file_ids))
    out: dict[str, str | None] = {}
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        out.update(conn.execute(f"SELECT file_id, state FROM files WHERE file_id IN"
                                f" ({','.join('?' * len(part))})", part).fetchall())
    return out


def _unwant(conn: sqlite3.Connection, holder: str, file_ids: Sequence[str],
            now: float) -> list[str]:
    unknown = []
    for fid in dict.fromkeys(file_ids):
        cur = conn.execute("UPDATE claims SET wanted = 0, pin = 0, updated_at = ?"
                           " WHERE file_id = ? AND holder = ?", (now, fid, holder))
        if cur.rowcount == 0:
            unknown.append(fid)
            continue
        refresh(conn, fid, now)
    return unknown


_CLAIM_INSERT = """
INSERT INTO claims (file_id, holder, wanted, provider, sha256, size, dest, pin, ttl,
                    requested_at, created_at, given_at, error, updated_at)
VALUES """
_CLAIM_VALUES = "(?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)"
_CLAIM_UPSERT = """
ON CONFLICT (file_id, holder) DO UPDATE SET
  wanted = 1,
  provider = coalesce(excluded.provider, provider),
  sha256 = coalesce(excluded.sha256, sha256),
  size = coalesce(excluded.size, size),
  dest = coalesce(excluded.dest, dest),
  pin = max(pin, excluded.pin),
  ttl = coalesce(excluded.ttl, ttl),
  requested_at = excluded.requested_at,
  given_at = coalesce(excluded.given_at, given_at),
  updated_at = excluded.updated_at
"""
_FILE_INSERT = (
    "INSERT INTO files (file_id, wanted, local_want, fleet_want, provider, expected_sha256,"
    " expected_size, dest, pin, ttl, requested_at, state, attempts, updated_at) VALUES ")
_FILE_VALUES = "(?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
_PER_STATEMENT = 500  # rows a multi-row insert carries (at most 6,000 variables)


def _want_one(conn: sqlite3.Connection, holder: str, s: WantSpec, state: str | None,
              now: float) -> str | None:
    """The want of a file the manifest has (in `state`); returns its state now."""
    if state in _RESTART:
        # Asked again: try now, from a fresh count (a ready or downloading file stays).
        conn.execute("UPDATE files SET state = ?, attempts = 0, next_attempt_at = NULL,"
                     " note = NULL WHERE file_id = ?", (State.QUEUED.value, s.file_id))
        state = State.QUEUED.value
    _upsert_claims(conn, [(holder, s)], now)
    check(conn, s.file_id, now)
    refresh(conn, s.file_id, now)
    return state


def _first_claims(conn: sqlite3.Connection, new: Sequence[tuple[str, WantSpec]],
                  now: float) -> None:
    """New files, each with its one claim (no two for one file), in multi-row inserts:
    a file's shared columns are its claim's options (what refresh() would make of
    them)."""
    for i in range(0, len(new), _PER_STATEMENT):
        part = new[i:i + _PER_STATEMENT]
        params: list[Any] = []
        for holder, s in part:
            fleet = is_fleet(holder)
            params += (s.file_id, int(not fleet), int(fleet), s.provider, s.sha256, s.size,
                       s.dest, int(s.pin), s.ttl, now, State.QUEUED.value, now)
        conn.execute(_FILE_INSERT + ",".join([_FILE_VALUES] * len(part)), params)
        _upsert_claims(conn, part, now)


def _upsert_claims(conn: sqlite3.Connection, claims: Sequence[tuple[str, WantSpec]],
                   now: float) -> None:
    """Make or change these (holder, spec) claims (at most 500, none twice): options a
    spec names replace the claim's, the ones it leaves out keep theirs."""
    params: list[Any] = []
    for holder, s in claims:
        given = now if (s.sha256 is not None or s.size is not None) else None
        params += (s.file_id, holder, s.provider, s.sha256, s.size, s.dest, int(s.pin),
                   s.ttl, now, now, given, now)
    conn.execute(_CLAIM_INSERT + ",".join([_CLAIM_VALUES] * len(claims)) + _CLAIM_UPSERT,
                 params)


def _forget(conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]],
            now: float) -> Removal:
    out = Removal()
    for fid, holder in dict.fromkeys(pairs):
        if conn.execute("DELETE FROM claims WHERE file_id = ? AND holder = ?",
                        (fid, holder)).rowcount == 0:
            if fid not in out:
                out.append(fid)
            continue
        out.kept.pop(fid, None)
        left = [r[0] for r in conn.execute("SELECT holder FROM claims WHERE file_id = ?",
                                           (fid,))]
        if left:  # other claims hold the file: only this one went
            refresh(conn, fid, now)
            out.kept[fid] = (WantSource.FLEET if any(is_fleet(h) for h in left)
                             else WantSource.LOCAL)
            continue
        row = conn.execute("SELECT resolved_provider, provider, sha256, path FROM files"
                           " WHERE file_id = ?", (fid,)).fetchone()
        conn.execute("DELETE FROM files WHERE file_id = ?", (fid,))
        if row is not None:
            insert_event(conn, fid, NewEvent(EventKind.FORGET, provider=row[0] or row[1],
                                             sha256=row[2], destination=row[3]), now)
    return out
